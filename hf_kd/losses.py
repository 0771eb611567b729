"""Distillation losses: pure functions of tensors and masks, with no Trainer inside.

Every function computes in float32, whatever dtype its inputs arrive in: under bf16/fp16 autocast a softmax of
large logits overflows or loses the small probabilities that carry the teacher's "dark knowledge".

Reductions: each loss is a sum of per-item terms (an item is an example, a token or a query position, as each
function says). `reduction="mean"` divides by the number of valid items in the call, `"sum"` returns the sum so
that a caller can divide by a count taken over a larger batch (gradient accumulation, several processes), and
`"none"` returns the per-item terms.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def _reduce(per_item: Tensor, mask: Tensor | None, reduction: str) -> Tensor:
    if mask is not None:
        # where, not a product: a NaN or inf at a masked (padding) position must not reach the result.
        per_item = torch.where(mask.bool(), per_item, torch.zeros_like(per_item))
        count = mask.to(per_item.dtype).sum()
    else:
        count = torch.tensor(float(per_item.numel()), device=per_item.device)
    if reduction == "none":
        return per_item
    if reduction == "sum":
        return per_item.sum()
    if reduction == "mean":
        # An empty mask gives 0, not NaN: a micro-batch with no labelled token contributes nothing.
        return per_item.sum() / count.clamp_min(1.0)
    raise ValueError(f"reduction={reduction!r} is not one of 'mean', 'sum', 'none'")


def _finite_log_softmax(logits: Tensor, temperature: float) -> Tensor:
    """log_softmax(logits / T) in float32, safe for -inf entries (masked vocabulary) and fp16-max logits."""
    logits = logits.float() / temperature  # (..., C)
    # Positions where every entry is -inf would give NaN; they carry no distribution, so make them uniform.
    all_masked = torch.isneginf(logits).all(dim=-1, keepdim=True)
    logits = torch.where(all_masked, torch.zeros_like(logits), logits)
    return torch.log_softmax(logits, dim=-1)


def kl_from_log_probs(student_log_probs: Tensor, teacher_log_probs: Tensor) -> Tensor:
    """KL(p_teacher || p_student) along the last dim, per item: sum_c p_t (log p_t - log p_s).

    Classes the teacher gives zero probability (log p = -inf) contribute 0, as in the limit p log p -> 0,
    and a class the student masks (-inf) where the teacher puts no mass contributes 0 too.
    """
    teacher_probs = teacher_log_probs.exp()  # (..., C)
    # Mask the difference before multiplying: where both are -inf it is NaN, and NaN * 0 in the backward pass
    # would turn every gradient NaN even though the forward value ignores those classes.
    diff = torch.where(
        teacher_probs > 0, teacher_log_probs - student_log_probs, torch.zeros_like(teacher_probs)
    )
    # Rounding can leave a KL of two nearly equal distributions a hair below 0; the true value never is.
    return (teacher_probs * diff).sum(dim=-1).clamp_min(0.0)  # (...)


def kl_from_logits(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """KL(softmax(teacher / T) || softmax(student / T)) along the last dim, per item, never negative.

    At a high temperature both distributions are nearly uniform: log p_t and log p_s are each about -log C,
    and their difference, which the KL is made of, is far smaller than the rounding of either in float32
    (at T = 1e3 the plain sum_c p_t (log p_t - log p_s) gave T^2 * KL = -0.17 where float64 gives +0.004).
    So the log-ratio d = log p_t - log p_s is formed from the logit difference u = (t - s) / T, as
    d = u - log sum_c p_s e^u, and the KL is summed as sum_c p_s g(d) with g(d) = d e^d - e^d + 1: the same value
    (both distributions sum to 1), but each term is >= 0 and g is a short series for small d, so no cancellation
    is left. Items holding -inf or other non-finite logits (a masked vocabulary), or logits so far apart that their
    difference overflows float32, take the log-probability path of `kl_from_log_probs`.
    """
    s = student_logits.float()  # (..., C)
    t = teacher_logits.float()
    with torch.no_grad():
        # Sums of a few scaled logits must stay finite in float32: beyond 1e36 an item takes the fallback.
        finite = ((s / temperature).abs() < 1e36).all(-1) & ((t / temperature).abs() < 1e36).all(-1)  # (...)
    # Those items go through the stable formula as zeros, so that no NaN reaches its gradient.
    s0 = torch.where(finite.unsqueeze(-1), s, torch.zeros_like(s))
    t0 = torch.where(finite.unsqueeze(-1), t, torch.zeros_like(t))
    student_log_probs = torch.log_softmax(s0 / temperature, dim=-1)  # (..., C)
    student_probs = student_log_probs.exp()
    u = (t0 - s0) / temperature  # log p_t - log p_s, up to a constant per item
    v = u - u.max(dim=-1, keepdim=True).values  # <= 0, so nothing overflows
    # log sum_c p_s e^v: log1p keeps its digits when the distributions are close, logsumexp when they are not.
    near = (student_probs * torch.expm1(v)).sum(-1, keepdim=True)  # in (-1, 0]
    log_norm = torch.where(
        near > -0.5,
        torch.log1p(near.clamp_min(-0.5)),
        torch.logsumexp(student_log_probs + v, dim=-1, keepdim=True),
    )
    d = v - log_norm  # log p_t - log p_s, (..., C)
    # p_s g(d), g(d) = d e^d - expm1(d), in three ranges, each without cancellation to speak of:
    # |d| < 0.1: the series d^2/2 + d^3/3 + d^4/8 + d^5/30 + d^6/144 (truncation below 3e-8 relative);
    # |d| <= 10: g as written (the two parts differ by at least 5%);
    # beyond: p_t (d - 1) + p_s with p_t from the teacher's softmax (p_s e^d could overflow, and its exponent would
    # carry the rounding of two large log-probabilities). The clamps keep the unused ranges finite for autograd.
    x = d.clamp(-0.1, 0.1)
    series = x * x * (1 / 2 + x * (1 / 3 + x * (1 / 8 + x * (1 / 30 + x / 144))))
    m = d.clamp(-10.0, 10.0)
    middle = m * torch.exp(m) - torch.expm1(m)
    far = torch.softmax(t0 / temperature, dim=-1) * (d - 1) + student_probs
    near_terms = student_probs * torch.where(d.abs() < 0.1, series, middle)
    terms = torch.where(d.abs() <= 10.0, near_terms, far).clamp_min(0.0)  # (..., C)
    per_item = terms.sum(dim=-1)  # (...)
    if bool(finite.all()):
        return per_item
    fallback = kl_from_log_probs(
        _finite_log_softmax(student_logits, temperature), _finite_log_softmax(teacher_logits, temperature)
    )
    return torch.where(finite, per_item, fallback)


def soft_target_loss(
    student_logits: Tensor,
    teacher_logits: Tensor | None = None,
    temperature: float = 2.0,
    mask: Tensor | None = None,
    reduction: str = "mean",
    teacher_log_probs: Tensor | None = None,
) -> Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), per item along the last dim.

    Args:
        student_logits: (B, C) or (B, L, C).
        teacher_logits: same shape; or pass `teacher_log_probs` already at temperature T (an ensemble's
            averaged distribution, or a cached top-k distribution).
        mask: (B,) or (B, L), 1 for items that count.

    The T^2 factor (Hinton et al., 2015): the gradient of the softened KL w.r.t. the logits scales as 1/T^2,
    so multiplying by T^2 keeps the soft term's contribution comparable across temperatures.
    """
    if teacher_log_probs is None:
        if teacher_logits is None:
            raise ValueError("soft_target_loss needs teacher_logits or teacher_log_probs")
        if teacher_logits.shape != student_logits.shape:
            raise ValueError(
                f"teacher logits {tuple(teacher_logits.shape)} and student logits "
                f"{tuple(student_logits.shape)} differ in shape: the two models must share the label set "
                "(and vocabulary for token-level heads)"
            )
        per_item = kl_from_logits(student_logits, teacher_logits, temperature) * temperature**2
        return _reduce(per_item, mask, reduction)
    student_log_probs = _finite_log_softmax(student_logits, temperature)
    per_item = kl_from_log_probs(student_log_probs, teacher_log_probs.float()) * temperature**2
    return _reduce(per_item, mask, reduction)


