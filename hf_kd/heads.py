"""The heads hf-kd distils, as one table.

A row says, for one kind of head: which output keys hold its logits and which dataset columns hold their cached
copies, which batch keys hold its targets, whether the targets are shifted (causal LM), whether padding positions
are ruled out of its logits (extractive QA), which KD loss family applies, and which hard loss.

`kd_mask_and_counts` is the single rule for which items enter each loss term and how many there are: the KD
mask and the KD item count come from the same expression, so the numerator and the denominator of the KD term
cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .teacher import TEACHER_END_LOGITS, TEACHER_LOGITS, TEACHER_START_LOGITS
from .transfer import UNLABELED_KEY

# Positions in the item-count vector of one batch: examples, labelled items (hard term), KD items, and
# non-padding tokens (intermediate terms).
N_EXAMPLES, N_LABELLED, N_KD, N_TOKENS = range(4)


@dataclass(frozen=True)
class HeadSpec:
    """One row of the table. `kd_loss`: softmax_kl (T^2 KL between softmaxes at T), sigmoid_kl (T^2 per-label
    binary KL between sigmoids at T), or mse (squared distance between outputs; no temperature)."""

    name: str
    logits_keys: tuple[str, ...]
    cached_columns: tuple[str, ...]
    target_keys: tuple[str, ...]
    token_level: bool  # one KD item per (kept) position, not per example
    causal_shift: bool  # position i predicts token i + 1: labels[:, 1:] against logits[:, :-1]
    mask_padding_logits: bool  # padding positions get -inf in both models' logits (span heads)
    kd_loss: str
    hard_loss: str  # ce, span_ce (mean of start and end CE, one item per example), mse or bce
    labels_per_example: bool = True  # the hard term counts examples (not labelled positions)


_LOGITS = ("logits",)
_SPAN = ("start_logits", "end_logits")

HEADS: dict[str, HeadSpec] = {
    h.name: h
    for h in (
        HeadSpec(
            "sequence", _LOGITS, (TEACHER_LOGITS,), ("labels",), False, False, False, "softmax_kl", "ce"
        ),
        HeadSpec("regression", _LOGITS, (TEACHER_LOGITS,), ("labels",), False, False, False, "mse", "mse"),
        HeadSpec(
            "multi_label", _LOGITS, (TEACHER_LOGITS,), ("labels",), False, False, False, "sigmoid_kl", "bce"
        ),
        HeadSpec(
            "token", _LOGITS, (TEACHER_LOGITS,), ("labels",), True, False, False, "softmax_kl", "ce", False
        ),
        HeadSpec(
            "qa",
            _SPAN,
            (TEACHER_START_LOGITS, TEACHER_END_LOGITS),
            ("start_positions", "end_positions"),
            False,
            False,
            True,
            "softmax_kl",
            "span_ce",
        ),
        HeadSpec(
            "mlm", _LOGITS, (TEACHER_LOGITS,), ("labels",), True, False, False, "softmax_kl", "ce", False
        ),
        HeadSpec(
            "causal", _LOGITS, (TEACHER_LOGITS,), ("labels",), True, True, False, "softmax_kl", "ce", False
        ),
        # A model class hf-kd does not recognise: treated like a sequence classifier, token-level when its
        # labels are (B, L).
        HeadSpec("generic", _LOGITS, (TEACHER_LOGITS,), ("labels",), False, False, False, "softmax_kl", "ce"),
    )
}
# Everything a batch carries for the loss rather than for the model's forward, and the same in a dataset (where
# Trainer's collator still renames label / label_ids to labels): never passed to a teacher.
TARGET_KEYS = (*dict.fromkeys(k for h in HEADS.values() for k in h.target_keys), UNLABELED_KEY)
TARGET_COLUMNS = (*TARGET_KEYS, "label", "label_ids")
TOKEN_LEVEL_TASKS = tuple(name for name, h in HEADS.items() if h.token_level and h.name != "qa")


def _base(model: nn.Module) -> nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft model


def infer_task(model: nn.Module) -> str:
    """The model's head class: sequence, token, qa, mlm, causal or generic (from its class name)."""
    name = type(_base(model)).__name__
    for suffix, task in (
        ("ForSequenceClassification", "sequence"),
        ("ForTokenClassification", "token"),
        ("ForQuestionAnswering", "qa"),
        ("ForMaskedLM", "mlm"),
        ("ForPreTraining", "mlm"),
        ("ForCausalLM", "causal"),
    ):
        if name.endswith(suffix):
            return task
    return "generic"


