"""Checks run when a DistillationTrainer is built, before any training step.

Each check raises `DistillationConfigError` (a `ValueError`) whose message names the offending value and the
way out, so a mistake costs seconds, not the hours of a run that would have trained a wrong student.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from .heads import TOKEN_LEVEL_TASKS, infer_task  # noqa: F401  (the head table owns them; re-exported)

logger = logging.getLogger(__name__)


class DistillationConfigError(ValueError):
    """A teacher/student/data combination that cannot be distilled as configured."""


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
    extremes = input_extremes(dataset)
    if extremes is None:
        return None
    return extremes["longest"][0], extremes["largest"][0]


# Rows of a dataset without an Arrow table (a list, a torch Dataset) read by the data checks: all of them up to this
# many, else this many evenly spaced.
SAMPLED_ROWS = 2048


def sampled_rows(dataset: Any, limit: int | None = None) -> list[int]:
    """Indices of the rows of a sized, indexable dataset that the data checks read (at most `limit`, by default
    `SAMPLED_ROWS`); [] when it is neither."""
    limit = SAMPLED_ROWS if limit is None else limit
    if dataset is None or not hasattr(dataset, "__getitem__"):
        return []
    try:
        n = len(dataset)
    except TypeError:  # an iterable dataset: nothing to index
        return []
    if n <= limit:
        return list(range(n))
    return sorted({round(k * (n - 1) / (limit - 1)) for k in range(limit)})


def _flat_ints(value: Any) -> list[int] | None:
    """The integers of a scalar, list, numpy array or tensor, flattened; None for anything else (floats included)."""
    if hasattr(value, "tolist"):  # a tensor or a numpy array
        value = value.tolist()
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return [value]
    if isinstance(value, (list, tuple)):
        out: list[int] = []
        for item in value:
            flat = _flat_ints(item)
            if flat is None:
                return None
            out += flat
        return out
    return None


def _row(dataset: Any, index: int) -> Mapping[str, Any] | None:
    try:
        row = dataset[index]
    except Exception:  # noqa: BLE001 -- not indexable by position: the sampled checks do not apply
        return None
    return row if isinstance(row, Mapping) else None


def input_extremes(dataset: Any) -> dict[str, Any] | None:
    """{"longest", "largest", "smallest"}: (value, row) of the input_ids lengths and token ids, and "complete":
    whether every row was read.

    Read from Arrow for a `datasets.Dataset` (every row, no Python loop), else from `sampled_rows` of a list or a
    torch Dataset whose rows are mappings with input_ids. None when there is nothing to read.
    """
    column = _arrow_column(dataset, "input_ids")
    if column is not None:
        import pyarrow as pa
        import pyarrow.compute as pc

        if len(column) == 0 or not (pa.types.is_list(column.type) or pa.types.is_large_list(column.type)):
            return None
        lengths = pc.list_value_length(column)
        longest = pc.max(lengths).as_py() or 0
        out: dict[str, Any] = {
            "longest": (int(longest), int(pc.index(lengths, longest).as_py())),
            "complete": True,
        }
        flat = pc.list_flatten(column)
        if len(flat) == 0:
            return {**out, "largest": (-1, 0), "smallest": (0, 0)}
        parents = pc.list_parent_indices(column)
        for key, value in (("largest", pc.max(flat).as_py()), ("smallest", pc.min(flat).as_py())):
            out[key] = (int(value), int(parents[pc.index(flat, value).as_py()].as_py()))
        return out
    found: dict[str, Any] = {}
    rows = sampled_rows(dataset)
    for index in rows:
        row = _row(dataset, index)
        if row is None or "input_ids" not in row:
            return None
        value = row["input_ids"]
        ids = _flat_ints(value)
        if ids is None:
            return None
        length = value.shape[-1] if hasattr(value, "shape") else len(value)
        if length > found.get("longest", (-1, 0))[0]:
            found["longest"] = (int(length), index)
        if ids and max(ids) > found.get("largest", (-1, 0))[0]:
            found["largest"] = (max(ids), index)
        if ids and min(ids) < found.get("smallest", (0, 0))[0]:
            found["smallest"] = (min(ids), index)
    if "longest" not in found:
        return None
    found.setdefault("largest", (-1, 0))
    found.setdefault("smallest", (0, 0))
    found["complete"] = len(rows) == len(dataset)
    return found


def check_inputs_fit(
    dataset: Any,
    models: Sequence[tuple[str, nn.Module]],
    tokenizer: Any = None,
    max_length: int | None = None,
    what: str = "the training data",
) -> None:
    """Token ids inside every model's vocabulary and lengths within every model's position table.

    The data is checked when it has input_ids: a `datasets.Dataset` in full (its longest row and its smallest and
    largest ids, read from Arrow), a list or torch Dataset on `sampled_rows`. An id or a position past a table would
    otherwise fail deep inside an embedding lookup ("index out of range in self") at the first batch that holds
    it, maybe hours into a run. `what` names the dataset in the message.
    """
    extremes = input_extremes(dataset)
    for role, model in models:
        limit = position_limit(model)
        vocab = getattr(_config(model), "vocab_size", None)
        if extremes is not None:
            (longest, long_row), (largest, large_row) = extremes["longest"], extremes["largest"]
            smallest, small_row = extremes["smallest"]
            if limit is not None and longest > limit:
                raise DistillationConfigError(
                    f"{what} holds input_ids of length {longest}, but the {role} ({type(model).__name__}) has "
                    f"position embeddings for {limit} tokens (first at row {long_row}): tokenize with "
                    f"truncation=True, max_length={limit} (or a model with a longer position table)"
                )
            if vocab is not None and largest >= vocab:
                raise DistillationConfigError(
                    f"{what} holds token id {largest}, but the {role}'s vocabulary has {vocab} tokens (ids "
                    f"0..{vocab - 1}; first at row {large_row}): teacher and student read the same input_ids, so both need "
                    "the tokenizer the data was made with; resize the embeddings or build the student from the "
                    "teacher (hf_kd.make_student)"
                )
            if smallest < 0:
                raise DistillationConfigError(
                    f"{what} holds token id {smallest} (row {small_row}) in input_ids: token ids are >= 0 (padding "
                    "is the tokenizer's pad id, not -100, which only labels use); re-tokenize the data"
                )
        if limit is None:
            continue
        configured = [("max_length", max_length)]
        tok_max = getattr(tokenizer, "model_max_length", None)
        if isinstance(tok_max, int) and tok_max < 1_000_000:  # transformers' "no limit" sentinel is ~1e30
            configured.append(("the tokenizer's model_max_length", tok_max))
        for setting, value in configured:
            if value is not None and value > limit and not (extremes or {}).get("complete"):
                # Without all the data in hand, a longer configured length is only a risk, not a fact.
                logger.warning(
                    "%s=%d exceeds the %s's position limit of %d tokens: longer inputs will fail in the "
                    "embedding lookup; tokenize with max_length<=%d.",
                    setting,
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


def check_dataset_label_names(dataset: Any, student: nn.Module, what: str = "the training data") -> None:
    """A `ClassLabel` column encodes class i as its i-th name; the student's id2label must say the same."""
    features = getattr(dataset, "features", None)
    s_names = _label_names(_config(student))
    if not features or not s_names or _is_default_label_names(s_names):
        return
    for column in ("label", "labels"):
        names = getattr(features.get(column), "names", None)  # only a ClassLabel has names
        if names and list(names) != s_names:
            raise DistillationConfigError(
                f"{what}'s {column!r} column encodes the classes as {list(names)} but the student's "
                f"id2label is {s_names}: the student would learn class {names[0]!r} under the name "
                f"{s_names[0]!r}. Build the student (and teacher) with id2label={dict(enumerate(names))}, or "
                f"re-encode the column with dataset.align_labels_with_mapping(label2id, {column!r})"
            )


