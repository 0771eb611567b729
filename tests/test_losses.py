"""The loss functions against direct reference formulas on fixed tensors."""

from __future__ import annotations

import math

import pytest
import torch

from hf_kd.losses import (
    attention_loss,
    ensemble_log_probs,
    hard_loss,
    hidden_state_loss,
    soft_target_loss,
    topk_soft_target_loss,
)


def reference_kd(student, teacher, T):
    """T^2 * sum_c p_t (log p_t - log p_s), written out with explicit softmaxes, per row."""
    out = []
    for s_row, t_row in zip(student.tolist(), teacher.tolist()):
        zs = [v / T for v in s_row]
        zt = [v / T for v in t_row]
        ls = math.log(sum(math.exp(v) for v in zs))
        lt = math.log(sum(math.exp(v) for v in zt))
        kl = sum(math.exp(b - lt) * ((b - lt) - (a - ls)) for a, b in zip(zs, zt))
        out.append(T * T * kl)
    return out


STUDENT = torch.tensor([[1.0, -0.5, 2.0], [0.3, 0.2, -1.0], [-2.0, 1.5, 0.0]])
TEACHER = torch.tensor([[2.0, 0.0, 1.0], [0.0, 1.0, -0.5], [-1.0, 3.0, 0.5]])


@pytest.mark.parametrize("T", [1.0, 2.0, 5.0])
def test_soft_target_loss_matches_written_out_formula(T):
    expected = reference_kd(STUDENT, TEACHER, T)
    got = soft_target_loss(STUDENT, TEACHER, T, reduction="none")
    assert torch.allclose(got, torch.tensor(expected), rtol=1e-5, atol=1e-6)
    assert soft_target_loss(STUDENT, TEACHER, T).item() == pytest.approx(sum(expected) / 3, rel=1e-5)
    assert soft_target_loss(STUDENT, TEACHER, T, reduction="sum").item() == pytest.approx(
        sum(expected), rel=1e-5
    )


def test_soft_target_loss_equals_torch_kl_div_batchmean():
    T = 3.0
    ref = (
        torch.nn.functional.kl_div(
            torch.log_softmax(STUDENT / T, -1),
            torch.log_softmax(TEACHER / T, -1),
            reduction="batchmean",
            log_target=True,
        )
        * T**2
    )
    assert soft_target_loss(STUDENT, TEACHER, T).item() == pytest.approx(ref.item(), abs=1e-6)


def test_soft_target_loss_masks_items():
    mask = torch.tensor([1, 0, 1])
    expected = reference_kd(STUDENT, TEACHER, 2.0)
    got = soft_target_loss(STUDENT, TEACHER, 2.0, mask=mask)
    assert got.item() == pytest.approx((expected[0] + expected[2]) / 2, abs=1e-6)


def test_soft_target_loss_is_zero_for_identical_logits_and_positive_otherwise():
    assert soft_target_loss(TEACHER, TEACHER.clone(), 2.0).item() == pytest.approx(0.0, abs=1e-7)
    assert soft_target_loss(STUDENT, TEACHER, 2.0).item() > 0


def test_soft_target_loss_runs_in_float32_for_half_inputs():
    s16, t16 = STUDENT.to(torch.bfloat16), TEACHER.to(torch.bfloat16)
    got = soft_target_loss(s16, t16, 2.0)
    assert got.dtype == torch.float32
    expected = soft_target_loss(s16.float(), t16.float(), 2.0)
    assert got.item() == pytest.approx(expected.item(), abs=1e-6)


def test_soft_target_loss_rejects_shape_mismatch_with_clear_message():
    with pytest.raises(ValueError, match="label set"):
        soft_target_loss(STUDENT, TEACHER[:, :2], 2.0)


def test_masked_vocabulary_entries_contribute_nothing():
    # A class both models mask with -inf behaves as if it did not exist.
    s = torch.cat([STUDENT, torch.full((3, 1), float("-inf"))], -1)
    t = torch.cat([TEACHER, torch.full((3, 1), float("-inf"))], -1)
    s.requires_grad_(True)
    loss = soft_target_loss(s, t, 2.0)
    loss.backward()
    assert loss.item() == pytest.approx(soft_target_loss(STUDENT, TEACHER, 2.0).item(), abs=1e-6)
    assert torch.isfinite(s.grad).all()