def infer_head(model: nn.Module) -> HeadSpec:
    """The table row for `model`: its head class, refined by `problem_type` for sequence classifiers.

    Like transformers, `num_labels == 1` means regression unless `problem_type` says otherwise; multi-label
    classification must be asked for with `problem_type="multi_label_classification"`.
    """
    task = infer_task(model)
    if task == "sequence":
        config = getattr(_base(model), "config", None)
        problem = getattr(config, "problem_type", None)
        if problem == "regression" or (problem is None and getattr(config, "num_labels", 2) == 1):
            return HEADS["regression"]
        if problem == "multi_label_classification":
            return HEADS["multi_label"]
    return HEADS[task]


def _first_tensor(batch: dict[str, Any]) -> torch.Tensor:
    ids = batch.get("input_ids")
    return ids if ids is not None else next(v for v in batch.values() if torch.is_tensor(v))


def is_token_level(head: HeadSpec, batch: dict[str, Any]) -> bool:
    labels = batch.get("labels")
    return head.token_level or (head.name == "generic" and labels is not None and labels.dim() >= 2)


def kd_mask_and_counts(
    head: HeadSpec, batch: dict[str, Any], kd_positions: str = "labelled"
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(KD mask, item counts) of one batch, from its inputs and targets alone.

    The KD mask is None for sequence-level heads (every example counts once) and a (B, L) bool tensor for
    token-level heads: the labelled positions when `kd_positions="labelled"` and the batch has labels (not for
    causal LM, whose labels are the inputs themselves), else the non-padding positions. The KD count is that
    mask's sum, or the number of examples.

    Counts are int64 on the batch's device, (examples, labelled items, KD items, non-padding tokens).
    """
    ids = _first_tensor(batch)
    device = ids.device
    batch_size = ids.shape[0]
    attention = batch.get("attention_mask")
    labels = batch.get("labels")
    token_level = is_token_level(head, batch)

    unlabeled = batch.get(UNLABELED_KEY)  # (B,) rows of a transfer set: no label, KD on every real token
    mask: torch.Tensor | None = None
    if token_level:
        if kd_positions == "labelled" and labels is not None and not head.causal_shift:
            mask = labels.ne(-100)
            if unlabeled is not None:
                real = attention.bool() if attention is not None else torch.ones_like(mask)
                mask = mask | (unlabeled.to(device)[:, None] & real)
        elif attention is not None:
            mask = attention.bool()
        else:
            mask = torch.ones(ids.shape[:2], dtype=torch.bool, device=device)

    if attention is not None:
        tokens = attention.sum()
    else:
        tokens = torch.tensor(ids.numel() if ids.dim() > 1 else batch_size, device=device)
    if not head.labels_per_example or (token_level and head.name == "generic"):
        counted = labels[..., 1:] if (labels is not None and head.causal_shift) else labels
        labelled = counted.ne(-100).sum() if counted is not None else torch.tensor(0, device=device)
    elif head.name in ("sequence", "generic") and labels is not None:
        labelled = labels.ne(-100).sum()
    elif unlabeled is not None:  # regression, multi-label: one hard item per labelled example
        labelled = (~unlabeled.to(device)).sum()
    else:  # regression, multi-label, QA: one hard item per example
        labelled = torch.tensor(batch_size, device=device)
    kd = mask.sum() if mask is not None else torch.tensor(batch_size, device=device)
    counts = torch.stack(
        [torch.as_tensor(v, device=device).reshape(()).long() for v in (batch_size, labelled, kd, tokens)]
    )
    return mask, counts


def mask_padding(logits: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Span logits at padding positions get -inf, so neither distribution puts mass there."""
    if attention_mask is None:
        return logits
    return logits.float().masked_fill(~attention_mask.bool(), float("-inf"))