IGNORE_INDEX = -100
LABEL_COLUMNS = ("labels", "label", "label_ids")


def label_range(student: nn.Module, task: str) -> tuple[int, str] | None:
    """(number of valid label ids, what they are) for the student's head, or None when labels are not class ids
    (regression, multi-label, question answering, a generic model)."""
    config = _config(student)
    if task in ("mlm", "causal"):
        vocab = getattr(config, "vocab_size", None)
        return (int(vocab), "vocabulary ids") if vocab else None
    if task not in ("sequence", "token"):
        return None
    n = getattr(config, "num_labels", None)
    if (
        not n
        or n < 2
        or getattr(config, "problem_type", None) in ("regression", "multi_label_classification")
    ):
        return None
    names = _label_names(config)
    shown = f" {names}" if names and not _is_default_label_names(names) else ""
    return int(n), f"classes{shown}"


def _label_column_values(dataset: Any, column: str) -> tuple[Any, Any] | None:
    """(flat pyarrow integer values, their row of each) of a label column read from Arrow, or None."""
    values = _arrow_column(dataset, column)
    if values is None or len(values) == 0:
        return None
    import pyarrow as pa
    import pyarrow.compute as pc

    rows = None
    if pa.types.is_list(values.type) or pa.types.is_large_list(values.type):
        rows = pc.list_parent_indices(values)
        values = pc.list_flatten(values)
    if not pa.types.is_integer(values.type):
        return None
    if rows is None:
        rows = pa.array(range(len(values)))
    return values, rows


