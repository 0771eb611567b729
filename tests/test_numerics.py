"""Non-finite teacher or student logits: by default training stops with an error naming the step and micro-batch;
with nonfinite_policy='skip' the micro-batch leaves the parameters untouched and is counted in the logs.
Never a silent NaN student."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_classification_dataset, tiny_model

from hf_kd import DistillationConfig, DistillationTrainer, NonFiniteLossError


def _poison_teacher(teacher: torch.nn.Module, calls: set[int], value: float = float("nan")) -> list[int]:
    """Forward hook: the teacher's logits become `value` on the given (0-based) forward calls."""
    seen = [0]

    def hook(module, args, output):
        if seen[0] in calls:
            output["logits"] = torch.full_like(output["logits"], value)
        seen[0] += 1
        return output

    teacher.register_forward_hook(hook)
    return seen


def _trainer(out: str, student, teacher, max_steps: int, optimizer=None, **kw) -> DistillationTrainer:
    args = DistillationConfig(
        output_dir=out,
        teacher_dtype="float32",  # compared with float32 runs; auto has its own tests
        max_steps=max_steps,
        per_device_train_batch_size=4,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        lr_scheduler_type="constant",
        learning_rate=0.1,
        **kw,
    )
    return DistillationTrainer(
        model=student,
        args=args,
        teacher_model=teacher,
        train_dataset=tiny_classification_dataset(16),
        optimizers=(optimizer, None) if optimizer is not None else (None, None),
    )


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_nonfinite_teacher_logits_stop_training_at_that_step_and_micro_batch(tmp_out, value):
    student, teacher = tiny_model(seed=0), tiny_model(seed=1)
    _poison_teacher(
        teacher, calls={3}
    )  # 4th forward: optimizer step 2 done, micro-batches 0..2 done before it
    trainer = _trainer(tmp_out, student, teacher, max_steps=4, gradient_accumulation_steps=1)
    with pytest.raises(NonFiniteLossError, match=r"in teacher logits at global step 3, micro-batch 3") as err:
        trainer.train()
    assert "nonfinite_policy='skip'" in str(err.value)
    assert trainer.state.global_step == 3
    assert all(torch.isfinite(p).all() for p in student.parameters()), "the student must not be poisoned"


def test_the_error_names_the_micro_batch_within_an_accumulated_step(tmp_out):
    student, teacher = tiny_model(seed=0), tiny_model(seed=1)
    _poison_teacher(teacher, calls={3})  # step 1 = micro-batches 0, 1; step 2 = micro-batches 2, 3
    trainer = _trainer(tmp_out, student, teacher, max_steps=3, gradient_accumulation_steps=2)
    with pytest.raises(NonFiniteLossError, match=r"global step 1, micro-batch 3"):
        trainer.train()


def test_nan_in_the_students_logits_from_a_poisoned_embedding_row(tmp_out):
    student, teacher = tiny_model(seed=0), tiny_model(seed=1)
    dataset = tiny_classification_dataset(16)
    token = dataset[0]["input_ids"][1]  # appears in the first example
    with torch.no_grad():
        student.bert.embeddings.word_embeddings.weight[token] = float("nan")
    trainer = _trainer(tmp_out, student, teacher, max_steps=2)
    with pytest.raises(
        NonFiniteLossError, match=r"NaN or inf in student logits at global step \d+, micro-batch \d+"
    ):
        trainer.train()


def test_skip_policy_one_step_whose_only_batch_is_poisoned_leaves_parameters_equal(tmp_out):
    student, teacher = tiny_model(seed=0), tiny_model(seed=1)
    _poison_teacher(teacher, calls={0})
    before = _params(student)
    # AdamW without weight decay: a zero gradient on a fresh optimizer moves nothing.
    optimizer = torch.optim.AdamW(student.parameters(), lr=0.1, weight_decay=0.0)
    trainer = _trainer(tmp_out, student, teacher, max_steps=1, optimizer=optimizer, nonfinite_policy="skip")
    trainer.train()
    assert trainer.state.global_step == 1
    for name, value in _params(student).items():
        assert torch.equal(value, before[name]), name
    logged = [
        entry["nonfinite_skipped"] for entry in trainer.state.log_history if "nonfinite_skipped" in entry
    ]
    assert logged == [1]


