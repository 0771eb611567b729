"""Property-based tests of the losses in hf_kd.losses (hypothesis, fixed budget, derandomized so CI is
reproducible). Each property is a fact about KL divergence and masking that holds for every input:

- finite for random logits in float32, bfloat16 and float16 at any temperature, including logits near the
  half-precision maximum;
- zero when the student's logits equal the teacher's; never negative;
- invariant to adding a constant to all logits of a row (softmax is);
- values at masked (padding) positions do not change the result;
- hidden-state and attention losses are zero on identical inputs and ignore masked positions.

Run with `--hypothesis-show-statistics` to see how many cases each property ran.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hf_kd.losses import (
    attention_loss,
    ensemble_log_probs,
    hard_loss,
    hidden_state_loss,
    soft_target_loss,
    topk_soft_target_loss,
)

BUDGET = settings(max_examples=50, deadline=None, derandomize=True, database=None)
DTYPES = [torch.float32, torch.bfloat16, torch.float16]

seeds = st.integers(0, 2**31 - 1)
temperatures = st.floats(0.05, 50.0, allow_nan=False)
scales = st.floats(1e-3, 3e4, allow_nan=False)  # up to about half the float16 maximum (65504)
dtypes = st.sampled_from(DTYPES)
shapes = st.tuples(st.integers(1, 4), st.integers(1, 6), st.integers(2, 40))  # (B, L, C)


def _logits(seed: int, shape: tuple[int, ...], scale: float, dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * scale
    limit = min(torch.finfo(dtype).max, torch.finfo(torch.float32).max) / 2
    return x.clamp(-limit, limit).to(dtype)


def _mask(seed: int, shape: tuple[int, int]) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 1)
    mask = torch.rand(shape, generator=g) > 0.4
    mask[0, 0] = True  # at least one valid item
    return mask


@BUDGET
@given(seed=seeds, shape=shapes, scale=scales, dtype=dtypes, temperature=temperatures)
def test_soft_target_loss_is_finite_and_non_negative(seed, shape, scale, dtype, temperature):
    student = _logits(seed, shape, scale, dtype)
    teacher = _logits(seed + 7, shape, scale, dtype)
    per_item = soft_target_loss(student, teacher, temperature, reduction="none")  # (B, L)
    assert per_item.dtype == torch.float32
    assert torch.isfinite(per_item).all()
    # KL >= 0; float32 rounding of log-softmax allows a few ulps below zero, scaled by T^2.
    assert (per_item >= -1e-5 * max(temperature**2, 1.0)).all(), per_item.min()


@BUDGET
@given(seed=seeds, shape=shapes, scale=scales, dtype=dtypes, temperature=temperatures)
def test_soft_target_loss_is_zero_when_student_equals_teacher(seed, shape, scale, dtype, temperature):
    logits = _logits(seed, shape, scale, dtype)
    assert soft_target_loss(logits, logits.clone(), temperature).item() == 0.0


@BUDGET
@given(
    seed=seeds,
    shape=shapes,
    scale=st.floats(1e-2, 30.0),
    temperature=st.floats(0.5, 20.0),
    shift=st.floats(-100.0, 100.0),
)
def test_soft_target_loss_is_invariant_to_a_constant_added_per_row(seed, shape, scale, temperature, shift):
    student = _logits(seed, shape, scale, torch.float64)
    teacher = _logits(seed + 7, shape, scale, torch.float64)
    g = torch.Generator().manual_seed(seed + 3)
    row_shift = shift * torch.rand(shape[:-1] + (1,), generator=g, dtype=torch.float64)  # (B, L, 1)
    # Compared on float64 inputs, since the loss computes in float32: the shift is exact before the cast.
    base = soft_target_loss(student.float(), teacher.float(), temperature, reduction="none")
    shifted = soft_target_loss(
        (student + row_shift).float(), (teacher - 2 * row_shift).float(), temperature, reduction="none"
    )
    tolerance = 2e-5 * (abs(shift) + scale) / temperature * temperature**2 + 1e-5
    torch.testing.assert_close(shifted, base, rtol=1e-3, atol=tolerance)


@BUDGET
@given(
    seed=seeds,
    shape=shapes,
    scale=st.floats(1e-2, 1e3),
    dtype=dtypes,
    temperature=temperatures,
    reduction=st.sampled_from(["mean", "sum"]),
)
def test_soft_target_loss_ignores_values_at_masked_positions(
    seed, shape, scale, dtype, temperature, reduction
):
    student = _logits(seed, shape, scale, dtype)
    teacher = _logits(seed + 7, shape, scale, dtype)
    mask = _mask(seed, shape[:2])
    garbage_s = _logits(seed + 11, shape, 1e3, dtype)
    garbage_t = _logits(seed + 13, shape, 1e3, dtype)
    keep = mask.unsqueeze(-1)
    base = soft_target_loss(student, teacher, temperature, mask, reduction)
    changed = soft_target_loss(
        torch.where(keep, student, garbage_s),
        torch.where(keep, teacher, garbage_t),
        temperature,
        mask,
        reduction,
    )
    assert torch.equal(base, changed)
    # And the masked mean is the mean over valid items of the unreduced loss (independent reduction).
    per_item = soft_target_loss(student, teacher, temperature, reduction="none")
    expected = per_item[mask].sum() / (mask.sum() if reduction == "mean" else 1)
    torch.testing.assert_close(base, expected, rtol=1e-5, atol=1e-6)


@BUDGET
@given(seed=seeds, shape=shapes, scale=st.floats(1e-2, 30.0), temperature=st.floats(0.5, 10.0))
def test_topk_with_every_class_equals_the_full_soft_target_loss(seed, shape, scale, temperature):
    student = _logits(seed, shape, scale, torch.float32)
    teacher = _logits(seed + 7, shape, scale, torch.float32)
    log_probs = torch.log_softmax(teacher / temperature, -1)
    top, idx = log_probs.topk(shape[-1], dim=-1)
    got = topk_soft_target_loss(student, top, idx, temperature, reduction="none")
    expected = soft_target_loss(student, teacher, temperature, reduction="none")
    assert torch.isfinite(got).all() and (got >= -1e-5 * temperature**2).all()
    # The rest bucket's mass is clamped at 1e-7, so the two agree to that order (times T^2).
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-4 * temperature**2)


@BUDGET
@given(seed=seeds, shape=shapes, scale=scales, dtype=dtypes, temperature=temperatures, n=st.integers(1, 4))
def test_ensemble_of_identical_teachers_is_that_teacher(seed, shape, scale, dtype, temperature, n):
    teacher = _logits(seed, shape, scale, dtype)
    g = torch.Generator().manual_seed(seed)
    weights = (torch.rand(n, generator=g) + 0.1).tolist()
    got = ensemble_log_probs([teacher] * n, temperature, weights)
    expected = torch.log_softmax(teacher.float() / temperature, -1)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@BUDGET
@given(seed=seeds, shape=shapes, scale=scales, dtype=dtypes)
def test_hard_loss_is_finite_and_ignores_minus_100_positions(seed, shape, scale, dtype):
    logits = _logits(seed, shape, scale, dtype)
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, shape[-1], shape[:2], generator=g)
    mask = _mask(seed, shape[:2])
    masked_labels = labels.masked_fill(~mask, -100)
    got = hard_loss(logits, masked_labels)
    assert torch.isfinite(got) and got >= 0
    garbage = _logits(seed + 5, shape, 1e3, dtype)
    assert torch.equal(got, hard_loss(torch.where(mask.unsqueeze(-1), logits, garbage), masked_labels))


hidden_shapes = st.tuples(st.integers(1, 3), st.integers(1, 6), st.integers(1, 16))  # (B, L, D)


@BUDGET
@given(
    seed=seeds,
    shape=hidden_shapes,
    scale=st.floats(1e-3, 1e3),
    dtype=dtypes,
    loss=st.sampled_from(["mse", "cosine"]),
)
def test_hidden_state_loss_zero_on_identical_states_and_blind_to_masked_tokens(
    seed, shape, scale, dtype, loss
):
    hidden = _logits(seed, shape, scale, dtype)
    mask = _mask(seed, shape[:2])
    same = hidden_state_loss(hidden, hidden.clone(), mask, loss)
    assert torch.isfinite(same)
    # Cosine distance of a vector with itself is 0 up to float32 rounding of the norms.
    assert abs(same.item()) <= (0.0 if loss == "mse" else 1e-6)
    other = _logits(seed + 7, shape, scale, dtype)
    base = hidden_state_loss(hidden, other, mask, loss)
    assert torch.isfinite(base) and base >= -1e-6
    garbage = _logits(seed + 9, shape, 1e3, dtype)
    keep = mask.unsqueeze(-1)
    changed = hidden_state_loss(
        torch.where(keep, hidden, garbage), torch.where(keep, other, -garbage), mask, loss
    )
    assert torch.equal(base, changed)


@BUDGET
@given(
    seed=seeds,
    b=st.integers(1, 3),
    heads=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    length=st.integers(1, 7),
    dtype=dtypes,
)
def test_attention_loss_zero_on_identical_maps_and_blind_to_masked_tokens(seed, b, heads, length, dtype):
    g = torch.Generator().manual_seed(seed)
    h_s, h_t = heads
    student = torch.softmax(torch.randn(b, h_s, length, length, generator=g), -1).to(dtype)
    teacher = torch.softmax(torch.randn(b, h_t, length, length, generator=g), -1).to(dtype)
    mask = _mask(seed, (b, length))
    assert attention_loss(student, student.clone(), mask).item() == 0.0
    base = attention_loss(student, teacher, mask)
    assert torch.isfinite(base) and base >= 0
    # Masked query rows and masked key columns may hold anything.
    valid = mask[:, None, :, None] & mask[:, None, None, :]  # (B, 1, L, L)
    garbage = torch.rand(b, max(h_s, h_t), length, length, generator=g).to(dtype) * 7
    changed = attention_loss(
        torch.where(valid, student, garbage[:, :h_s]), torch.where(valid, teacher, garbage[:, :h_t]), mask
    )
    if h_s == h_t:
        assert torch.equal(base, changed)
    else:  # heads are averaged first, which sums in another order
        torch.testing.assert_close(base, changed, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", DTYPES)
def test_soft_target_loss_at_the_half_precision_limit(dtype):
    # Written-out case: logits at +-max/2 of the dtype. A softmax in the input dtype would overflow (fp16) or
    # lose the small probabilities; the float32 computation gives the exact KL of two one-hot-like distributions.
    big = torch.finfo(dtype).max / 2
    student = torch.tensor([[big, -big, 0.0]]).to(dtype)
    teacher = torch.tensor([[-big, big, 0.0]]).to(dtype)
    loss = soft_target_loss(student, teacher, temperature=1.0)
    # p_t puts all mass on class 1, where log p_s = -(big - (-big)) = -2 big (rounded in float32).
    expected = 2 * float(torch.tensor(big, dtype=dtype).float())
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, torch.tensor(expected), rtol=1e-6, atol=0.0)