def check_label_range(dataset: Any, student: nn.Module, task: str, what: str = "the training data") -> None:
    """Every label a valid id for the student's head (0..n-1, or -100 to leave an item out of the loss).

    Read from Arrow for a `datasets.Dataset` (every row), else from `sampled_rows`. A label of 7 with 3 classes,
    or -1 where only -100 is ignored, would otherwise fail with an IndexError steps into the run.
    """
    spec = label_range(student, task)
    if spec is None or dataset is None:
        return
    n, kind = spec
    columns = dataset_columns(dataset)
    bad: tuple[str, int, int] | None = None
    if columns is not None and _arrow_column(dataset, columns[0]) is not None:
        import pyarrow.compute as pc

        for column in [c for c in LABEL_COLUMNS if c in columns]:
            read = _label_column_values(dataset, column)
            if read is None:
                continue
            values, rows = read
            wrong = pc.and_(
                pc.not_equal(values, IGNORE_INDEX),
                pc.or_(pc.less(values, 0), pc.greater_equal(values, n)),
            )
            first = pc.index(wrong, True).as_py()
            if first is not None and first >= 0:
                bad = (column, int(values[first].as_py()), int(rows[first].as_py()))
                break
    else:
        for index in sampled_rows(dataset):
            row = _row(dataset, index)
            if row is None:
                return
            for column in [c for c in LABEL_COLUMNS if c in row]:
                for value in _flat_ints(row[column]) or []:
                    if value != IGNORE_INDEX and not 0 <= value < n:
                        bad = (column, value, index)
                        break
                if bad:
                    break
            if bad:
                break
    if bad is None:
        return
    column, value, row_index = bad
    hint = (
        f"; {value} is not the ignore index: mark an example or token to leave out of the loss with -100"
        if value < 0
        else f", or give the student (and teacher) {value + 1} or more labels if the data is right"
    )
    raise DistillationConfigError(
        f"{what} holds label {value} in column {column!r} at row {row_index}, but the student's {task} head has "
        f"{n} {kind} (ids 0..{n - 1}, and -100 for an ignored item): re-encode the labels with the student's "
        f"label2id{hint}"
    )


def check_teacher_available(dataset: Any, teachers: Sequence[nn.Module], what: str) -> None:
    """With no live teacher, every dataset the trainer reads must carry cached teacher outputs."""
    if teachers or dataset is None:
        return
    from .teacher import TEACHER_COLUMNS

    columns = dataset_columns(dataset)
    if columns is None:
        rows = sampled_rows(dataset, limit=1)
        row = _row(dataset, rows[0]) if rows else None
        columns = list(row) if row is not None else None
    if columns is not None and not any(c in columns for c in TEACHER_COLUMNS):
        raise DistillationConfigError(
            f"{what} carries no cached teacher outputs (columns: {columns}) and no teacher_model was given, so "
            "the KD term cannot be computed on it: cache the teacher on it too (hf_kd.cache_teacher_outputs("
            "teacher, dataset)), or pass teacher_model=..."
        )


def _eval_datasets(eval_dataset: Any) -> list[tuple[str, Any]]:
    if eval_dataset is None:
        return []
    if isinstance(eval_dataset, Mapping):
        return [(f"the eval data {name!r}", data) for name, data in eval_dataset.items()]
    return [("the eval data", eval_dataset)]