def ensemble_log_probs(
    teacher_logits: list[Tensor], temperature: float, weights: list[float] | None = None
) -> Tensor:
    """log of the weighted mean of softmax(logits_i / T) over teachers: log sum_i w_i p_i.

    Averaging distributions (not logits) is what "the ensemble's soft targets" means; two identical teachers
    give exactly one teacher's distribution.
    """
    n = len(teacher_logits)
    if weights is None:
        weights = [1.0 / n] * n
    total = float(sum(weights))
    log_w = torch.tensor(
        [w / total for w in weights], dtype=torch.float32, device=teacher_logits[0].device
    ).log()
    stacked = torch.stack([_finite_log_softmax(t, temperature) for t in teacher_logits])  # (N, ..., C)
    log_w = log_w.view(n, *([1] * (stacked.dim() - 1)))
    weighted = stacked + log_w  # (N, ..., C)
    # A class every teacher masks (-inf) stays -inf; logsumexp's gradient there is exp(-inf - -inf) = NaN, so
    # such classes go through logsumexp as 0 and are set back to -inf afterwards.
    masked = torch.isneginf(weighted).all(dim=0)  # (..., C)
    combined = torch.logsumexp(torch.where(masked, torch.zeros_like(weighted), weighted), dim=0)
    return torch.where(masked, torch.full_like(combined, float("-inf")), combined)  # (..., C)


