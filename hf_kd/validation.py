"""Checks run when a DistillationTrainer is built, before any training step.

Each check raises `DistillationConfigError` (a `ValueError`) whose message names the offending value and the
way out, so a mistake costs seconds, not the hours of a run that would have trained a wrong student.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from typing import Any

from torch import nn

logger = logging.getLogger(__name__)


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


def _check_label2id(config: Any, role: str) -> None:
    """A config's label2id must be the inverse of its id2label: metrics, pipelines and the Hub read label2id."""
    id2label = getattr(config, "id2label", None) or {}
    label2id = getattr(config, "label2id", None) or {}
    if not id2label or not label2id:
        return
    expected = {name: int(i) for i, name in id2label.items()}
    given = {name: int(i) for name, i in label2id.items()}
    if given != expected:
        raise DistillationConfigError(
            f"the {role}'s label2id {given} disagrees with its id2label {dict(sorted(id2label.items()))}: the "
            f"{role} would report one class under another's name; set label2id={expected} (the inverse of "
            "id2label) in its config"
        )


def check_label_spaces(student: nn.Module, teacher: nn.Module, teacher_name: str = "teacher") -> None:
    """Same number of labels and the same id2label order (when both name their labels)."""
    s_cfg, t_cfg = _config(student), _config(teacher)
    if s_cfg is None or t_cfg is None:
        return
    _check_label2id(s_cfg, "student")
    _check_label2id(t_cfg, teacher_name)
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
    for name, module in student.named_modules():
        if module is teacher:
            raise DistillationConfigError(
                f"the teacher is a submodule of the student (student.{name}): the optimizer builds its groups from "
                "student.parameters(), so the teacher would be trained too. Keep the teacher outside the student "
                "(del student." + name + ") and pass it only as teacher_model"
            )
    shared = {id(p) for p in student.parameters()} & {id(p) for p in teacher.parameters()}
    if shared:
        raise DistillationConfigError(
            f"teacher and student share {len(shared)} parameter tensors (tied weights or one model built from "
            "the other's modules): the student's updates would change the teacher. Give the student its own "
            "copy of the weights (copy.deepcopy)"
        )


# ---- checks that need more than the two models: tokenizers, optimizer, data ------------------------------

# Fixed strings for the tokenizer spot check: plain words, casing, digits, punctuation, accents, a rare word.
TOKENIZER_PROBES = (
    "The quick brown fox jumps over the lazy dog.",
    "Knowledge distillation: 3 students, 1 teacher!",
    "Naïve café owners in Zürich don't tokenize alike.",
)


def check_tokenizers(
    student_tokenizer: Any, teacher_tokenizer: Any, probes: Sequence[str] = TOKENIZER_PROBES
) -> None:
    """Teacher and student read the same input_ids, so both tokenizers must map text to the same ids.

    Compares the ids of a few fixed strings; skipped when either tokenizer is missing or is not callable on text
    (an image processor, for example).
    """
    if student_tokenizer is None or teacher_tokenizer is None or student_tokenizer is teacher_tokenizer:
        return
    if not (callable(student_tokenizer) and callable(teacher_tokenizer)):
        return
    for text in probes:
        try:
            s_ids = list(student_tokenizer(text)["input_ids"])
            t_ids = list(teacher_tokenizer(text)["input_ids"])
        except Exception:  # noqa: BLE001 -- not a text tokenizer (an image or audio processor): nothing to compare
            return
        if s_ids != t_ids:
            raise DistillationConfigError(
                f"the student's and the teacher's tokenizers disagree on {text!r}: student ids {s_ids[:12]}, "
                f"teacher ids {t_ids[:12]}. Both models read the same input_ids, so the teacher would see other "
                "tokens than the student: use the teacher's tokenizer for the student (hf_kd.make_student builds "
                "such a student), or cache the teacher's logits on its own tokenization"
            )


def _accepts(model: nn.Module, argument: str) -> bool:
    target = getattr(model, "module", model)
    try:
        params = inspect.signature(target.forward).parameters
    except (TypeError, ValueError):
        return True
    return argument in params or any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params.values())


