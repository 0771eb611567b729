"""Faults the trainer itself must not hide: a diverged run under nonfinite_policy='skip', component logs after a
resume, a resume that warns about projections it then loads, and a layer map that turns a term off."""

from __future__ import annotations

import logging
import os

import pytest
from conftest import make_args, tiny_classification_dataset, tiny_model
from test_intermediate import run as run_with_checkpoints
from test_numerics import _poison_teacher, _trainer

from hf_kd import DistillationTrainer, NonFiniteLossError
from hf_kd.validation import DistillationConfigError


def test_skip_policy_stops_a_run_whose_steps_keep_failing(tmp_out):
    # 7 of 8 steps poisoned: this used to "succeed" with a logged loss of 0.0 and a saved student.
    student, teacher = tiny_model(seed=0), tiny_model(seed=1)
    _poison_teacher(teacher, calls=set(range(1, 40)))
    trainer = _trainer(tmp_out, student, teacher, max_steps=40, nonfinite_policy="skip")
    with pytest.raises(
        NonFiniteLossError, match=r"teacher logits at global step 3, micro-batch 3.*3 in a row"
    ):
        trainer.train()
    # Steps 2, 3 and 4 were skipped (a skipped step still counts); the 3rd in a row stopped the run.
    assert trainer.state.global_step == 3 and trainer.nonfinite_skipped == 3
    assert not os.path.exists(os.path.join(tmp_out, "model.safetensors"))


def test_skip_policy_stops_once_too_many_steps_were_skipped(tmp_out):
    # Every other step fails: never 2 in a row, but 2 of 10 planned steps is more than 10%.
    student, teacher = tiny_model(seed=0), tiny_model(seed=1)
    _poison_teacher(teacher, calls={1, 3, 5, 7})
    trainer = _trainer(tmp_out, student, teacher, max_steps=10, nonfinite_policy="skip")
    with pytest.raises(NonFiniteLossError, match=r"2 optimizer steps were skipped"):
        trainer.train()
    assert trainer.nonfinite_skipped == 2


def test_one_skipped_step_is_not_divergence(tmp_out):
    student, teacher = tiny_model(seed=0), tiny_model(seed=1)
    _poison_teacher(teacher, calls={2})
    trainer = _trainer(tmp_out, student, teacher, max_steps=4, nonfinite_policy="skip")
    trainer.train()
    assert trainer.nonfinite_skipped == 1 and trainer.state.global_step == 4


@pytest.mark.slow
def test_components_logged_after_a_resume_equal_the_uninterrupted_run(tmp_path, caplog):
    full, _ = run_with_checkpoints(str(tmp_path / "full"), 6)
    part = str(tmp_path / "part")
    run_with_checkpoints(part, 4)
    with caplog.at_level(logging.WARNING):
        resumed, _ = run_with_checkpoints(part, 6, resume=os.path.join(part, "checkpoint-4"))
    # The projections are saved in their own file and loaded: no "missing keys" warning about them.
    assert "hf_kd_projections" not in caplog.text
    want = {e["step"]: e for e in full.state.log_history if "loss_ce" in e}
    got = [e for e in resumed.state.log_history if "loss_ce" in e and e["step"] > 4]
    assert [e["step"] for e in got] == [5, 6]
    for entry in got:
        for key in ("loss_ce", "loss_kd", "loss_hidden"):
            assert entry[key] == pytest.approx(want[entry["step"]][key], rel=1e-4), (entry["step"], key)


@pytest.mark.parametrize("layer_map", ["0:0", "0:2"])
def test_a_layer_map_without_transformer_layers_is_refused_when_hidden_weight_is_set(layer_map, tmp_out):
    teacher, student = tiny_model(seed=1, num_layers=3), tiny_model(seed=2)
    with pytest.raises(DistillationConfigError, match="maps no transformer layer"):
        DistillationTrainer(
            model=student,
            teacher_model=teacher,
            args=make_args(tmp_out, hidden_weight=1.0, layer_map=layer_map),
            train_dataset=tiny_classification_dataset(4),
        )
