"""DistillationTrainer: the loss for each head against an independent computation, and training behaviour."""

from __future__ import annotations

import copy
import os

import pytest
import torch
import torch.nn.functional as F
import transformers
from conftest import (
    LABELS,
    QUICK_ARGS,
    VOCAB,
    make_args,
    tiny_bert_config,
    tiny_classification_dataset,
    tiny_model,
)
from datasets import Dataset
from safetensors import safe_open
from transformers import Trainer, TrainingArguments

from hf_kd import DistillationConfig, DistillationTrainer
from hf_kd.validation import DistillationConfigError


def fixed_batch(labels_kind="sequence", seed=0, B=3, L=7, C=3):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (B, L), generator=g)
    lengths = [L, L - 2, L - 4]
    mask = torch.zeros(B, L, dtype=torch.long)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
        ids[b, n:] = 0
    batch = {"input_ids": ids, "attention_mask": mask}
    if labels_kind == "sequence":
        batch["labels"] = torch.tensor([0, 2, 1])
    elif labels_kind in ("token", "mlm"):
        labels = torch.randint(0, C, (B, L), generator=g)
        labels[mask == 0] = -100
        labels[0, 1] = -100  # a non-first sub-token, say
        if labels_kind == "mlm":
            keep = torch.rand(B, L, generator=g) < 0.4
            keep[:, 0] = True
            labels = torch.where(keep & mask.bool(), ids, torch.full_like(ids, -100))
        batch["labels"] = labels
    elif labels_kind == "qa":
        batch["start_positions"] = torch.tensor([1, 2, 0])
        batch["end_positions"] = torch.tensor([3, 4, 2])
    return batch


def kl_rows(s, t, T):
    """T^2 * KL(softmax(t/T) || softmax(s/T)) per row, via torch's kl_div (an independent implementation), in
    float64: for nearly equal distributions float32 kl_div's own rounding reaches 1e-4 of the value."""
    s, t = s.double(), t.double()
    return (
        F.kl_div(
            torch.log_softmax(s / T, -1), torch.log_softmax(t / T, -1), reduction="none", log_target=True
        ).sum(-1)
        * T**2
    )


HEADS = {
    "sequence": "BertForSequenceClassification",
    "token": "BertForTokenClassification",
    "qa": "BertForQuestionAnswering",
    "mlm": "BertForMaskedLM",
}


def pair(cls_name, **kw):
    if cls_name.endswith("QuestionAnswering"):
        kw.setdefault("num_labels", 2)  # QA heads emit start and end logits
    teacher = tiny_model(cls_name, seed=1, num_layers=3, hidden=48, heads=4, **kw)
    student = tiny_model(cls_name, seed=2, num_layers=2, hidden=32, heads=4, **kw)
    return teacher, student


@pytest.mark.parametrize("head", list(HEADS))
def test_loss_equals_reference_for_each_head(head, tmp_out):
    T, alpha = 2.5, 0.3
    teacher, student = pair(HEADS[head])
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=make_args(tmp_out, temperature=T, alpha=alpha)
    )
    batch = fixed_batch(head)
    loss = trainer.compute_loss(student, dict(batch))

    model_inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        t_out = teacher(**model_inputs)
    s_out = student(**model_inputs)
    if head == "sequence":
        kd = kl_rows(s_out.logits, t_out.logits, T).mean()
        ce = F.cross_entropy(s_out.logits, batch["labels"])
    elif head in ("token", "mlm"):
        valid = batch["labels"] != -100
        kd = kl_rows(s_out.logits[valid], t_out.logits[valid], T).mean()
        ce = F.cross_entropy(s_out.logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=-100)
    else:
        pad = batch["attention_mask"] == 0
        kd = 0.0
        ce = 0.0
        for key, pos in (("start_logits", "start_positions"), ("end_logits", "end_positions")):
            s = s_out[key].masked_fill(pad, -1e9)
            t = t_out[key].masked_fill(pad, -1e9)
            kd = kd + kl_rows(s, t, T).mean() / 2
            ce = ce + F.cross_entropy(s_out[key], batch[pos]) / 2
    expected = alpha * kd + (1 - alpha) * ce
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_mlm_kd_over_all_positions_when_configured(tmp_out):
    T = 2.0
    teacher, student = pair("BertForMaskedLM")
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=make_args(tmp_out, temperature=T, alpha=1.0, kd_positions="all"),
    )
    batch = fixed_batch("mlm")
    loss = trainer.compute_loss(student, dict(batch))
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        t = teacher(**inputs).logits
    s = student(**inputs).logits
    valid = batch["attention_mask"].bool()
    reference = kl_rows(s[valid].double(), t[valid].double(), T)  # float64: float32 rounds it by 2e-5 here
    assert loss.item() == pytest.approx(reference.mean().item(), rel=1e-5)