def check_intermediate_outputs(model: nn.Module, role: str, hidden: bool, attention: bool) -> None:
    """Hidden-state and attention losses need a forward that returns them and a config that counts layers."""
    wanted = [
        (hidden, "output_hidden_states", "hidden_weight/embedding_weight"),
        (attention, "output_attentions", "attention_weight"),
    ]
    for needed, argument, weights in wanted:
        if needed and not _accepts(model, argument):
            raise DistillationConfigError(
                f"{weights} > 0 needs the {role}'s hidden states or attentions, but {type(model).__name__}.forward "
                f"takes no {argument} argument: set {weights} to 0 (distil logits only), or use a transformers "
                "model that returns them"
            )
    config = _config(model)
    if (hidden or attention) and not any(
        getattr(config, n, None) is not None for n in ("num_hidden_layers", "n_layers", "num_layers")
    ):
        raise DistillationConfigError(
            f"intermediate-layer losses need the {role}'s layer count, but {type(model).__name__} has no "
            "num_hidden_layers in its config: set hidden_weight, attention_weight and embedding_weight to 0, or "
            "give the model a config with num_hidden_layers"
        )


def check_optimizer_excludes_teacher(optimizer: Any, teachers: Sequence[nn.Module]) -> None:
    """An optimizer passed through `optimizers=(opt, sched)` must not hold the teacher's parameters."""
    if optimizer is None:
        return
    held = {id(p) for group in getattr(optimizer, "param_groups", []) for p in group.get("params", [])}
    for i, teacher in enumerate(teachers):
        n = sum(1 for p in teacher.parameters() if id(p) in held)
        if n:
            name = "teacher" if len(teachers) == 1 else f"teacher {i}"
            raise DistillationConfigError(
                f"the optimizer passed in optimizers=(optimizer, scheduler) holds {n} parameter tensors of the "
                f"{name}: its steps (weight decay included) would change the teacher. Build the optimizer from "
                "the student's parameters only, e.g. torch.optim.AdamW(student.parameters())"
            )


def position_limit(model: nn.Module) -> int | None:
    """Longest input a model with a learned absolute position table can take, or None when unbounded.

    Read from the position-embedding table itself, so rotary/relative models (no table) are not limited, and
    RoBERTa-style tables that start counting after the padding index give the usable length.
    """
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if isinstance(module, nn.Embedding) and leaf in ("position_embeddings", "wpe", "embed_positions"):
            offset = module.padding_idx + 1 if module.padding_idx is not None else 0
            # OPT-style learned tables carry a fixed offset of 2 in the module itself.
            offset = max(offset, int(getattr(module, "offset", 0) or 0))
            return module.num_embeddings - offset
    return None


def _arrow_column(dataset: Any, name: str) -> Any:
    """The pyarrow column of a `datasets.Dataset`, with its indices mapping applied, or None."""
    table = getattr(getattr(dataset, "data", None), "table", None)
    if table is None or name not in getattr(table, "column_names", ()):
        return None
    column = table.column(name)
    indices = getattr(dataset, "_indices", None)
    if indices is not None:
        column = column.take(indices.column(0))
    return column


def input_stats(dataset: Any) -> tuple[int, int] | None:
    """(longest input_ids, largest token id) of a `datasets.Dataset`, read from Arrow without a Python loop."""
    column = _arrow_column(dataset, "input_ids")
    if column is None or len(column) == 0:
        return None
    import pyarrow as pa
    import pyarrow.compute as pc

    if not (pa.types.is_list(column.type) or pa.types.is_large_list(column.type)):
        return None
    longest = pc.max(pc.list_value_length(column)).as_py() or 0
    largest = pc.max(pc.list_flatten(column)).as_py()
    return int(longest), int(largest) if largest is not None else -1


def check_inputs_fit(
    dataset: Any,
    models: Sequence[tuple[str, nn.Module]],
    tokenizer: Any = None,
    max_length: int | None = None,
) -> None:
    """Token ids inside every model's vocabulary and lengths within every model's position table.

    The data is checked when it is a `datasets.Dataset` with an input_ids column (its longest row and largest
    id, both read from Arrow). An id or a position past a table would otherwise fail deep inside an embedding
    lookup ("index out of range in self") at the first batch that holds it, maybe hours into a run.
    """
    stats = input_stats(dataset)
    for role, model in models:
        limit = position_limit(model)
        vocab = getattr(_config(model), "vocab_size", None)
        if stats is not None:
            longest, largest = stats
            if limit is not None and longest > limit:
                raise DistillationConfigError(
                    f"the training data holds input_ids of length {longest}, but the {role} "
                    f"({type(model).__name__}) has position embeddings for {limit} tokens: tokenize with "
                    f"truncation=True, max_length={limit} (or a model with a longer position table)"
                )
            if vocab is not None and largest >= vocab:
                raise DistillationConfigError(
                    f"the training data holds token id {largest}, but the {role}'s vocabulary has {vocab} "
                    f"tokens (ids 0..{vocab - 1}): teacher and student read the same input_ids, so both need "
                    "the tokenizer the data was made with; resize the embeddings or build the student from the "
                    "teacher (hf_kd.make_student)"
                )
        if limit is None:
            continue
        configured = [("max_length", max_length)]
        tok_max = getattr(tokenizer, "model_max_length", None)
        if isinstance(tok_max, int) and tok_max < 1_000_000:  # transformers' "no limit" sentinel is ~1e30
            configured.append(("the tokenizer's model_max_length", tok_max))
        for what, value in configured:
            if value is not None and value > limit and stats is None:
                # Without the data in hand, a longer configured length is only a risk, not a fact.
                logger.warning(
                    "%s=%d exceeds the %s's position limit of %d tokens: longer inputs will fail in the "
                    "embedding lookup; tokenize with max_length<=%d.",
                    what,
                    value,
                    role,
                    limit,
                    limit,
                )


