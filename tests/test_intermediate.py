"""Intermediate-layer distillation: layer maps, hidden/attention/embedding losses, projections' whole life."""

from __future__ import annotations

import logging
import os

import pytest
import torch
import torch.nn.functional as F
from conftest import make_args, tiny_classification_dataset, tiny_model
from safetensors.torch import load_file

from hf_kd import DistillationConfig, DistillationTrainer
from hf_kd.config import parse_layer_map
from hf_kd.layer_map import PROJECTIONS_ATTR, PROJECTIONS_FILE, resolve_layer_map
from hf_kd.validation import DistillationConfigError


@pytest.mark.parametrize(
    "student, teacher, expected",
    [
        (4, 12, {1: 3, 2: 6, 3: 9, 4: 12}),
        (2, 6, {1: 3, 2: 6}),
        (3, 6, {1: 2, 2: 4, 3: 6}),
        (4, 4, {1: 1, 2: 2, 3: 3, 4: 4}),
        (6, 12, {1: 2, 2: 4, 3: 6, 4: 8, 5: 10, 6: 12}),
    ],
)
def test_uniform_layer_map(student, teacher, expected):
    assert resolve_layer_map("uniform", student, teacher) == expected


def test_last_layer_map_takes_the_top_teacher_layers():
    assert resolve_layer_map("last", 3, 12) == {1: 10, 2: 11, 3: 12}


def test_explicit_layer_map_from_yaml_json_and_flag_strings():
    assert parse_layer_map({"0": 0, "1": 3}) == {0: 0, 1: 3}
    assert parse_layer_map('{"1": 3, "2": 6}') == {1: 3, 2: 6}
    assert parse_layer_map("1:3, 2:6") == {1: 3, 2: 6}
    assert resolve_layer_map({2: 6, 1: 3}, 2, 6) == {1: 3, 2: 6}


@pytest.mark.parametrize(
    "mapping, message",
    [({3: 1}, "student layer 3"), ({1: 7}, "teacher layer 7"), ({-1: 2}, "student layer -1")],
)
def test_layer_map_out_of_range_is_named(mapping, message):
    with pytest.raises(ValueError, match=message):
        resolve_layer_map(mapping, 2, 6)


def test_garbage_layer_map_is_named():
    with pytest.raises(ValueError, match="layer_map 'every-other' is not understood"):
        parse_layer_map("every-other")


def models(student_hidden=32, teacher_hidden=48, student_heads=4, teacher_heads=4):
    teacher = tiny_model(seed=1, num_layers=4, hidden=teacher_hidden, heads=teacher_heads)
    student = tiny_model(seed=2, num_layers=2, hidden=student_hidden, heads=student_heads)
    return teacher, student


def padded_batch():
    ids = torch.tensor([[2, 11, 12, 13, 14, 15], [2, 21, 22, 0, 0, 0]])
    mask = (ids != 0).long()
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 2])}


