"""Transfer sets: unlabelled (or augmented) text that only the teacher can label.

Fine-tuning alone can use only the labelled examples; distillation can also learn the teacher's answers on any
in-domain text. `DistillationTrainer(..., unlabeled_dataset=...)` mixes such rows into every training batch:
`unlabeled_ratio` unlabelled examples per labelled one. They take the KD term only (alpha counts as 1 for them),
the labelled rows keep `alpha * KD + (1 - alpha) * hard`.

How rows reach a batch: each item of `TransferSetDataset` bundles one labelled row with its share of unlabelled
rows, so the sampler, `DistributedSampler`, gradient accumulation and resuming all work on bundles as Trainer
expects, and every batch holds the same mix. An epoch covers every unlabelled row once; when there are more
unlabelled rows than `unlabeled_ratio` x labelled rows, the labelled rows are reused within the epoch.
`TransferSetCollator` flattens the bundles, marks the unlabelled rows (`hf_kd_unlabeled`) and gives them
placeholder targets that every hard loss ignores.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

UNLABELED_KEY = "hf_kd_unlabeled"  # (B,) bool: this row has no label and takes the KD term only
TRANSFER_HEADS = ("sequence", "regression", "multi_label", "token", "generic")


class TransferSetDataset(torch.utils.data.Dataset):
    """Bundles of one labelled row and its share of unlabelled rows (see the module docstring)."""

    def __init__(self, labeled: Any, unlabeled: Any, ratio: float = 1.0, seed: int = 0) -> None:
        if len(labeled) == 0 or len(unlabeled) == 0:
            raise ValueError(
                f"a transfer set needs labelled and unlabelled rows, got {len(labeled)} and {len(unlabeled)}"
            )
        if not ratio > 0:
            raise ValueError(
                f"unlabeled_ratio={ratio} must be > 0 (unlabelled examples per labelled example)"
            )
        self.labeled, self.unlabeled, self.ratio = labeled, unlabeled, float(ratio)
        self.length = max(len(labeled), math.ceil(len(unlabeled) / self.ratio))
        # A fixed, seeded order of the unlabelled rows, so bundle i is the same on every process and after a resume.
        self.order = torch.randperm(len(unlabeled), generator=torch.Generator().manual_seed(seed)).tolist()

    def __len__(self) -> int:
        return self.length

    def unlabeled_indices(self, i: int) -> list[int]:
        start, end = math.floor(i * self.ratio), math.floor((i + 1) * self.ratio)
        return [self.order[j % len(self.order)] for j in range(start, end)]

    def __getitem__(self, i: int) -> list[dict[str, Any]]:
        rows = [{**self.labeled[i % len(self.labeled)], UNLABELED_KEY: False}]
        rows += [{**self.unlabeled[j], UNLABELED_KEY: True} for j in self.unlabeled_indices(i)]
        return rows


def _placeholder(label: Any, features: dict[str, Any]) -> Any:
    """A target that the hard loss ignores, shaped like `label`: -100 for class ids, 0 for float targets (masked
    out by the `hf_kd_unlabeled` flag)."""
    if isinstance(label, torch.Tensor):
        label = label.tolist()
    if isinstance(label, (list, tuple)):
        if label and isinstance(label[0], float):
            return [0.0] * len(label)  # multi-label
        return [-100] * len(features["input_ids"])  # one label per token
    return 0.0 if isinstance(label, float) else -100


class TransferSetCollator:
    """Flatten bundles from `TransferSetDataset`, then collate with `inner`; plain rows pass through."""

    def __init__(self, inner: Callable[[list[dict[str, Any]]], Any]) -> None:
        self.inner = inner

    def __call__(self, features: list[Any]) -> Any:
        rows = [dict(r) for f in features for r in (f if isinstance(f, list) else [f])]
        flags = [bool(r.pop(UNLABELED_KEY, False)) for r in rows]
        labelled = next((r for r, unl in zip(rows, flags) if not unl and "labels" in r), None)
        for row, unlabeled in zip(rows, flags):
            if unlabeled and labelled is not None:
                row["labels"] = _placeholder(labelled["labels"], row)
        batch = self.inner(rows)
        batch[UNLABELED_KEY] = torch.tensor(flags)
        return batch


def attach_transfer_set(trainer: Any, unlabeled: Any) -> Any:
    """Make `trainer`'s training data bundles of labelled and unlabelled rows (`unlabeled_ratio` of them per
    labelled one), after the same checks as its other data; returns the unlabelled dataset as checked."""
    import datasets

    from .cross_tokenizer import has_teacher_inputs
    from .teacher import TEACHER_COLUMNS
    from .validation import DistillationConfigError, check_setup, dataset_columns

    head = trainer.distillation_objective.head
    if head.name not in TRANSFER_HEADS:
        raise DistillationConfigError(
            f"a transfer set adds text without labels for the teacher to label, which the {head.name} head "
            f"cannot use that way: transfer sets work with {list(TRANSFER_HEADS)} heads"
        )
    if getattr(trainer.args, "group_by_length", False):
        raise DistillationConfigError("unlabeled_dataset cannot be combined with group_by_length=True")
    columns = dataset_columns(unlabeled) or []
    for name, needed, have in (
        ("cached teacher outputs", trainer.uses_cache, any(c in columns for c in TEACHER_COLUMNS)),
        ("teacher_input_ids", trainer.cross_tokenizer, has_teacher_inputs(columns)),
    ):
        if needed != have:
            raise DistillationConfigError(
                f"train_dataset {'has' if needed else 'has no'} {name} but unlabeled_dataset "
                f"{'has' if have else 'has no'}: prepare both the same way (hf_kd.prepare_dataset, "
                "hf_kd.cache_teacher_outputs)"
            )
    if isinstance(unlabeled, datasets.Dataset):
        unlabeled = unlabeled.remove_columns([c for c in ("label", "labels") if c in columns])
    check_setup(
        trainer.model, trainer.teachers, trainer.args, unlabeled, trainer.task, trainer.processing_class
    )
    checked = unlabeled
    trainer._set_signature_columns_if_needed()
    labeled = trainer.train_dataset
    if isinstance(labeled, datasets.Dataset):
        labeled = trainer._remove_unused_columns(labeled, description="training")
    if isinstance(unlabeled, datasets.Dataset):
        unlabeled = trainer._remove_unused_columns(unlabeled, description="unlabeled")
    trainer.train_dataset = TransferSetDataset(
        labeled, unlabeled, trainer.args.unlabeled_ratio, trainer.args.seed
    )
    trainer.data_collator = TransferSetCollator(trainer.data_collator)
    return checked
