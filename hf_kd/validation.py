"""Checks run when a DistillationTrainer is built, before any training step.

Each check raises `DistillationConfigError` (a `ValueError`) whose message names the offending value and the
way out, so a mistake costs seconds, not the hours of a run that would have trained a wrong student.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn


class DistillationConfigError(ValueError):
    """A teacher/student/data combination that cannot be distilled as configured."""


TOKEN_LEVEL_TASKS = ("token", "mlm", "causal")


def infer_task(model: nn.Module) -> str:
    """The head type, from the model's class name: sequence, token, qa, mlm, causal or generic."""
    base = model
    if hasattr(model, "get_base_model"):  # a peft model
        base = model.get_base_model()
    name = type(base).__name__
    if name.endswith("ForSequenceClassification"):
        return "sequence"
    if name.endswith("ForTokenClassification"):
        return "token"
    if name.endswith("ForQuestionAnswering"):
        return "qa"
    if name.endswith("ForMaskedLM") or name.endswith("ForPreTraining"):
        return "mlm"
    if name.endswith("ForCausalLM"):
        return "causal"
    return "generic"


def _config(model: nn.Module) -> Any:
    return getattr(model, "config", None)


def _label_names(config: Any) -> list[str] | None:
    id2label = getattr(config, "id2label", None)
    if not id2label:
        return None
    return [id2label[i] for i in sorted(id2label)]


def _is_default_label_names(names: Sequence[str]) -> bool:
    return all(name == f"LABEL_{i}" for i, name in enumerate(names))


def check_label_spaces(student: nn.Module, teacher: nn.Module, teacher_name: str = "teacher") -> None:
    """Same number of labels and the same id2label order (when both name their labels)."""
    s_cfg, t_cfg = _config(student), _config(teacher)
    if s_cfg is None or t_cfg is None:
        return
    s_names, t_names = _label_names(s_cfg), _label_names(t_cfg)
    s_n, t_n = getattr(s_cfg, "num_labels", None), getattr(t_cfg, "num_labels", None)
    if s_n is not None and t_n is not None and s_n != t_n:
        raise DistillationConfigError(
            f"student has {s_n} labels {s_names} but {teacher_name} has {t_n} {t_names}: fine-tune the "
            "teacher on the same label set, or pass matching num_labels and id2label"
        )
    if s_names and t_names and not (_is_default_label_names(s_names) or _is_default_label_names(t_names)):
        if s_names != t_names:
            if sorted(s_names) == sorted(t_names):
                raise DistillationConfigError(
                    f"student and {teacher_name} name the same labels in a different order: student "
                    f"id2label {s_names}, {teacher_name} id2label {t_names}. The KD term compares logits "
                    "index by index, so the student would learn permuted classes: build the student with "
                    f"id2label={dict(enumerate(t_names))} (and the matching label2id), and encode the "
                    "dataset's labels with it"
                )
            raise DistillationConfigError(
                f"student labels {s_names} differ from {teacher_name} labels {t_names}: distil into a student "
                "with the teacher's label set, or fine-tune the teacher on the student's labels"
            )


def check_vocabularies(student: nn.Module, teacher: nn.Module, task: str) -> None:
    """Token-level heads compare distributions over the vocabulary, so the vocabularies must be one."""
    if task not in ("mlm", "causal"):
        return
    s_v = getattr(_config(student), "vocab_size", None)
    t_v = getattr(_config(teacher), "vocab_size", None)
    if s_v is not None and t_v is not None and s_v != t_v:
        raise DistillationConfigError(
            f"student vocabulary has {s_v} tokens but teacher has {t_v}: a {task} KD term compares the two "
            "distributions token by token, so both models must use the same tokenizer; build the student "
            "from the teacher (hf_kd.make_student) or resize its embeddings to the teacher's vocabulary"
        )


def dataset_columns(dataset: Any) -> list[str] | None:
    names = getattr(dataset, "column_names", None)
    if isinstance(names, dict):  # a DatasetDict
        names = next(iter(names.values()), None)
    return list(names) if names is not None else None


def check_labels_present(dataset: Any, alpha: float, label_names: Sequence[str], alpha_min: float) -> None:
    """alpha < 1 gives the hard cross-entropy a weight, which needs labels in the data."""
    if dataset is None or alpha_min >= 1.0:
        return
    columns = dataset_columns(dataset)
    if columns is None:
        return
    accepted = set(label_names) | {"label", "labels", "label_ids"}
    if not accepted & set(columns):
        raise DistillationConfigError(
            f"alpha={alpha} gives the hard cross-entropy weight {1 - alpha:g}, but the training data has no "
            f"label column (columns: {columns}): set alpha=1.0 for pure distillation from the teacher, or add "
            f"a label column named one of {sorted(accepted)}"
        )


def check_teacher_is_separate(student: nn.Module, teacher: nn.Module) -> None:
    if teacher is student:
        raise DistillationConfigError(
            "teacher_model is the same object as the student model: training would update the teacher too. "
            "Load the teacher separately (from_pretrained again, or copy.deepcopy(model))"
        )
    shared = {id(p) for p in student.parameters()} & {id(p) for p in teacher.parameters()}
    if shared:
        raise DistillationConfigError(
            f"teacher and student share {len(shared)} parameter tensors (tied weights or one model built from "
            "the other's modules): the student's updates would change the teacher. Give the student its own "
            "copy of the weights (copy.deepcopy)"
        )