def test_skip_policy_drops_only_the_poisoned_micro_batch(tmp_out, tmp_path):
    # Plain SGD (no momentum): a run whose 2nd step is poisoned ends where a 1-step run ends, exactly; a third,
    # clean step then moves the student on from there.
    def run(out: str, steps: int, poison: set[int]) -> tuple[dict[str, torch.Tensor], DistillationTrainer]:
        student, teacher = tiny_model(seed=0), tiny_model(seed=1)
        _poison_teacher(teacher, calls=poison)
        optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
        trainer = _trainer(
            out, student, teacher, max_steps=steps, optimizer=optimizer, nonfinite_policy="skip"
        )
        trainer.train()
        return _params(student), trainer

    one_step, _ = run(str(tmp_path / "a"), 1, set())
    skipped, trainer = run(str(tmp_path / "b"), 2, {1})
    for name, value in one_step.items():
        assert torch.equal(skipped[name], value), name
    assert trainer.nonfinite_skipped == 1
    assert [e.get("nonfinite_skipped") for e in trainer.state.log_history if "loss" in e] == [None, 1]


def test_skip_policy_still_raises_in_evaluation(tmp_out):
    # Skipping only makes sense for an update; an evaluation over NaN logits would report a meaningless metric.
    student, teacher = tiny_model(seed=0), tiny_model(seed=1)
    _poison_teacher(teacher, calls={0})
    trainer = _trainer(tmp_out, student, teacher, max_steps=1, nonfinite_policy="skip")
    with pytest.raises(NonFiniteLossError, match="teacher logits"):
        trainer.evaluate(tiny_classification_dataset(4))


def test_negative_infinity_is_a_legitimate_masked_logit(tmp_out):
    # -inf where the teacher rules a class out is not an error: that class simply carries no teacher mass.
    student, teacher = tiny_model(seed=0), tiny_model(seed=1)

    def mask_class(module, args, output):
        output["logits"] = output["logits"].clone()
        output["logits"][:, 0] = float("-inf")
        return output

    teacher.register_forward_hook(mask_class)
    before = _params(student)
    trainer = _trainer(tmp_out, student, teacher, max_steps=1)
    trainer.train()
    after = _params(student)
    assert all(torch.isfinite(v).all() for v in after.values())
    assert any(not torch.equal(after[k], before[k]) for k in before)


def test_skip_policy_takes_no_optimizer_step_even_with_adam(tmp_path):
    # With AdamW a zero gradient still moves the weights (its moments carry the previous step), so a skipped
    # step must not call the optimizer at all: a 2-step run whose 2nd step is poisoned ends where a 1-step run
    # ends, exactly, and Adam's own step counter agrees.
    def run(out: str, steps: int, poison: set[int]) -> tuple[dict[str, torch.Tensor], DistillationTrainer]:
        student, teacher = tiny_model(seed=0), tiny_model(seed=1)
        _poison_teacher(teacher, calls=poison)
        trainer = _trainer(out, student, teacher, max_steps=steps, nonfinite_policy="skip")
        trainer.train()
        return _params(student), trainer

    one_step, _ = run(str(tmp_path / "a"), 1, set())
    skipped, trainer = run(str(tmp_path / "b"), 2, {1})
    for name, value in one_step.items():
        assert torch.equal(skipped[name], value), name
    adam_steps = {int(s["step"]) for s in trainer.optimizer.optimizer.state.values()}
    assert adam_steps == {1}


def test_nan_at_a_masked_position_does_not_reach_the_loss():
    from hf_kd.losses import hidden_state_loss, soft_target_loss

    s = torch.tensor([[[1.0, 2.0], [float("nan"), 0.0]]])
    t = torch.tensor([[[0.5, 2.5], [1.0, 1.0]]])
    mask = torch.tensor([[1, 0]])
    assert hidden_state_loss(s, t, mask).item() == pytest.approx(((0.5**2) + (0.5**2)) / 2)
    logits = torch.tensor([[[0.0, 1.0], [float("nan"), 1.0]]])
    assert torch.isfinite(soft_target_loss(logits, torch.zeros(1, 2, 2), 2.0, mask=mask))