@pytest.mark.parametrize("head", list(HEADS))
def test_alpha_zero_is_the_models_own_loss(head, tmp_out):
    teacher, student = pair(HEADS[head])
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=make_args(tmp_out, alpha=0.0))
    batch = fixed_batch(head)
    own = student(**batch).loss
    assert trainer.compute_loss(student, dict(batch)).item() == pytest.approx(own.item(), rel=1e-5)


ARCHS = {
    "bert": ("BertConfig", "BertForSequenceClassification", {}),
    "roberta": ("RobertaConfig", "RobertaForSequenceClassification", {"pad_token_id": 1}),
    "electra": ("ElectraConfig", "ElectraForSequenceClassification", {"embedding_size": 16}),
    "distilbert": ("DistilBertConfig", "DistilBertForSequenceClassification", {}),
}


def arch_model(arch, layers, seed):
    config_name, cls_name, extra = ARCHS[arch]
    torch.manual_seed(seed)
    if arch == "distilbert":
        config = transformers.DistilBertConfig(
            vocab_size=VOCAB,
            dim=32,
            n_layers=layers,
            n_heads=4,
            hidden_dim=64,
            max_position_embeddings=64,
            num_labels=3,
            dropout=0.0,
            attention_dropout=0.0,
            seq_classif_dropout=0.0,
        )
    else:
        config = getattr(transformers, config_name)(
            vocab_size=VOCAB,
            hidden_size=32,
            num_hidden_layers=layers,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=64,
            num_labels=3,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            **extra,
        )
    return getattr(transformers, cls_name)(config)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_each_architecture_distils_with_the_reference_loss(arch, tmp_out):
    teacher, student = arch_model(arch, 3, 1), arch_model(arch, 1, 2)
    T, alpha = 3.0, 0.6
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=make_args(tmp_out, temperature=T, alpha=alpha)
    )
    batch = fixed_batch("sequence")
    batch["input_ids"][batch["attention_mask"] == 0] = 1 if arch == "roberta" else 0
    loss = trainer.compute_loss(student, dict(batch))
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        t = teacher(**inputs).logits
    s_out = student(**inputs, labels=batch["labels"])
    expected = alpha * kl_rows(s_out.logits, t, T).mean() + (1 - alpha) * s_out.loss
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_identical_student_has_zero_kd_loss(tmp_out):
    teacher = tiny_model(seed=1)
    student = copy.deepcopy(teacher)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=make_args(tmp_out, alpha=1.0))
    loss = trainer.compute_loss(student, fixed_batch("sequence"))
    assert abs(loss.item()) < 1e-6


def params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_training_changes_the_student_and_leaves_the_teacher_untouched(tmp_out):
    teacher, student = pair("BertForSequenceClassification")
    before_teacher, before_student = params(teacher), params(student)
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=make_args(tmp_out, max_steps=3, hidden_weight=1.0),
        train_dataset=tiny_classification_dataset(12),
    )
    trainer.train()
    assert all(torch.equal(before_teacher[k], v) for k, v in teacher.state_dict().items())
    assert all(not p.requires_grad for p in teacher.parameters())
    changed = [
        k
        for k, v in student.state_dict().items()
        if k in before_student and not torch.equal(before_student[k], v)
    ]
    assert len(changed) > len(before_student) // 2


def token_dataset(n=16, L=10, C=3, seed=0):
    """Token labels with padding and a varying number of -100 positions per example."""
    g = torch.Generator().manual_seed(seed)
    rows = {"input_ids": [], "attention_mask": [], "labels": []}
    for i in range(n):
        length = int(torch.randint(3, L + 1, (1,), generator=g))
        ids = torch.randint(5, VOCAB, (L,), generator=g)
        ids[length:] = 0
        labels = torch.randint(0, C, (L,), generator=g)
        labels[length:] = -100
        labels[1 : 1 + i % 3] = -100
        rows["input_ids"].append(ids.tolist())
        rows["attention_mask"].append([1] * length + [0] * (L - length))
        rows["labels"].append(labels.tolist())
    return Dataset.from_dict(rows)


