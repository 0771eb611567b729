"""Distillation between models with different tokenizers (an MPNet or RoBERTa teacher, a BERT student).

Each text is tokenized twice: the student's ids stay in `input_ids` / `attention_mask` / `token_type_ids`, the
teacher's go to `teacher_input_ids` / `teacher_attention_mask` / `teacher_token_type_ids`. The collator pads both
(each with its own tokenizer's pad id), the trainer feeds the teacher its own columns, and `cache_teacher_outputs`
reads them too.

Only sequence-level heads (classification, regression, multi-label) can be distilled this way: their outputs
belong to the example, not to a token. Token-level terms compare position with position, and two tokenizations
have no common positions, so hidden-state, attention and embedding matching and token-level heads are refused;
`pooled_weight` matches one vector per example instead (the first token's or the mean of the last hidden layer,
through a learned projection).

    data = prepare_dataset(raw, student_tokenizer, teacher_tokenizer, text_column="text", max_length=128)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, train_dataset=data["train"],
                                  processing_class=student_tokenizer, teacher_tokenizer=teacher_tokenizer, ...)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

TEACHER_PREFIX = "teacher_"
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
TEACHER_INPUT_COLUMNS = tuple(TEACHER_PREFIX + n for n in INPUT_NAMES)


def has_teacher_inputs(columns: Any) -> bool:
    """Whether a batch or a dataset's column list carries the teacher's own tokenization."""
    return columns is not None and TEACHER_PREFIX + "input_ids" in columns


def teacher_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """The teacher's own inputs of a batch, under the names its forward takes."""
    return {n: batch[TEACHER_PREFIX + n] for n in INPUT_NAMES if TEACHER_PREFIX + n in batch}


def teacher_view(dataset: Any) -> Any:
    """The dataset as the teacher reads it: its own columns under the plain input names (for caching)."""
    mine = [c for c in TEACHER_INPUT_COLUMNS if c in dataset.column_names]
    view = dataset.select_columns(mine)
    return view.rename_columns({c: c[len(TEACHER_PREFIX) :] for c in mine})


def prepare_dataset(
    dataset: Any,
    tokenizer: Any,
    teacher_tokenizer: Any = None,
    text_column: str = "text",
    text_pair_column: str | None = None,
    max_length: int = 128,
    label_column: str | None = "label",
) -> Any:
    """Tokenize `text_column` (and `text_pair_column`) for the student and, when given, for the teacher.

    Works on a `Dataset` or a `DatasetDict`. The student's columns are `input_ids`, `attention_mask` (and
    `token_type_ids`); the teacher's are prefixed with `teacher_`. `label_column` becomes `labels` when present;
    every other column is dropped. Rows are truncated to `max_length` and padded later, per batch.
    """
    splits = dataset.values() if hasattr(dataset, "values") else [dataset]
    columns = next(iter(splits)).column_names
    for name in (text_column, text_pair_column):
        if name is not None and name not in columns:
            raise ValueError(
                f"the dataset has no column {name!r} (it has {columns}): pass text_column=/text_pair_column= "
                "naming the text to tokenize"
            )

    def encode(batch: dict[str, list[Any]]) -> dict[str, Any]:
        texts = (batch[text_column],) + ((batch[text_pair_column],) if text_pair_column else ())
        out = dict(tokenizer(*texts, truncation=True, max_length=max_length))
        if teacher_tokenizer is not None:
            theirs = teacher_tokenizer(*texts, truncation=True, max_length=max_length)
            out.update({TEACHER_PREFIX + k: v for k, v in theirs.items() if k in INPUT_NAMES})
        return out

    keep = label_column if label_column in columns else None
    encoded = dataset.map(
        encode, batched=True, remove_columns=[c for c in columns if c != keep], desc="Tokenizing"
    )
    if keep is not None and keep != "labels":
        encoded = encoded.rename_column(keep, "labels")
    return encoded


class CrossTokenizerCollator:
    """Wrap a collator so that batches also carry the teacher's columns, padded with the teacher's tokenizer.

    The `teacher_*` columns are taken out of each example, the rest goes through `inner`, and the teacher's go
    through `teacher_tokenizer.pad` (right padding with its own pad id) and come back under their prefixed names.
    """

    def __init__(self, inner: Callable[[list[dict[str, Any]]], Any], teacher_tokenizer: Any = None) -> None:
        self.inner = inner
        self.teacher_tokenizer = teacher_tokenizer

    def __call__(self, features: list[dict[str, Any]]) -> Any:
        features = [dict(f) for f in features]
        names = [c for c in TEACHER_INPUT_COLUMNS if c in features[0]]
        theirs = [{c[len(TEACHER_PREFIX) :]: f.pop(c) for c in names} for f in features]
        batch = self.inner(features)
        if names:
            padded = self._pad(theirs)
            for name, value in padded.items():
                batch[TEACHER_PREFIX + name] = value
        return batch

    def _pad(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if self.teacher_tokenizer is not None:
            return dict(self.teacher_tokenizer.pad(rows, padding=True, return_tensors="pt"))
        # Without the teacher's tokenizer: right padding with 0, which the attention mask rules out.
        length = max(len(r["input_ids"]) for r in rows)
        out = {}
        for name in rows[0]:
            out[name] = torch.tensor([list(r[name]) + [0] * (length - len(r[name])) for r in rows])
        return out
