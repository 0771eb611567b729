"""`DistillationObjective` outside the Trainer: the plain Accelerate loop in examples/accelerate_loop.py trains the
same student as `DistillationTrainer` on the same data, seed and optimizer."""

from __future__ import annotations

import copy
import importlib.util
import os

import pytest
import torch
from conftest import make_args

from hf_kd import DistillationObjective, DistillationTrainer, LossOutput
from hf_kd.validation import DistillationConfigError

EXAMPLE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "accelerate_loop.py"
)


def _example():
    spec = importlib.util.spec_from_file_location("accelerate_loop", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _setup(n: int):
    """The example's tiny models without dropout: two runs draw random numbers in different orders."""
    teacher, student, data = _example().tiny_setup(n=n)
    for model in (teacher, student):
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
    return teacher.eval(), student, data


@pytest.mark.slow
def test_plain_loop_and_trainer_end_with_equal_parameters(tmp_out):
    example = _example()
    steps, n = 6, 16
    teacher, _, data = _setup(n)
    # A student narrower than the teacher (24 vs 32), so learned projections train in both runs too.
    config = copy.deepcopy(teacher.config)
    config.update({"hidden_size": 24, "num_hidden_layers": 1, "intermediate_size": 48})
    config.update({"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0})
    torch.manual_seed(5)
    student = type(teacher)(config)
    settings = {"temperature": 2.0, "alpha": 0.5, "hidden_weight": 1.0, "attention_weight": 0.5}
    # One batch is the whole dataset, so the sampler's order cannot make the two runs differ.
    loop_student, history = example.distil(
        copy.deepcopy(student), teacher, data, settings, steps, batch_size=n, lr=1e-3, seed=0
    )
    args = make_args(
        tmp_out,
        per_device_train_batch_size=n,
        max_steps=steps,
        learning_rate=1e-3,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        optim="adamw_torch",
        max_grad_norm=1.0,
        **settings,
    )
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=data)
    trainer.train()
    logged = [e for e in trainer.state.log_history if "loss" in e]
    assert len(logged) == steps == len(history)
    for mine, theirs in zip(history, logged):
        for name in ("kd", "ce", "hidden", "attention"):
            assert theirs[f"loss_{name}"] == pytest.approx(mine[name], rel=1e-5, abs=1e-8), name
    trained = dict(trainer.model.named_parameters())
    compared = 0
    for name, value in loop_student.named_parameters():
        torch.testing.assert_close(value, trained[name], rtol=1e-6, atol=1e-6, msg=name)
        compared += 1
    assert compared == len(trained) and any("hf_kd_projections" in k for k in trained)


def test_objective_from_the_distillation_fields_alone():
    teacher, student, data = _setup(4)
    objective = DistillationObjective(None, student, teacher, temperature=3.0, alpha=1.0)
    assert objective.settings.temperature == 3.0 and objective.forward_kwargs == {}
    batch = data[:4]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    result = objective(student(**inputs), objective.teacher_outputs(batch), batch)
    assert isinstance(result, LossOutput) and set(result.components) == {"kd"}
    assert result.loss.item() == pytest.approx(result.components["kd"].item())


def test_cached_columns_give_the_same_loss_as_the_live_teacher():
    teacher, student, data = _setup(4)
    with torch.no_grad():
        teacher.classifier.weight.mul_(20.0)
    objective = DistillationObjective({"alpha": 0.7}, student, teacher)
    batch = data[:4]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    outputs = student(**inputs)
    live = objective(outputs, objective.teacher_outputs(batch), batch)
    with torch.no_grad():
        cached = {"teacher_logits": teacher(**inputs).logits}
    assert objective(outputs, cached, batch).loss.item() == pytest.approx(live.loss.item(), rel=1e-6)


def test_bad_settings_are_named():
    teacher, student, _ = _setup(4)
    with pytest.raises(ValueError, match="alpha=2.0 is outside"):
        DistillationObjective(None, student, teacher, alpha=2.0)
    with pytest.raises(TypeError, match="unknown distillation settings \\['temprature'\\]"):
        DistillationObjective(None, student, teacher, temprature=2.0)
    with pytest.raises(DistillationConfigError, match="maps no transformer layer"):
        DistillationObjective(None, student, teacher, hidden_weight=1.0, layer_map="0:0")


@pytest.mark.slow
def test_the_loop_example_runs_as_a_script(tmp_path):
    import subprocess
    import sys

    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    result = subprocess.run(
        [sys.executable, EXAMPLE, "--tiny", "--steps", "3"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "step 3: kd=" in result.stdout and "hidden=" in result.stdout
