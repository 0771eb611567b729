"""Mixed precision: loss functions at fp16's range edges, bf16 autocast training on CPU, a bf16 teacher.

References are computed independently in float64 on the unmasked classes only (a masked vocabulary is the same
distribution over fewer classes), so they share no code with hf_kd.losses.
"""

from __future__ import annotations

import math

import pytest
import torch

from hf_kd.losses import (
    attention_loss,
    ensemble_log_probs,
    hidden_state_loss,
    soft_target_loss,
    topk_soft_target_loss,
)

FP16_MAX = 65504.0
NEG_INF = float("-inf")
TEMPERATURES = (0.5, 1.0, 2.0, 20.0)
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _leaf(values, dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype).requires_grad_(True)


# Rows: extreme logits of both signs; a masked vocabulary (-inf shared by teacher and student) with fp16-max
# entries; a row whose every entry is masked (padding: no distribution at all).
STUDENT = [
    [FP16_MAX, -FP16_MAX, 0.0, 3.0, -1.0],
    [NEG_INF, FP16_MAX, NEG_INF, -FP16_MAX, 0.5],
    [NEG_INF, NEG_INF, NEG_INF, NEG_INF, NEG_INF],
]
TEACHER = [
    [-FP16_MAX, FP16_MAX, 1.0, 0.0, FP16_MAX],
    [NEG_INF, -FP16_MAX, NEG_INF, FP16_MAX, 2.0],
    [NEG_INF, NEG_INF, NEG_INF, NEG_INF, NEG_INF],
]


def _reference_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> float:
    """Mean over rows with any unmasked class of T^2 KL(p_t || p_s), in float64 on the unmasked classes."""
    total, rows = 0.0, 0
    for s_row, t_row in zip(student.detach().double(), teacher.detach().double()):
        keep = ~torch.isneginf(t_row)
        if not keep.any():
            total, rows = total + 0.0, rows + 1  # no distribution: contributes 0, still counted as an item
            continue
        log_p_t = torch.log_softmax(t_row[keep] / temperature, -1)
        log_p_s = torch.log_softmax(s_row[keep] / temperature, -1)
        total += float((log_p_t.exp() * (log_p_t - log_p_s)).sum()) * temperature**2
        rows += 1
    return total / rows


def _assert_finite_grads(*tensors: torch.Tensor) -> None:
    for t in tensors:
        assert t.grad is not None and torch.isfinite(t.grad).all(), t.grad


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_soft_target_loss_fp16_extremes_and_masked_vocabulary(temperature, dtype):
    student, teacher = _leaf(STUDENT, dtype), _leaf(TEACHER, dtype)
    loss = soft_target_loss(student, teacher, temperature)
    assert loss.dtype == torch.float32  # KD math in float32 whatever the input dtype
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(_reference_kl(student, teacher, temperature), rel=1e-4, abs=1e-3)
    loss.backward()
    _assert_finite_grads(student, teacher)
    # Masked classes get no gradient, and neither does the fully masked row.
    masked = torch.isneginf(torch.tensor(TEACHER))
    assert torch.all(student.grad.float()[masked] == 0)