def test_intermediate_losses_equal_an_independent_computation(tmp_out):
    teacher, student = models()
    args = make_args(
        tmp_out,
        alpha=0.4,
        temperature=2.0,
        hidden_weight=0.7,
        attention_weight=1.3,
        embedding_weight=0.2,
        hidden_loss="mse",
    )
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args)
    batch = padded_batch()
    loss = trainer.compute_loss(student, dict(batch))

    # Independent: run both models, project with the trainer's own projection weights by hand, average over
    # the valid tokens only.
    mask = batch["attention_mask"].bool()
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        t = teacher(**inputs, output_hidden_states=True, output_attentions=True)
    s = student(**inputs, output_hidden_states=True, output_attentions=True)
    maps = getattr(student, PROJECTIONS_ATTR).maps

    def proj(layer, h):
        lin = maps[str(layer)]
        return h @ lin.weight.T + lin.bias

    def token_mse(a, b):
        return ((a - b) ** 2).mean(-1)[mask].mean()

    hidden = (
        token_mse(proj(1, s.hidden_states[1]), t.hidden_states[2])
        + token_mse(proj(2, s.hidden_states[2]), t.hidden_states[4])
    ) / 2
    embedding = token_mse(proj(0, s.hidden_states[0]), t.hidden_states[0])
    att_terms = []
    for s_layer, t_layer in ((1, 2), (2, 4)):
        a_s, a_t = s.attentions[s_layer - 1], t.attentions[t_layer - 1]
        per_query = []
        for b in range(2):
            n = int(mask[b].sum())
            for q in range(n):
                per_query.append(((a_s[b, :, q, :n] - a_t[b, :, q, :n]) ** 2).mean())
        att_terms.append(torch.stack(per_query).mean())
    attention = torch.stack(att_terms).mean()
    kd = (
        F.kl_div(
            torch.log_softmax(s.logits / 2, -1),
            torch.log_softmax(t.logits / 2, -1),
            reduction="batchmean",
            log_target=True,
        )
        * 4
    )
    ce = F.cross_entropy(s.logits, batch["labels"])
    expected = 0.4 * kd + 0.6 * ce + 0.7 * hidden + 1.3 * attention + 0.2 * embedding
    assert attention.item() > 0 and hidden.item() > 0
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_cosine_hidden_loss_on_equal_sizes_needs_no_projection(tmp_out):
    teacher, student = models(student_hidden=48)
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=make_args(tmp_out, alpha=1.0, hidden_weight=1.0, hidden_loss="cosine"),
    )
    assert getattr(student, PROJECTIONS_ATTR, None) is None
    batch = padded_batch()
    loss = trainer.compute_loss(student, dict(batch))
    mask = batch["attention_mask"].bool()
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        t = teacher(**inputs, output_hidden_states=True)
    s = student(**inputs, output_hidden_states=True)
    cos = [
        (1 - F.cosine_similarity(s.hidden_states[m], t.hidden_states[n], dim=-1))[mask].mean()
        for m, n in ((1, 2), (2, 4))
    ]
    kd = (
        F.kl_div(
            torch.log_softmax(s.logits / 2, -1),
            torch.log_softmax(t.logits / 2, -1),
            reduction="batchmean",
            log_target=True,
        )
        * 4
    )
    assert loss.item() == pytest.approx((kd + (cos[0] + cos[1]) / 2).item(), rel=1e-5)


def test_attention_with_different_head_counts_and_sdpa_switch(tmp_out, caplog):
    teacher, student = models(student_heads=2, teacher_heads=4)
    teacher.set_attn_implementation("sdpa")
    student.set_attn_implementation("sdpa")
    with caplog.at_level(logging.WARNING, logger="hf_kd.trainer"):
        trainer = DistillationTrainer(
            model=student, teacher_model=teacher, args=make_args(tmp_out, attention_weight=1.0)
        )
    assert "to 'eager'" in caplog.text
    assert student.config._attn_implementation == "eager" and teacher.config._attn_implementation == "eager"
    trainer.args.max_steps = 1
    trainer.train_dataset = tiny_classification_dataset(4)
    trainer.train()
    att = [h["loss_attention"] for h in trainer.state.log_history if "loss_attention" in h]
    assert len(att) == 1 and att[0] > 0 and att[0] == att[0]


def test_projections_train_and_stay_out_of_the_saved_student(tmp_out, caplog):
    teacher, student = models()
    with caplog.at_level(logging.INFO, logger="hf_kd.trainer"):
        trainer = DistillationTrainer(
            model=student,
            teacher_model=teacher,
            args=make_args(tmp_out, max_steps=3, hidden_weight=1.0, embedding_weight=1.0),
            train_dataset=tiny_classification_dataset(12),
        )
    # The resolved mapping is logged as a table.
    assert "student teacher" in caplog.text and "32->48" in caplog.text
    before = {k: v.clone() for k, v in getattr(student, PROJECTIONS_ATTR).state_dict().items()}
    assert set(before) == {
        "maps.0.weight",
        "maps.0.bias",
        "maps.1.weight",
        "maps.1.bias",
        "maps.2.weight",
        "maps.2.bias",
    }
    names_in_optimizer = {id(p) for g in trainer.create_optimizer().param_groups for p in g["params"]}
    assert all(id(p) in names_in_optimizer for p in getattr(student, PROJECTIONS_ATTR).parameters())
    trainer.train()
    after = getattr(student, PROJECTIONS_ATTR).state_dict()
    assert all(
        not torch.equal(before[k], after[k]) for k in ("maps.0.weight", "maps.1.weight", "maps.2.weight")
    )
    trainer.save_model()
    saved = load_file(os.path.join(tmp_out, "model.safetensors"))
    assert not [k for k in saved if PROJECTIONS_ATTR in k]
    assert not os.path.exists(os.path.join(tmp_out, PROJECTIONS_FILE))