def check_setup(
    student: nn.Module,
    teachers: Sequence[nn.Module],
    args: Any,
    train_dataset: Any,
    task: str,
    student_tokenizer: Any = None,
    teacher_tokenizer: Any = None,
    optimizer: Any = None,
    eval_dataset: Any = None,
) -> None:
    """Every construction-time check that needs more than a teacher/student pair; called by the trainer.

    The data checks (lengths, token ids, labels, cached outputs, teacher availability) run on the training data and
    on every eval dataset alike (`eval_dataset` may be a dict of them), so a bad row fails here, before step 1,
    not at the first evaluation."""
    from .cross_tokenizer import has_teacher_inputs, teacher_view

    # With the teacher's own tokenization in the data, the two tokenizers may differ: that is the point.
    for teacher in [] if has_teacher_inputs(dataset_columns(train_dataset)) else teachers:
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
    datasets = [("the training data", train_dataset)] + _eval_datasets(eval_dataset)
    for what, dataset in datasets:
        if dataset is None:
            continue
        if what != "the training data":  # the trainer itself refuses training data without a teacher
            check_teacher_available(dataset, teachers, what)
        if has_teacher_inputs(dataset_columns(dataset)) and hasattr(dataset, "select_columns"):
            check_inputs_fit(dataset, models[:1], student_tokenizer, None, what)
            check_inputs_fit(
                teacher_view(dataset), models[1:], teacher_tokenizer, None, f"{what} (teacher's ids)"
            )
        else:
            check_inputs_fit(dataset, models, student_tokenizer, None, what)
        check_label_range(dataset, student, task, what)
        check_cached_logits(dataset, student, task)
        check_dataset_label_names(dataset, student, what)


def check_teacher_sources(
    teachers: Sequence[nn.Module], uses_cache: bool, args: Any, train_dataset: Any
) -> None:
    """Where the teacher's targets come from: live teachers, a cache, or both, and whether they fit the loss."""
    if not teachers and not uses_cache:
        raise DistillationConfigError(
            "teacher_model is missing: pass teacher_model=<a trained model> (or a list of teachers), or a "
            "train_dataset carrying cached teacher logits from hf_kd.cache_teacher_outputs"
        )
    if args.uses_intermediate_layers and not teachers:
        raise DistillationConfigError(
            "hidden_weight/attention_weight/embedding_weight > 0 need a live teacher (cached logits hold "
            "no hidden states or attentions): pass teacher_model=..., or set those weights to 0 to distil "
            "from the cached logits alone"
        )
    if args.uses_intermediate_layers and len(teachers) > 1:
        raise DistillationConfigError(
            f"intermediate-layer losses match one teacher's layers, but {len(teachers)} teachers were "
            "given: distil logits from the ensemble (hidden/attention/embedding weights 0), or pass one"
        )
    if uses_cache and len(teachers) > 1:
        # A cached batch takes its cached logits over a live forward, so the ensemble would be silently ignored.
        raise DistillationConfigError(
            f"train_dataset carries cached teacher outputs (from one teacher), but {len(teachers)} teachers "
            "were given and the cache would replace the ensemble: remove the teacher columns "
            "(dataset.remove_columns([...])) to distil from the live ensemble, or pass a single teacher_model"
        )
    if uses_cache and teachers and args.teacher_cache_check:
        from .cache import read_cache_metadata, teacher_fingerprint

        meta = read_cache_metadata(train_dataset)
        if meta and meta.get("teacher_fingerprint") not in (None, teacher_fingerprint(teachers[0])):
            raise DistillationConfigError(
                "the cached teacher logits in train_dataset were made by a different teacher (weights "
                f"fingerprint {meta.get('teacher_fingerprint')} != {teacher_fingerprint(teachers[0])}): "
                "recompute them with hf_kd.cache_teacher_outputs(teacher, dataset), or pass "
                "teacher_cache_check=False if the difference is intended"
            )


def check_trainer_setup(trainer: Any, teachers: Sequence[nn.Module]) -> None:
    """Every check a DistillationTrainer runs at construction, before anything is placed or trained."""
    from .teacher import warn_if_autocast_is_emulated

    args = trainer.args
    warn_if_autocast_is_emulated(args)
    check_teacher_sources(teachers, trainer.uses_cache, args, trainer.train_dataset)
    for i, teacher in enumerate(teachers):
        name = "teacher" if len(teachers) == 1 else f"teacher {i}"
        check_teacher_is_separate(trainer.model, teacher)
        check_label_spaces(trainer.model, teacher, name)
        check_vocabularies(trainer.model, teacher, trainer.task)
    alpha_min = min(args.alpha, args.alpha_final if args.alpha_schedule != "constant" else args.alpha)
    check_labels_present(trainer.train_dataset, args.alpha, trainer.label_names, alpha_min)
    check_setup(
        trainer.model,
        teachers,
        args,
        trainer.train_dataset,
        trainer.task,
        trainer.processing_class,
        trainer.teacher_tokenizer,
        trainer.optimizer,
        eval_dataset=trainer.eval_dataset,
    )