def topk_soft_target_loss(
    student_logits: Tensor,
    teacher_topk_log_probs: Tensor,
    teacher_topk_indices: Tensor,
    temperature: float,
    mask: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """T^2 * KL over k+1 buckets: the teacher's top-k classes and one bucket for all remaining mass.

    `teacher_topk_log_probs` (..., k) are log softmax(teacher / T) at those classes, computed at the same T.
    The student's distribution is folded the same way: its probabilities at the k indices plus the rest.
    """
    student_log_probs = _finite_log_softmax(student_logits, temperature)  # (..., C)
    s_top = student_log_probs.gather(-1, teacher_topk_indices.long())  # (..., k)
    t_top = teacher_topk_log_probs.float()
    # log(1 - sum p); clamp keeps log finite when the top-k hold (almost) all the mass.
    t_rest = torch.log1p(-t_top.exp().sum(-1).clamp(max=1.0 - 1e-7)).unsqueeze(-1)
    s_rest = torch.log1p(-s_top.exp().sum(-1).clamp(max=1.0 - 1e-7)).unsqueeze(-1)
    per_item = kl_from_log_probs(torch.cat([s_top, s_rest], -1), torch.cat([t_top, t_rest], -1))
    return _reduce(per_item * temperature**2, mask, reduction)


def hard_loss(logits: Tensor, labels: Tensor, reduction: str = "mean") -> Tensor:
    """Cross-entropy with the true labels in float32; label -100 is ignored. logits (..., C), labels (...)."""
    per_item = F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]),
        labels.reshape(-1).long(),
        ignore_index=-100,
        reduction="none",
    ).view(labels.shape)
    return _reduce(per_item, labels.ne(-100), reduction)


def hidden_state_loss(
    student_hidden: Tensor,
    teacher_hidden: Tensor,
    mask: Tensor | None = None,
    loss: str = "mse",
    reduction: str = "mean",
) -> Tensor:
    """Distance between hidden states per token, averaged over valid (non-padding) tokens.

    student_hidden, teacher_hidden: (B, L, D), already projected to the same D.
    `mse`: mean over D of (s - t)^2 per token. `cosine`: 1 - cos(s, t) per token.
    """
    s = student_hidden.float()
    t = teacher_hidden.float()
    if s.shape != t.shape:
        raise ValueError(
            f"hidden states {tuple(s.shape)} and {tuple(t.shape)} differ: project the student's states to the "
            "teacher's hidden size first"
        )
    if loss == "mse":
        per_token = (s - t).pow(2).mean(dim=-1)  # (B, L)
    elif loss == "cosine":
        per_token = 1.0 - F.cosine_similarity(s, t, dim=-1, eps=1e-8)  # (B, L)
    else:
        raise ValueError(f"hidden loss {loss!r} does not exist: choose 'mse' or 'cosine'")
    return _reduce(per_token, mask, reduction)