def test_hard_loss_is_cross_entropy_ignoring_minus_100():
    labels = torch.tensor([2, -100, 1])
    expected = (-torch.log_softmax(STUDENT[0], -1)[2] - torch.log_softmax(STUDENT[2], -1)[1]) / 2
    assert hard_loss(STUDENT, labels).item() == pytest.approx(expected.item(), abs=1e-6)


def test_ensemble_of_identical_teachers_is_that_teacher():
    one = torch.log_softmax(TEACHER / 2.0, -1)
    two = ensemble_log_probs([TEACHER, TEACHER.clone()], 2.0)
    assert torch.allclose(one, two, atol=1e-6)


def test_ensemble_averages_probabilities_with_weights():
    other = TEACHER.flip(-1)
    got = ensemble_log_probs([TEACHER, other], 2.0, weights=[3.0, 1.0]).exp()
    expected = 0.75 * torch.softmax(TEACHER / 2, -1) + 0.25 * torch.softmax(other / 2, -1)
    assert torch.allclose(got, expected, atol=1e-6)


def test_topk_with_all_classes_equals_full_kd():
    T = 2.0
    log_probs = torch.log_softmax(TEACHER / T, -1)
    values, indices = log_probs.topk(3, -1)
    got = topk_soft_target_loss(STUDENT, values, indices, T)
    assert got.item() == pytest.approx(soft_target_loss(STUDENT, TEACHER, T).item(), abs=1e-5)


def test_topk_folds_the_rest_into_one_bucket():
    T = 1.0
    t_lp = torch.log_softmax(TEACHER / T, -1)
    s_lp = torch.log_softmax(STUDENT / T, -1)
    values, indices = t_lp.topk(1, -1)
    got = topk_soft_target_loss(STUDENT, values, indices, T, reduction="none")
    for row in range(3):
        k = indices[row, 0]
        pt, ps = t_lp[row, k].exp(), s_lp[row, k].exp()
        expected = pt * torch.log(pt / ps) + (1 - pt) * torch.log((1 - pt) / (1 - ps))
        assert got[row].item() == pytest.approx(expected.item(), abs=1e-5)


def test_hidden_state_mse_and_cosine_with_padding():
    torch.manual_seed(0)
    s = torch.randn(2, 4, 6)
    t = torch.randn(2, 4, 6)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    valid = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]
    mse = sum(((s[b, i] - t[b, i]) ** 2).mean() for b, i in valid) / len(valid)
    cos = sum(1 - torch.dot(s[b, i], t[b, i]) / (s[b, i].norm() * t[b, i].norm()) for b, i in valid) / len(
        valid
    )
    assert hidden_state_loss(s, t, mask, "mse").item() == pytest.approx(mse.item(), abs=1e-6)
    assert hidden_state_loss(s, t, mask, "cosine").item() == pytest.approx(cos.item(), abs=1e-6)
    # Changing padded positions changes nothing.
    s2 = s.clone()
    s2[0, 3] += 100
    assert hidden_state_loss(s2, t, mask).item() == pytest.approx(mse.item(), abs=1e-6)


def test_hidden_state_loss_rejects_unknown_distance():
    with pytest.raises(ValueError, match="does not exist"):
        hidden_state_loss(torch.zeros(1, 2, 3), torch.zeros(1, 2, 3), loss="l7")


def _attn(b, h, L, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(b, h, L, L, generator=g), -1)


def test_attention_loss_per_valid_query_mean_over_heads_and_valid_keys():
    s, t = _attn(2, 2, 3, 1), _attn(2, 2, 3, 2)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    per_query = []
    for b in range(2):
        n = int(mask[b].sum())
        for q in range(n):
            per_query.append(((s[b, :, q, :n] - t[b, :, q, :n]) ** 2).mean())
    expected = sum(per_query) / len(per_query)
    assert attention_loss(s, t, mask).item() == pytest.approx(expected.item(), abs=1e-7)


def test_attention_loss_with_different_head_counts_compares_head_means():
    s, t = _attn(1, 2, 3, 3), _attn(1, 4, 3, 4)
    expected = ((s.mean(1) - t.mean(1)) ** 2).mean()
    assert attention_loss(s, t).item() == pytest.approx(expected.item(), abs=1e-7)
    assert attention_loss(t, t.clone()).item() == 0.0