@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_ensemble_log_probs_keeps_masked_classes_at_minus_inf_with_finite_gradients(temperature):
    # Two teachers that mask classes 0 and 2 of row 1 alike, and all of row 2 (padding).
    first, second = _leaf(TEACHER, torch.float16), _leaf(STUDENT, torch.float16)
    log_probs = ensemble_log_probs([first, second], temperature, weights=[3.0, 1.0])
    assert log_probs.dtype == torch.float32
    # Reference, float64 in log space (a probability of exp(-1.3e5) underflows even in float64):
    # log(0.75 p_1 + 0.25 p_2); a class both teachers mask is -inf, every other class finite.
    for row in range(2):
        log_p1 = torch.log_softmax(first[row].detach().double() / temperature, -1)
        log_p2 = torch.log_softmax(second[row].detach().double() / temperature, -1)
        expected = torch.logsumexp(torch.stack([log_p1 + math.log(0.75), log_p2 + math.log(0.25)]), 0)
        got = log_probs[row].double()
        assert torch.equal(torch.isneginf(got), torch.isneginf(expected))
        finite = torch.isfinite(expected)
        torch.testing.assert_close(got[finite], expected[finite], rtol=1e-5, atol=1e-2)
    assert not torch.isnan(log_probs).any() and not torch.isposinf(log_probs).any()
    # Distilling from the ensemble: finite value and gradients for the student and for both teachers.
    student = _leaf(
        [[0.0, 1.0, -2.0, FP16_MAX, 0.0], [NEG_INF, 0.0, NEG_INF, 1.0, 2.0], [NEG_INF] * 5], torch.float16
    )
    loss = soft_target_loss(student, temperature=temperature, teacher_log_probs=log_probs)
    assert torch.isfinite(loss)
    loss.backward()
    _assert_finite_grads(student, first, second)


def _reference_topk(student, topk_log_probs, topk_indices, temperature) -> float:
    """T^2 KL over the k teacher classes plus one bucket for the rest, float64, mean over rows."""
    total = 0.0
    for s_row, t_top, idx in zip(student.detach().double(), topk_log_probs.double(), topk_indices):
        log_p_s = torch.log_softmax(s_row / temperature, -1)
        # Log space: the student's probability at a teacher class can be exp(-1.3e5), 0 even in float64.
        log_s = torch.cat([log_p_s[idx], torch.log1p(-log_p_s[idx].exp().sum()).reshape(1)])
        p_t = torch.cat([t_top.exp(), (1 - t_top.exp().sum()).clamp_min(0).reshape(1)])
        kl = sum(float(pt * (pt.log() - ls)) for pt, ls in zip(p_t, log_s) if pt > 1e-6)
        total += kl * temperature**2
    return total / len(topk_indices)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_topk_soft_target_loss_fp16_extremes_and_masked_classes(temperature, dtype):
    teacher = torch.tensor(TEACHER[:2], dtype=dtype).float()
    student = _leaf(STUDENT[:2], dtype)
    # k = 3 is more than row 1's three unmasked classes minus one: its top-3 reaches no masked class, but with
    # k = 4 the 4th index is a masked class (log-prob -inf), as a real top-k over a masked vocabulary gives.
    for k in (3, 4):
        student.grad = None
        log_probs = torch.log_softmax(teacher / temperature, -1)
        top, idx = log_probs.topk(k, dim=-1)  # (2, k)
        loss = topk_soft_target_loss(student, top.to(dtype), idx, temperature)
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
        expected = _reference_topk(student, top.to(dtype).float(), idx, temperature)
        assert loss.item() == pytest.approx(expected, rel=1e-3, abs=1e-3)
        loss.backward()
        _assert_finite_grads(student)


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
@pytest.mark.parametrize("kind", ("mse", "cosine"))
def test_hidden_state_loss_at_fp16_max_is_finite_in_float32(kind, dtype):
    student = _leaf([[[FP16_MAX] * 4, [-FP16_MAX, FP16_MAX, 0.0, 1.0], [0.0] * 4]], dtype)  # (1, 3, 4)
    teacher = _leaf([[[-FP16_MAX] * 4, [FP16_MAX, FP16_MAX, 0.0, 1.0], [5.0] * 4]], dtype)
    mask = torch.tensor([[1, 1, 0]])
    loss = hidden_state_loss(student, teacher, mask, kind)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    s, t = student.detach().double()[0, :2], teacher.detach().double()[0, :2]
    if kind == "mse":
        expected = ((s - t) ** 2).mean(-1).mean()  # a fp16 square would overflow: (2 * 65504)^2 > 65504
    else:
        expected = (1 - (s * t).sum(-1) / (s.norm(dim=-1) * t.norm(dim=-1))).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    _assert_finite_grads(student, teacher)


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
def test_attention_loss_half_inputs_with_padding(dtype):
    g = torch.Generator().manual_seed(0)
    student = torch.softmax(torch.randn(2, 4, 5, 5, generator=g) * 30, -1).to(dtype).requires_grad_(True)
    teacher = torch.softmax(torch.randn(2, 2, 5, 5, generator=g) * 30, -1).to(dtype).requires_grad_(True)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    loss = attention_loss(student, teacher, mask)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    # Reference: heads averaged (4 vs 2 heads), MSE over valid keys, mean over valid queries.
    s = student.detach().double().mean(1)
    t = teacher.detach().double().mean(1)
    terms = []
    for b in range(2):
        n = int(mask[b].sum())
        terms += [((s[b, q, :n] - t[b, q, :n]) ** 2).mean() for q in range(n)]
    assert loss.item() == pytest.approx(float(torch.stack(terms).mean()), rel=1e-5)
    loss.backward()
    _assert_finite_grads(student, teacher)