def run(out, max_steps, resume=None, save_steps=2):
    teacher, student = models()
    args = make_args(
        out,
        max_steps=max_steps,
        hidden_weight=1.0,
        save_strategy="steps",
        save_steps=save_steps,
        alpha=0.8,
        alpha_schedule="linear",
        alpha_final=0.2,
        learning_rate=5e-3,
    )
    # Fixed total schedule length: the resumed run and the uninterrupted run must plan the same 6 steps.
    args.max_steps = 6
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=tiny_classification_dataset(24)
    )
    if max_steps < 6:
        # Stop early, as a crash would, right after the checkpoint at step `max_steps`.
        from transformers import TrainerCallback

        class Stop(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):
                if state.global_step >= max_steps:
                    control.should_training_stop = True
                    control.should_save = True

        trainer.add_callback(Stop())
    trainer.train(resume_from_checkpoint=resume)
    return trainer, student


@pytest.mark.slow
def test_resumed_run_ends_where_the_uninterrupted_run_ends(tmp_path):
    _, full = run(str(tmp_path / "full"), 6)
    part_dir = str(tmp_path / "part")
    run(part_dir, 4)
    ckpt = os.path.join(part_dir, "checkpoint-4")
    assert os.path.exists(os.path.join(ckpt, PROJECTIONS_FILE))
    saved_projection = load_file(os.path.join(ckpt, PROJECTIONS_FILE))
    assert set(saved_projection) == {"maps.1.weight", "maps.1.bias", "maps.2.weight", "maps.2.bias"}
    trainer, resumed = run(part_dir, 6, resume=ckpt)
    assert trainer.state.global_step == 6
    full_state, resumed_state = full.state_dict(), resumed.state_dict()
    assert any(PROJECTIONS_ATTR in k for k in full_state)
    for k in full_state:
        assert torch.allclose(full_state[k], resumed_state[k], atol=1e-6), k


def test_hidden_loss_between_different_vocabularies_is_refused(tmp_out):
    teacher = tiny_model(seed=1, num_layers=4)
    teacher.resize_token_embeddings(120)
    with pytest.raises(DistillationConfigError, match="vocabularies differ"):
        DistillationTrainer(
            model=tiny_model(seed=2), teacher_model=teacher, args=make_args(tmp_out, hidden_weight=1.0)
        )


def test_attention_map_with_only_the_embedding_layer_is_refused(tmp_out):
    teacher, student = models()
    with pytest.raises(DistillationConfigError, match="maps no transformer layer"):
        DistillationTrainer(
            model=student,
            teacher_model=teacher,
            args=make_args(tmp_out, attention_weight=1.0, layer_map={0: 0}),
        )


def test_unknown_hidden_loss_is_named(tmp_out):
    with pytest.raises(ValueError, match="hidden_loss='l1' does not exist"):
        make_args(tmp_out, hidden_weight=1.0, hidden_loss="l1")


def test_layer_map_beyond_the_teacher_is_named_at_construction(tmp_out):
    teacher, student = models()
    with pytest.raises(ValueError, match="teacher layer 9"):
        DistillationTrainer(
            model=student,
            teacher_model=teacher,
            args=make_args(tmp_out, hidden_weight=1.0, layer_map="1:2,2:9"),
        )


def test_hfargumentparser_reads_layer_map_from_flags_dicts_and_yaml(tmp_path):
    from transformers import HfArgumentParser

    parser = HfArgumentParser(DistillationConfig)
    (flags,) = parser.parse_args_into_dataclasses(
        [
            "--output_dir",
            str(tmp_path),
            "--layer_map",
            "1:3,2:6",
            "--hidden_weight",
            "0.5",
            "--use_cpu",
            "true",
        ]
    )
    (from_dict,) = parser.parse_dict({"output_dir": str(tmp_path), "layer_map": {"1": 3, "2": 6}})
    config = tmp_path / "kd.yaml"
    config.write_text(f"output_dir: {tmp_path}\ntemperature: 4.0\nlayer_map:\n  1: 3\n  2: 6\n")
    (from_yaml,) = parser.parse_yaml_file(str(config))
    assert flags.layer_map == from_dict.layer_map == from_yaml.layer_map == {1: 3, 2: 6}
    assert flags.hidden_weight == 0.5 and from_yaml.temperature == 4.0