@pytest.mark.parametrize("head", ["sequence", "token"])
def test_gradient_accumulation_matches_a_large_batch(head, tmp_path):
    cls_name = HEADS[head]
    data = tiny_classification_dataset(16) if head == "sequence" else token_dataset(16)
    if head == "token":
        # The accumulation halves hold different numbers of labelled tokens: the case a per-micro-batch mean gets wrong.
        first, second = data[:4]["labels"], data[4:8]["labels"]
        assert sum(v != -100 for r in first for v in r) != sum(v != -100 for r in second for v in r)
    results = []
    for batch, accumulation in ((8, 1), (4, 2)):
        teacher, student = pair(cls_name)
        args = make_args(
            str(tmp_path / f"b{batch}"),
            per_device_train_batch_size=batch,
            gradient_accumulation_steps=accumulation,
            max_steps=2,
            hidden_weight=0.5,
            alpha=0.5,
        )
        trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=data)
        trainer.train()
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        results.append((params(student), losses))
    (p1, l1), (p2, l2) = results
    assert l1 == pytest.approx(l2, rel=1e-5)
    for k in p1:
        assert torch.allclose(p1[k], p2[k], atol=1e-6), k


def test_components_are_logged_and_add_up_to_the_loss(tmp_out):
    teacher, student = pair("BertForSequenceClassification")
    data = tiny_classification_dataset(16)
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=make_args(tmp_out, max_steps=4, alpha=0.7, eval_strategy="steps", eval_steps=2),
        train_dataset=data,
        eval_dataset=data,
    )
    trainer.train()
    train_logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(train_logs) == 4
    for h in train_logs:
        assert h["loss"] == pytest.approx(0.7 * h["loss_kd"] + 0.3 * h["loss_ce"], rel=1e-5)
    eval_logs = [h for h in trainer.state.log_history if "eval_loss" in h]
    assert len(eval_logs) == 2
    for h in eval_logs:
        assert h["eval_loss"] == pytest.approx(0.7 * h["eval_loss_kd"] + 0.3 * h["eval_loss_ce"], rel=1e-5)


def test_eval_metrics_match_an_independent_pass(tmp_out):
    T = 2.0
    teacher, student = pair("BertForSequenceClassification")
    data = tiny_classification_dataset(10)
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=make_args(tmp_out, temperature=T), eval_dataset=data
    )
    metrics = trainer.evaluate()
    batch = {k: torch.tensor(data[k]) for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        s, t = student(**batch).logits, teacher(**batch).logits
    labels = torch.tensor(data["labels"])
    assert metrics["eval_teacher_agreement"] == pytest.approx(
        (s.argmax(-1) == t.argmax(-1)).float().mean().item()
    )
    # float64 reference: the float32 one rounds a KL this small (3e-4) by more than 1e-5 of its value
    assert metrics["eval_loss_kd"] == pytest.approx(
        kl_rows(s.double(), t.double(), T).mean().item(), rel=1e-5
    )
    assert metrics["eval_loss_ce"] == pytest.approx(F.cross_entropy(s, labels).item(), rel=1e-5)


def test_alpha_zero_training_reproduces_plain_trainer(tmp_path):
    data = tiny_classification_dataset(16)
    teacher, student = pair("BertForSequenceClassification")
    student_plain = copy.deepcopy(student)
    common = dict(QUICK_ARGS, max_steps=3)
    DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=DistillationConfig(output_dir=str(tmp_path / "a"), alpha=0.0, **common),
        train_dataset=data,
    ).train()
    Trainer(
        model=student_plain,
        args=TrainingArguments(output_dir=str(tmp_path / "b"), **common),
        train_dataset=data,
    ).train()
    for (k, a), b in zip(student.state_dict().items(), student_plain.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), k


def test_saved_student_reloads_cleanly_without_projections(tmp_out):
    teacher = tiny_model(seed=1, num_layers=4, hidden=48)
    student = tiny_model(seed=2, num_layers=2, hidden=32)
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=make_args(tmp_out, max_steps=2, hidden_weight=1.0),
        train_dataset=tiny_classification_dataset(8),
    )
    trainer.train()
    trainer.save_model()
    reloaded, info = transformers.AutoModelForSequenceClassification.from_pretrained(
        tmp_out, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    with safe_open(os.path.join(tmp_out, "model.safetensors"), "pt") as f:
        assert not [k for k in f.keys() if "projection" in k]
    for k, v in reloaded.state_dict().items():
        assert torch.equal(v, student.state_dict()[k]), k


def test_linear_alpha_schedule_is_applied_and_logged(tmp_out):
    teacher, student = pair("BertForSequenceClassification")
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=make_args(tmp_out, max_steps=5, alpha=0.9, alpha_schedule="linear", alpha_final=0.1),
        train_dataset=tiny_classification_dataset(20),
    )
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    for step, h in enumerate(logs):
        expected_alpha = 0.9 + (0.1 - 0.9) * step / 4
        assert h["alpha"] == pytest.approx(expected_alpha)
        assert h["loss"] == pytest.approx(
            expected_alpha * h["loss_kd"] + (1 - expected_alpha) * h["loss_ce"], rel=1e-5
        )