# ---- training in reduced precision --------------------------------------------------------------------------


def _trainer(tmp_out, **config):
    from conftest import tiny_classification_dataset, tiny_model

    from hf_kd import DistillationConfig, DistillationTrainer

    teacher = tiny_model(seed=1, num_layers=4, hidden=48)
    with torch.no_grad():
        teacher.classifier.weight.mul_(30.0)  # sharpen the random teacher so the KD term is not ~0
    args = DistillationConfig(
        output_dir=tmp_out,
        use_cpu=True,
        per_device_train_batch_size=4,
        max_steps=4,
        learning_rate=1e-2,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        hidden_weight=1.0,
        temperature=1.0,
        **{"teacher_dtype": "float32", **config},
    )
    return DistillationTrainer(
        model=tiny_model(seed=0),
        args=args,
        train_dataset=tiny_classification_dataset(n=16),
        teacher_model=teacher,
    )


def _finite_logged_losses(trainer) -> list[dict]:
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 4
    for entry in logs:
        for key in ("loss", "loss_kd", "loss_ce", "loss_hidden"):
            assert math.isfinite(entry[key]), entry
    assert trainer.nonfinite_skipped == 0
    return logs


@pytest.mark.slow
def test_bf16_autocast_on_cpu_trains_with_kd_math_in_float32(tmp_out, monkeypatch):
    import hf_kd.objective as objective_module

    seen = []
    original = objective_module.soft_target_loss

    def spy(student_logits, teacher_logits=None, *args, **kwargs):
        value = original(student_logits, teacher_logits, *args, **kwargs)
        seen.append((teacher_logits.dtype, value.dtype))
        return value

    monkeypatch.setattr(objective_module, "soft_target_loss", spy)
    trainer = _trainer(tmp_out, bf16=True)
    inside = []
    trainer.model.classifier.register_forward_hook(lambda module, args, out: inside.append(out.dtype))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    _finite_logged_losses(trainer)
    # Autocast was real: the student's classifier computed in bf16 (Accelerate hands the logits back in
    # float32), and the teacher's logits reached the KD loss in bf16; the KD term came back in float32.
    assert inside and set(inside) == {torch.bfloat16}
    assert seen and all(t == torch.bfloat16 and v == torch.float32 for t, v in seen), seen
    after = trainer.accelerator.unwrap_model(trainer.model).state_dict()
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())  # fp32 master weights
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert any(
        "hf_kd_projections" in k and not torch.equal(v, v.new_zeros(v.shape)) for k, v in after.items()
    )


@pytest.mark.slow
def test_bfloat16_teacher_with_float32_student(tmp_out):
    trainer = _trainer(tmp_out, teacher_dtype="bfloat16")
    teacher = trainer.teacher
    assert all(p.dtype == torch.bfloat16 for p in teacher.parameters())
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    _finite_logged_losses(trainer)
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    assert all(torch.equal(teacher_before[k], v) for k, v in teacher.state_dict().items())
    after = trainer.model.state_dict()
    changed = [k for k in student_before if not torch.equal(student_before[k], after[k])]
    assert "classifier.weight" in changed and any("encoder.layer.0" in k for k in changed)