def check_cached_logits(dataset: Any, student: nn.Module, task: str, samples: int = 8) -> None:
    """Token-aligned cached teacher outputs must cover each example's real tokens, position for position.

    `hf_kd.cache.check_cache_fits` checks the class count against the student; this adds the sequence axis: a
    cache made on another tokenization, padding or truncation has rows of other lengths, and the collator would
    then put teacher logits at the wrong positions. Checked on `samples` evenly spaced rows, read from Arrow.
    """
    from .teacher import TEACHER_END_LOGITS, TEACHER_LOGITS, TEACHER_START_LOGITS

    aligned = [TEACHER_START_LOGITS, TEACHER_END_LOGITS]
    if task in TOKEN_LEVEL_TASKS:
        aligned.append(TEACHER_LOGITS)
    ids = _arrow_column(dataset, "input_ids")
    if ids is None or len(ids) == 0:
        return
    mask = _arrow_column(dataset, "attention_mask")
    n = len(ids)
    rows = sorted({round(k * (n - 1) / max(samples - 1, 1)) for k in range(min(samples, n))})
    for name in aligned:
        column = _arrow_column(dataset, name)
        if column is None:
            continue
        for row in rows:
            cached = column[row].as_py()
            # The cache stores the rows of real tokens only (attention_mask 1); padding is not stored.
            expected = sum(mask[row].as_py()) if mask is not None else len(ids[row].as_py())
            if cached is not None and len(cached) != expected:
                raise DistillationConfigError(
                    f"cached {name} of example {row} cover {len(cached)} positions but the example has "
                    f"{expected} tokens: the cache was made on another tokenization, padding or truncation of "
                    "the data; recompute it with hf_kd.cache_teacher_outputs(teacher, dataset) on this dataset"
                )


def check_dataset_label_names(dataset: Any, student: nn.Module) -> None:
    """A `ClassLabel` column encodes class i as its i-th name; the student's id2label must say the same."""
    features = getattr(dataset, "features", None)
    s_names = _label_names(_config(student))
    if not features or not s_names or _is_default_label_names(s_names):
        return
    for column in ("label", "labels"):
        names = getattr(features.get(column), "names", None)  # only a ClassLabel has names
        if names and list(names) != s_names:
            raise DistillationConfigError(
                f"the training data's {column!r} column encodes the classes as {list(names)} but the student's "
                f"id2label is {s_names}: the student would learn class {names[0]!r} under the name "
                f"{s_names[0]!r}. Build the student (and teacher) with id2label={dict(enumerate(names))}, or "
                f"re-encode the column with dataset.align_labels_with_mapping(label2id, {column!r})"
            )


def check_setup(
    student: nn.Module,
    teachers: Sequence[nn.Module],
    args: Any,
    train_dataset: Any,
    task: str,
    student_tokenizer: Any = None,
    teacher_tokenizer: Any = None,
    optimizer: Any = None,
) -> None:
    """Every construction-time check that needs more than a teacher/student pair; called by the trainer."""
    for teacher in teachers:
        t_tok = teacher_tokenizer if teacher_tokenizer is not None else getattr(teacher, "tokenizer", None)
        check_tokenizers(student_tokenizer, t_tok)
    if teachers and getattr(args, "uses_intermediate_layers", False):
        hidden = args.hidden_weight > 0 or args.embedding_weight > 0
        attention = args.attention_weight > 0
        check_intermediate_outputs(student, "student", hidden, attention)
        check_intermediate_outputs(teachers[0], "teacher", hidden, attention)
    check_optimizer_excludes_teacher(optimizer, teachers)
    models = [("student", student)] + [
        ("teacher" if len(teachers) == 1 else f"teacher {i}", t) for i, t in enumerate(teachers)
    ]
    check_inputs_fit(train_dataset, models, student_tokenizer, getattr(args, "max_length", None))
    check_cached_logits(train_dataset, student, task)
    check_dataset_label_names(train_dataset, student)
