"""Distillation between two tokenizers: each model reads its own ids, and the loss is the one computed by hand."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from conftest import make_args
from datasets import Dataset

from hf_kd import DistillationTrainer, cache_teacher_outputs, prepare_dataset
from hf_kd.validation import DistillationConfigError

WORDS = ["good", "great", "bad", "awful", "table", "chair", "the", "a", "is", "very", "not", "quite"]
TEXTS = [
    "the table is good",
    "a very bad chair",
    "not quite great",
    "the chair is awful",
    "a good table",
    "very very bad",
    "the great chair is not bad",
    "quite awful",
]


def _tokenizer(folder: str, vocab: list[str]):
    from transformers import BertTokenizerFast

    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "vocab.txt")
    with open(path, "w") as f:
        f.write("\n".join(vocab) + "\n")
    return BertTokenizerFast(vocab=path, do_lower_case=True)


@pytest.fixture
def tokenizers(tmp_path):
    student = _tokenizer(str(tmp_path / "s"), ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])
    # Another vocabulary: other special ids, other word order, more words; so "good" is a different id.
    teacher = _tokenizer(
        str(tmp_path / "t"),
        ["[UNK]", "[SEP]", "[PAD]", "[CLS]", "[MASK]", "extra", "words", *reversed(WORDS)],
    )
    assert student("the table")["input_ids"] != teacher("the table")["input_ids"]
    return student, teacher


def _model(vocab_size: int, hidden: int, layers: int, seed: int, num_labels: int = 3):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=2 * hidden,
        max_position_embeddings=32,
        num_labels=num_labels,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    model = BertForSequenceClassification(config)
    if seed == 1:
        with torch.no_grad():
            model.classifier.weight.mul_(30.0)
    return model


def _data(student_tok, teacher_tok, pair: bool = False):
    rows = {"text": TEXTS, "label": [i % 3 for i in range(len(TEXTS))]}
    if pair:
        rows["other"] = list(reversed(TEXTS))
    return prepare_dataset(
        Dataset.from_dict(rows), student_tok, teacher_tok, text_pair_column="other" if pair else None
    )


def test_prepare_dataset_tokenizes_for_both_models(tokenizers):
    student_tok, teacher_tok = tokenizers
    data = _data(student_tok, teacher_tok, pair=True)
    assert data[2]["input_ids"] == student_tok(TEXTS[2], TEXTS[-3])["input_ids"]
    assert data[2]["teacher_input_ids"] == teacher_tok(TEXTS[2], TEXTS[-3])["input_ids"]
    assert data[2]["teacher_token_type_ids"] == teacher_tok(TEXTS[2], TEXTS[-3])["token_type_ids"]
    assert data[2]["labels"] == 2 and "text" not in data.column_names


def _record_ids(model, seen: list):
    model.bert.embeddings.word_embeddings.register_forward_hook(
        lambda m, args, out: seen.append(args[0].clone())
    )


def test_each_model_reads_its_own_ids_and_the_loss_is_the_hand_computation(tokenizers, tmp_out):
    student_tok, teacher_tok = tokenizers
    teacher = _model(len(teacher_tok), 48, 2, seed=1)
    student = _model(len(student_tok), 32, 1, seed=2)
    data = _data(student_tok, teacher_tok)
    T, alpha = 2.0, 0.4
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=make_args(tmp_out, temperature=T, alpha=alpha, per_device_eval_batch_size=8),
        train_dataset=data,
        eval_dataset=data,
        processing_class=student_tok,
        teacher_tokenizer=teacher_tok,
    )
    teacher_seen, student_seen = [], []
    _record_ids(teacher, teacher_seen)
    _record_ids(student, student_seen)
    metrics = trainer.evaluate()

    s_batch = student_tok(TEXTS, padding=True, return_tensors="pt")
    t_batch = teacher_tok(TEXTS, padding=True, return_tensors="pt")
    assert torch.equal(teacher_seen[0], t_batch["input_ids"]) and torch.equal(
        student_seen[0], s_batch["input_ids"]
    )
    with torch.no_grad():
        t = teacher(**t_batch).logits.double()
        s = student(**s_batch).logits.double()
    kd = (
        F.kl_div(F.log_softmax(s / T, -1), F.log_softmax(t / T, -1), reduction="none", log_target=True).sum(
            -1
        )
    ).mean()
    ce = F.cross_entropy(s, torch.tensor(data["labels"]))
    assert metrics["eval_loss_kd"] == pytest.approx(kd.item() * T**2, rel=1e-5)
    assert metrics["eval_loss"] == pytest.approx((alpha * kd * T**2 + (1 - alpha) * ce).item(), rel=1e-5)
    trainer.train()  # the training path runs too


def test_cached_cross_tokenizer_logits_equal_the_live_teacher(tokenizers, tmp_path):
    student_tok, teacher_tok = tokenizers
    teacher = _model(len(teacher_tok), 48, 2, seed=1)
    data = _data(student_tok, teacher_tok)
    cached = cache_teacher_outputs(teacher, data, batch_size=3, tokenizer=teacher_tok)
    results = []
    for name, teacher_model, train in (("live", teacher, data), ("cached", None, cached)):
        student = _model(len(student_tok), 32, 1, seed=2)
        trainer = DistillationTrainer(
            model=student,
            teacher_model=teacher_model,
            args=make_args(str(tmp_path / name), per_device_eval_batch_size=8),
            train_dataset=train,
            eval_dataset=train,
            processing_class=student_tok,
            teacher_tokenizer=teacher_tok,
        )
        results.append(trainer.evaluate())
    assert results[1]["eval_loss_kd"] == pytest.approx(results[0]["eval_loss_kd"], rel=1e-5)
    assert results[1]["eval_loss"] == pytest.approx(results[0]["eval_loss"], rel=1e-5)


def test_pooled_term_is_the_projected_mean_pooled_distance(tokenizers, tmp_out):
    student_tok, teacher_tok = tokenizers
    teacher = _model(len(teacher_tok), 48, 2, seed=1)
    student = _model(len(student_tok), 32, 1, seed=2)
    data = _data(student_tok, teacher_tok)
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=make_args(tmp_out, pooled_weight=1.0, pooling="mean", per_device_eval_batch_size=8),
        eval_dataset=data,
        train_dataset=data,
        processing_class=student_tok,
        teacher_tokenizer=teacher_tok,
    )
    metrics = trainer.evaluate()
    s_batch = student_tok(TEXTS, padding=True, return_tensors="pt")
    t_batch = teacher_tok(TEXTS, padding=True, return_tensors="pt")

    def mean_pool(model, batch):
        states = model(**batch, output_hidden_states=True).hidden_states[-1]
        m = batch["attention_mask"].unsqueeze(-1).float()
        return (states * m).sum(1) / m.sum(1)

    with torch.no_grad():
        projection = student.hf_kd_projections.maps["pooled"]
        s = projection(mean_pool(student, s_batch))
        t = mean_pool(teacher, t_batch)
    expected = ((s - t) ** 2).mean(-1).mean()
    assert metrics["eval_loss_pooled"] == pytest.approx(expected.item(), rel=1e-5)


def test_token_level_terms_across_tokenizers_are_refused(tokenizers, tmp_out):
    student_tok, teacher_tok = tokenizers
    data = _data(student_tok, teacher_tok)
    with pytest.raises(DistillationConfigError, match="tokens do not line up.*pooled_weight"):
        DistillationTrainer(
            model=_model(len(student_tok), 32, 1, seed=2),
            teacher_model=_model(len(teacher_tok), 48, 2, seed=1),
            args=make_args(tmp_out, hidden_weight=1.0),
            train_dataset=data,
            processing_class=student_tok,
        )


def test_token_level_heads_across_tokenizers_are_refused(tokenizers, tmp_out):
    from transformers import BertConfig, BertForTokenClassification

    student_tok, teacher_tok = tokenizers
    rows = _data(student_tok, teacher_tok).remove_columns("labels")
    rows = rows.add_column("labels", [[0] * len(ids) for ids in rows["input_ids"]])
    config = BertConfig(
        vocab_size=len(student_tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=4
    )
    with pytest.raises(DistillationConfigError, match="two tokenizations have no common positions"):
        DistillationTrainer(
            model=BertForTokenClassification(config),
            teacher_model=BertForTokenClassification(
                BertConfig(vocab_size=len(teacher_tok), num_hidden_layers=1)
            ),
            args=make_args(tmp_out),
            train_dataset=rows,
            processing_class=student_tok,
        )


def test_auto_precision_check_feeds_the_teacher_its_own_ids(tokenizers, tmp_out, monkeypatch):
    import hf_kd.teacher as teacher_module

    monkeypatch.setattr(teacher_module, "bf16_is_fast", lambda device: (True, "stand-in: fast bfloat16"))
    student_tok, teacher_tok = tokenizers
    teacher = _model(len(teacher_tok), 48, 2, seed=1)
    seen: list = []
    _record_ids(teacher, seen)
    trainer = DistillationTrainer(
        model=_model(len(student_tok), 32, 1, seed=2),
        teacher_model=teacher,
        args=make_args(tmp_out, teacher_dtype="auto"),
        train_dataset=_data(student_tok, teacher_tok),
        processing_class=student_tok,
        teacher_tokenizer=teacher_tok,
    )
    first = teacher_tok(TEXTS[:4], padding=True, return_tensors="pt")["input_ids"]
    assert torch.equal(seen[0], first)  # the float32 pass of the check, on the teacher's own tokens
    assert trainer.teacher_precision[0].agreement is not None