def attention_loss(
    student_attention: Tensor,
    teacher_attention: Tensor,
    mask: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """MSE between attention maps (TinyBERT style), per valid query token.

    student_attention: (B, H_s, L, L), teacher_attention: (B, H_t, L, L) attention probabilities.
    Per query position q: the mean over heads and over valid key positions k of (a_s - a_t)^2.
    With equal head counts heads are matched one to one; with different counts each model's maps are first
    averaged over its heads (a head-agnostic comparison), since there is no natural pairing of heads.
    """
    s = student_attention.float()
    t = teacher_attention.float()
    if s.shape[-1] != t.shape[-1] or s.shape[-2] != t.shape[-2]:
        raise ValueError(
            f"attention maps of length {s.shape[-1]} and {t.shape[-1]} cannot be compared: teacher and student "
            "must see the same tokens (same tokenizer and max length)"
        )
    if s.shape[1] != t.shape[1]:
        s = s.mean(dim=1, keepdim=True)  # (B, 1, L, L)
        t = t.mean(dim=1, keepdim=True)
    sq = (s - t).pow(2)  # (B, H, L, L)
    if mask is not None:
        key_mask = mask.to(sq.dtype)[:, None, None, :]  # (B, 1, 1, L)
        per_query = (sq * key_mask).sum(-1) / key_mask.sum(-1).clamp_min(1.0)  # (B, H, L)
    else:
        per_query = sq.mean(-1)
    per_query = per_query.mean(dim=1)  # (B, L)
    return _reduce(per_query, mask, reduction)


def regression_kd_loss(student_outputs: Tensor, teacher_outputs: Tensor, reduction: str = "mean") -> Tensor:
    """Squared distance between student and teacher outputs of a regression head, per example.

    outputs: (B, D) or (B,). Per example the mean over D of (s - t)^2. A regression output is a value, not a
    distribution, so there is no temperature here (and no T^2 factor).
    """
    s = student_outputs.float().reshape(student_outputs.shape[0], -1)  # (B, D)
    t = teacher_outputs.float().reshape(s.shape)
    return _reduce((s - t).pow(2).mean(-1), None, reduction)


def regression_hard_loss(
    outputs: Tensor, labels: Tensor, reduction: str = "mean", mask: Tensor | None = None
) -> Tensor:
    """Squared error against float labels, per example the mean over output dims (transformers' MSELoss).
    `mask` (B,): the examples that have a label."""
    s = outputs.float().reshape(outputs.shape[0], -1)  # (B, D)
    return _reduce((s - labels.float().reshape(s.shape)).pow(2).mean(-1), mask, reduction)


def _binary_log_probs(logits: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    z = logits.float() / temperature
    return F.logsigmoid(z), F.logsigmoid(-z)  # log p, log (1 - p)


def sigmoid_kd_loss(
    student_logits: Tensor, teacher_logits: Tensor, temperature: float = 2.0, reduction: str = "mean"
) -> Tensor:
    """T^2 * binary KL(sigmoid(t / T) || sigmoid(s / T)) per label, averaged over labels, per example.

    Multi-label heads score each label on its own, so each label is a two-class distribution; its KL gets the
    same T^2 factor as the softmax term. logits: (B, C).
    """
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(
            f"teacher logits {tuple(teacher_logits.shape)} and student logits {tuple(student_logits.shape)} "
            "differ in shape: the two models must share the label set"
        )
    s_pos, s_neg = _binary_log_probs(student_logits, temperature)
    t_pos, t_neg = _binary_log_probs(teacher_logits, temperature)
    per_label = t_pos.exp() * (t_pos - s_pos) + t_neg.exp() * (t_neg - s_neg)  # (B, C)
    # Float cancellation can leave a tiny negative value where the two distributions agree; KL is >= 0.
    per_example = per_label.clamp_min(0.0).mean(-1) * temperature**2
    return _reduce(per_example, None, reduction)


def multi_label_hard_loss(
    logits: Tensor, labels: Tensor, reduction: str = "mean", mask: Tensor | None = None
) -> Tensor:
    """Binary cross-entropy with 0/1 (or soft) labels, per example the mean over labels. `mask` (B,): the
    examples that have labels."""
    per_label = F.binary_cross_entropy_with_logits(logits.float(), labels.float(), reduction="none")
    return _reduce(per_label.mean(-1), mask, reduction)