def test_plain_training_arguments_are_upgraded(tmp_out):
    teacher, student = pair("BertForSequenceClassification")
    trainer = DistillationTrainer(
        student,
        TrainingArguments(output_dir=tmp_out, report_to=[], use_cpu=True, learning_rate=3e-4),
        teacher_model=teacher,
    )
    assert isinstance(trainer.args, DistillationConfig)
    assert trainer.args.learning_rate == 3e-4 and trainer.args.alpha == 0.5


# ---- clear errors at construction -------------------------------------------------------------------


def test_missing_teacher_is_named(tmp_out):
    with pytest.raises(DistillationConfigError, match="teacher_model is missing"):
        DistillationTrainer(model=tiny_model(), args=make_args(tmp_out))


def test_label_count_mismatch_is_named(tmp_out):
    teacher = tiny_model(num_labels=2)
    with pytest.raises(DistillationConfigError, match="student has 3 labels .* teacher has 2"):
        DistillationTrainer(model=tiny_model(), teacher_model=teacher, args=make_args(tmp_out))


def test_label_order_mismatch_is_named(tmp_out):
    teacher = tiny_model(seed=1)
    teacher.config.id2label = {0: "pos", 1: "neu", 2: "neg"}
    teacher.config.label2id = {"pos": 0, "neu": 1, "neg": 2}
    with pytest.raises(DistillationConfigError, match="different order"):
        DistillationTrainer(model=tiny_model(), teacher_model=teacher, args=make_args(tmp_out))


def test_vocabulary_mismatch_for_token_level_heads_is_named(tmp_out):
    student = tiny_model("BertForMaskedLM")
    config = tiny_bert_config()
    config.vocab_size = VOCAB + 5
    teacher = transformers.BertForMaskedLM(config)
    with pytest.raises(DistillationConfigError, match="vocabulary has 99 tokens but teacher has 104"):
        DistillationTrainer(model=student, teacher_model=teacher, args=make_args(tmp_out))


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"alpha": 1.5}, "alpha=1.5 is outside"),
        ({"alpha": -0.1}, "alpha=-0.1 is outside"),
        ({"temperature": 0.0}, "temperature=0.0 must be a positive"),
        ({"temperature": -2.0}, "temperature=-2.0 must be a positive"),
        ({"alpha_schedule": "linear"}, "needs alpha_final"),
    ],
)
def test_out_of_range_settings_are_named(kw, message, tmp_out):
    with pytest.raises(ValueError, match=message):
        make_args(tmp_out, **kw)


def test_alpha_below_one_without_labels_is_named(tmp_out):
    data = tiny_classification_dataset(8).remove_columns("labels")
    teacher, student = pair("BertForSequenceClassification")
    with pytest.raises(DistillationConfigError, match="no label column"):
        DistillationTrainer(
            model=student, teacher_model=teacher, args=make_args(tmp_out, alpha=0.5), train_dataset=data
        )
    # Pure distillation needs no labels.
    DistillationTrainer(
        model=student, teacher_model=teacher, args=make_args(tmp_out, alpha=1.0), train_dataset=data
    )


def test_teacher_equal_to_student_is_refused(tmp_out):
    model = tiny_model()
    with pytest.raises(DistillationConfigError, match="same object"):
        DistillationTrainer(model=model, teacher_model=model, args=make_args(tmp_out))


def test_labels_named_in_config():
    assert LABELS == ["neg", "neu", "pos"]


def test_pickled_arguments_carry_no_hub_token(tmp_out):
    import pickle

    args = make_args(tmp_out, hub_token="hf_secret_value")
    assert args.hub_token == "hf_secret_value"  # still usable in this process
    data = pickle.dumps(args)
    assert b"hf_secret_value" not in data
    restored = pickle.loads(data)
    assert restored.hub_token is None and restored.temperature == args.temperature


def test_training_loss_stays_float32(tmp_out):
    teacher, student = pair("BertForSequenceClassification")
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=make_args(tmp_out))
    assert trainer.compute_loss(student, fixed_batch("sequence")).dtype == torch.float32
