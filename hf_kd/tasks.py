"""The tasks `hf-kd distill` and `hf-kd finetune` run, and the data preparation of each.

| task                   | model class                        | data                                            |
|------------------------|------------------------------------|-------------------------------------------------|
| `text-classification`  | `AutoModelForSequenceClassification` | a text column (and a pair column); a label     |
| `token-classification` | `AutoModelForTokenClassification`  | words and one tag per word                      |
| `question-answering`   | `AutoModelForQuestionAnswering`    | SQuAD format: question, context, answers        |
| `fill-mask`            | `AutoModelForMaskedLM`             | raw text (a .txt file, or a text column)        |

Text classification covers single-label classification, regression (`num_labels=1` or
`problem_type="regression"` in the teacher's config) and multi-label classification
(`problem_type="multi_label_classification"`), as transformers' heads do.

`prepare_task_data` turns raw splits into model inputs, the collator and the metrics of each split. The teacher's
config is the authority on labels: the data's labels are encoded with the teacher's `label2id`, so label i always
means the class the teacher's logit i stands for, and the student inherits the teacher's label names.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .cross_tokenizer import INPUT_NAMES as TEACHER_INPUT_NAMES

IGNORE_INDEX = -100


class TaskDataError(ValueError):
    """Data that does not fit the task or the teacher's labels: the message names the value and the way out."""


@dataclass(frozen=True)
class TaskSpec:
    name: str
    auto_class: str
    heads: tuple[str, ...]  # hf_kd.heads.infer_task names this task's models have
    summary: str


TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in (
        TaskSpec(
            "text-classification",
            "AutoModelForSequenceClassification",
            ("sequence",),
            "one label (or a score, or several labels) per text or text pair",
        ),
        TaskSpec("token-classification", "AutoModelForTokenClassification", ("token",), "one tag per word"),
        TaskSpec(
            "question-answering", "AutoModelForQuestionAnswering", ("qa",), "an answer span in a context"
        ),
        TaskSpec("fill-mask", "AutoModelForMaskedLM", ("mlm",), "masked-token prediction on raw text"),
    )
}
# Model class name suffix -> task (the teacher's `architectures` entry says which head its weights hold).
ARCHITECTURE_TASKS = {
    "ForSequenceClassification": "text-classification",
    "ForTokenClassification": "token-classification",
    "ForQuestionAnswering": "question-answering",
    "ForMaskedLM": "fill-mask",
    "ForPreTraining": "fill-mask",
}
# Column names tried, in order, when the data flags leave a column unset.
TEXT_COLUMNS = ("text", "sentence", "content", "review", "tweet")
PAIR_COLUMNS = (
    ("sentence1", "sentence2"),
    ("premise", "hypothesis"),
    ("question1", "question2"),
    ("question", "sentence"),
    ("text1", "text2"),
)
LABEL_COLUMNS = ("label", "labels", "score")
TOKEN_COLUMNS = ("tokens", "words")
TAG_COLUMNS = ("ner_tags", "tags", "labels", "label", "pos_tags")


def architecture_task(architectures: Sequence[str] | None) -> str | None:
    """The task of a config's first architecture (`BertForTokenClassification` -> token-classification)."""
    for arch in architectures or []:
        for suffix, task in ARCHITECTURE_TASKS.items():
            if arch.endswith(suffix):
                return task
    return None


def auto_model_class(task: str) -> Any:
    import transformers

    return getattr(transformers, TASKS[task].auto_class)


def classification_kind(config: Any) -> str:
    """sequence, regression or multi_label for a sequence classifier's config, as transformers reads it."""
    problem = getattr(config, "problem_type", None)
    if problem == "regression" or (problem is None and getattr(config, "num_labels", 2) == 1):
        return "regression"
    if problem == "multi_label_classification":
        return "multi_label"
    return "sequence"


# ---- columns -------------------------------------------------------------------------------------------------


def _pick(
    columns: Sequence[str], given: str | None, candidates: Sequence[str], what: str, flag: str, source: str
) -> str:
    if given:
        if given not in columns:
            raise TaskDataError(
                f"{flag}={given!r} is not a column of {source}; its columns are {list(columns)}"
            )
        return given
    for name in candidates:
        if name in columns:
            return name
    raise TaskDataError(
        f"{source} has no {what} column among {list(candidates)}; its columns are {list(columns)}: pass {flag} NAME"
    )


def text_columns(columns: Sequence[str], data_args: Any, source: str) -> tuple[str, str | None]:
    """(text column, pair column or None) for text classification."""
    text, pair = data_args.text_column, data_args.text_pair_column
    if not text:
        for first, second in PAIR_COLUMNS:
            if first in columns and second in columns:
                return first, second
    text = _pick(columns, text, TEXT_COLUMNS, "text", "--text_column", source)
    if pair:
        pair = _pick(columns, pair, (), "pair", "--text_pair_column", source)
    return text, pair


# ---- labels --------------------------------------------------------------------------------------------------


def _names(config: Any) -> list[str]:
    id2label = getattr(config, "id2label", None) or {}
    return [str(id2label[i]) for i in sorted(id2label, key=int)]


def _default_names(names: Sequence[str]) -> bool:
    return all(name == f"LABEL_{i}" for i, name in enumerate(names))


def _is_int(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, np.integer)):
        return True
    return isinstance(value, float) and value.is_integer()


@dataclass
class LabelEncoder:
    """Maps the data's class values (names or integers) to the teacher's class ids."""

    names: list[str]  # the teacher's class names, by id
    labels_are_ids: bool = False
    column: str = "label"
    source: str = "the data"
    class_label_names: list[str] | None = None  # a ClassLabel column's names: its integers mean these
    _by_name: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._by_name = {name: i for i, name in enumerate(self.names)}

    def _shown(self) -> str:
        return str(dict(enumerate(self.names)))

    def __call__(self, value: Any) -> int:
        if value is None or (isinstance(value, float) and np.isnan(value)):
            raise TaskDataError(
                f"{self.source} has an example with no value in column {self.column!r}: fill it in or drop the row"
            )
        if self.class_label_names is not None and _is_int(value) and int(value) >= 0:
            value = self.class_label_names[int(value)]
        if isinstance(value, str):
            if value in self._by_name:
                return self._by_name[value]
            if _default_names(self.names) and value.strip().lstrip("-").isdigit():
                return self._id(int(value))
            raise TaskDataError(
                f"{self.source} has the label {value!r} in column {self.column!r}, which the teacher does not know: "
                f"its classes are {self._shown()}. Fine-tune the teacher on this label set (hf-kd finetune), or "
                "fix the labels"
            )
        if _is_int(value):
            value = int(value)
            if _default_names(self.names) or self.labels_are_ids:
                return self._id(value)
            if str(value) in self._by_name:  # names that are the integers' strings: map by name
                return self._by_name[str(value)]
            raise TaskDataError(
                f"{self.source} labels are integers (such as {value}) in column {self.column!r} but the teacher "
                f"names its classes {self._shown()}: write the class names in the column, or pass "
                f"--labels_are_ids true if {value} means {self.names[value] if 0 <= value < len(self.names) else '?'!r}, "
                "as in the teacher's id2label"
            )
        raise TaskDataError(
            f"{self.source} has the label {value!r} ({type(value).__name__}) in column {self.column!r}: use class "
            f"names or integer ids of the teacher's classes {self._shown()}"
        )

    def _id(self, value: int) -> int:
        if value == IGNORE_INDEX:
            return value
        if not 0 <= value < len(self.names):
            raise TaskDataError(
                f"{self.source} holds label {value} in column {self.column!r} but the teacher has {len(self.names)} "
                f"classes (ids 0..{len(self.names) - 1}): re-encode the labels, or fine-tune the teacher on this "
                "label set (hf-kd finetune)"
            )
        return value


def _class_label_names(feature: Any) -> list[str] | None:
    """The names of a ClassLabel column (or of a sequence of ClassLabels), else None."""
    inner = getattr(feature, "feature", None)  # datasets.Sequence(ClassLabel)
    if isinstance(feature, list) and feature:  # datasets' List([ClassLabel])
        inner = feature[0]
    names = getattr(feature, "names", None) or getattr(inner, "names", None)
    return list(names) if names else None


def _split_items(value: Any) -> list[Any]:
    """A multi-label or tag cell as a list: lists stay lists, "a,b" / "a b" strings are split."""
    if value is None:
        return []
    if isinstance(value, str):
        separator = "," if "," in value else None
        return [v.strip() for v in value.split(separator) if v.strip()]
    return list(value)


def data_label_names(task: str, kind: str, dsdict: Any, label_column: str) -> list[str]:
    """A label set read off the data, for `hf-kd finetune` (which has no teacher to ask): a ClassLabel's names,
    else the sorted distinct names, or "0".."N-1" for integer labels (so a later distillation maps the integers
    by name)."""
    values: list[Any] = []
    for split in dsdict.values():
        names = _class_label_names(split.features.get(label_column))
        if names:
            return names
        column = split[label_column]
        for v in column:
            values.extend(
                _split_items(v) if (task == "token-classification" or kind == "multi_label") else [v]
            )
    values = [v for v in values if v is not None and v != IGNORE_INDEX and v != -1]
    if not values:
        raise TaskDataError(
            f"column {label_column!r} holds no labels: fill it in, or pass --label_column NAME"
        )
    if all(_is_int(v) for v in values):
        return [str(i) for i in range(int(max(values)) + 1)]
    return sorted({str(v) for v in values})


# ---- preparation ---------------------------------------------------------------------------------------------


@dataclass
class TaskData:
    """Model inputs of each split, and what a Trainer needs to run and score them."""

    task: str
    kind: str  # sequence, regression, multi_label, token, qa, mlm
    datasets: dict[str, Any]
    data_collator: Any
    metrics: dict[str, Callable[[Any], dict[str, float]] | None]  # per split
    preprocess_logits_for_metrics: Callable[[Any, Any], Any] | None = None
    labelled: dict[str, bool] = field(default_factory=dict)  # per split: labels present for scoring

    def compute_metrics(self, split: str) -> Callable[[Any], dict[str, float]] | None:
        return self.metrics.get(split)


def _limit(dsdict: Any, max_train: int | None, max_eval: int | None) -> Any:
    for split in list(dsdict):
        limit = max_train if split == "train" else max_eval
        if limit:
            dsdict[split] = dsdict[split].select(range(min(limit, len(dsdict[split]))))
    return dsdict


def prepare_task_data(
    task: str,
    raw: Any,
    tokenizer: Any,
    config: Any,
    data_args: Any,
    seed: int = 42,
    teacher_tokenizer: Any = None,
) -> TaskData:
    """Tokenise and label every split of `raw` for `task`, with the labels of `config` (the teacher's).
    `seed` fixes the masking of fill-mask batches. `teacher_tokenizer`: text-classification only, the teacher's
    own tokenizer when it differs from the student's (its ids go to `teacher_*` columns)."""
    raw = _limit(raw, data_args.max_train_samples, data_args.max_eval_samples)
    if teacher_tokenizer is not None:
        return _prepare_classification(raw, tokenizer, config, data_args, seed, teacher_tokenizer)
    preparers = {
        "text-classification": _prepare_classification,
        "token-classification": _prepare_tokens,
        "question-answering": _prepare_qa,
        "fill-mask": _prepare_mlm,
    }
    return preparers[task](raw, tokenizer, config, data_args, seed)


def _source(data_args: Any, split: str) -> str:
    path = getattr(data_args, f"{split}_file", None)
    return repr(path) if path else f"the {split} split"


# text classification ------------------------------------------------------------------------------------------


def _prepare_classification(
    raw: Any, tokenizer: Any, config: Any, data_args: Any, seed: int, teacher_tokenizer: Any = None
) -> TaskData:
    kind = classification_kind(config)
    names = _names(config)
    out, labelled = {}, {}
    for split, ds in raw.items():
        source = _source(data_args, split)
        text, pair = text_columns(ds.column_names, data_args, source)
        label = data_args.label_column or next((c for c in LABEL_COLUMNS if c in ds.column_names), None)
        if label is not None and label not in ds.column_names:
            raise TaskDataError(
                f"--label_column={label!r} is not a column of {source}; its columns are {ds.column_names}"
            )
        has_labels = label is not None and not all(
            v is None or v == -1 for v in ds[label][: min(len(ds), 1000)]
        )  # Hub test splits often hide labels as -1
        if not has_labels and split in ("train", "validation"):
            raise TaskDataError(
                f"{source} has no labels (no column among {list(LABEL_COLUMNS)}, or only -1 in it); its columns "
                f"are {ds.column_names}: pass --label_column NAME, or a labelled {split} file"
            )
        labelled[split] = has_labels
        encode = _classification_label(kind, names, ds, label, data_args, source) if has_labels else None

        def tokenize(batch: dict[str, list[Any]], text=text, pair=pair, label=label, encode=encode) -> Any:
            texts = [str(t) if t is not None else "" for t in batch[text]]
            pairs = [str(t) if t is not None else "" for t in batch[pair]] if pair else None
            encoded = tokenizer(texts, pairs, truncation=True, max_length=data_args.max_length)
            if teacher_tokenizer is not None:
                theirs = teacher_tokenizer(texts, pairs, truncation=True, max_length=data_args.max_length)
                encoded.update({f"teacher_{k}": v for k, v in theirs.items() if k in TEACHER_INPUT_NAMES})
            if encode is not None:
                encoded["labels"] = [encode(v) for v in batch[label]]
            return encoded

        out[split] = ds.map(
            tokenize, batched=True, remove_columns=ds.column_names, desc=f"Tokenising {split}"
        )
    metric = {
        "sequence": _accuracy_f1,
        "regression": _regression_metrics,
        "multi_label": _multi_label_metrics,
    }[kind]
    from transformers import DataCollatorWithPadding

    return TaskData(
        "text-classification",
        kind,
        out,
        DataCollatorWithPadding(tokenizer),
        {split: metric for split in out},
        labelled=labelled,
    )


def _classification_label(
    kind: str, names: list[str], ds: Any, label: str, data_args: Any, source: str
) -> Callable[[Any], Any]:
    if kind == "regression":

        def score(value: Any) -> float:
            try:
                return float(value)
            except (TypeError, ValueError):
                raise TaskDataError(
                    f"{source} has {value!r} in column {label!r}, but the teacher is a regression model "
                    "(num_labels=1): its labels must be numbers"
                ) from None

        return score
    encoder = LabelEncoder(
        names, data_args.labels_are_ids, label, source, _class_label_names(ds.features.get(label))
    )
    if kind == "multi_label":

        def multi_hot(value: Any) -> list[float]:
            row = [0.0] * len(names)
            for item in _split_items(value):
                row[encoder(item)] = 1.0
            return row

        return multi_hot
    return encoder


def _logits(eval_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    predictions, labels = eval_pred[0], eval_pred[1]
    if isinstance(predictions, tuple):
        predictions = predictions[0]
    return np.asarray(predictions), np.asarray(labels)


def _accuracy_f1(eval_pred: Any) -> dict[str, float]:
    from .metrics import compute_classification_metrics

    return compute_classification_metrics(eval_pred)


def _regression_metrics(eval_pred: Any) -> dict[str, float]:
    """Mean squared error, and Pearson and Spearman correlations (the STS-B scores)."""
    from scipy.stats import pearsonr, spearmanr

    predictions, labels = _logits(eval_pred)
    predictions, labels = predictions.reshape(-1).astype(np.float64), labels.reshape(-1).astype(np.float64)
    metrics = {"mse": float(np.mean((predictions - labels) ** 2))}
    if len(labels) > 1 and np.std(predictions) > 0 and np.std(labels) > 0:
        metrics["pearson"] = float(pearsonr(predictions, labels)[0])
        metrics["spearmanr"] = float(spearmanr(predictions, labels)[0])
    return metrics


def _multi_label_metrics(eval_pred: Any) -> dict[str, float]:
    """Micro F1 of the labels whose logit is above 0 (probability above 0.5), and the exact-set accuracy."""
    predictions, labels = _logits(eval_pred)
    predicted, gold = predictions > 0, labels > 0.5  # (N, C) each
    tp = float(np.sum(predicted & gold))
    fp, fn = float(np.sum(predicted & ~gold)), float(np.sum(~predicted & gold))
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    return {"f1_micro": f1, "subset_accuracy": float(np.mean(np.all(predicted == gold, axis=1)))}


# token classification -----------------------------------------------------------------------------------------


def _b_to_i(names: list[str]) -> list[int]:
    """For each tag id, the id a later sub-token of the same word gets with label_all_tokens: B-X becomes I-X when
    the teacher has I-X (as in transformers' run_ner), every other tag stays."""
    index = {name: i for i, name in enumerate(names)}
    return [index.get("I-" + name[2:], i) if name.startswith("B-") else i for i, name in enumerate(names)]


def align_word_labels(
    word_ids: Sequence[int | None], word_labels: Sequence[int], later: Sequence[int] | None
) -> list[int]:
    """Word-level tag ids spread over sub-tokens: special tokens get -100; a word's first sub-token gets its tag;
    its other sub-tokens get -100, or (label_all_tokens, `later` given) `later[tag]`."""
    row, previous = [], None
    for word in word_ids:
        if word is None:
            row.append(IGNORE_INDEX)
        elif word != previous:
            row.append(word_labels[word])
        else:
            row.append(later[word_labels[word]] if later is not None else IGNORE_INDEX)
        previous = word
    return row


def _prepare_tokens(raw: Any, tokenizer: Any, config: Any, data_args: Any, seed: int) -> TaskData:
    if not getattr(tokenizer, "is_fast", False):
        raise TaskDataError(
            f"token-classification aligns word labels with the tokenizer's word_ids(), which only fast tokenizers "
            f"have; {type(tokenizer).__name__} is a slow one: save the tokenizer as a fast one (tokenizer.json)"
        )
    names = _names(config)
    later = _b_to_i(names) if data_args.label_all_tokens else None
    out, labelled = {}, {}
    for split, ds in raw.items():
        source = _source(data_args, split)
        words = _pick(ds.column_names, data_args.text_column, TOKEN_COLUMNS, "words", "--text_column", source)
        tags = _pick(ds.column_names, data_args.label_column, TAG_COLUMNS, "tag", "--label_column", source)
        encoder = LabelEncoder(
            names, data_args.labels_are_ids, tags, source, _class_label_names(ds.features.get(tags))
        )
        labelled[split] = True

        def tokenize(
            batch: dict[str, list[Any]], words=words, tags=tags, encoder=encoder, source=source
        ) -> Any:
            sentences = [[str(w) for w in _split_items(s)] for s in batch[words]]
            encoded = tokenizer(
                sentences, is_split_into_words=True, truncation=True, max_length=data_args.max_length
            )
            labels = []
            for i, (sentence, cell) in enumerate(zip(sentences, batch[tags])):
                word_tags = [encoder(t) for t in _split_items(cell)]
                if len(word_tags) != len(sentence):
                    raise TaskDataError(
                        f"{source} has an example with {len(sentence)} words and {len(word_tags)} tags "
                        f"({sentence[:6]}...): give exactly one tag per word"
                    )
                labels.append(align_word_labels(encoded.word_ids(batch_index=i), word_tags, later))
            encoded["labels"] = labels
            return encoded

        out[split] = ds.map(
            tokenize, batched=True, remove_columns=ds.column_names, desc=f"Tokenising {split}"
        )

    def entity_metrics(eval_pred: Any) -> dict[str, float]:
        from .metrics.entities import compute_entity_metrics

        predictions, labels = _logits(eval_pred)
        if predictions.ndim == labels.ndim + 1:
            predictions = predictions.argmax(-1)
        predicted, gold = [], []
        for p_row, l_row in zip(predictions, labels):
            keep = l_row != IGNORE_INDEX
            predicted.append([names[int(i)] for i in p_row[keep]])
            gold.append([names[int(i)] for i in l_row[keep]])
        return compute_entity_metrics(predicted, gold)

    from transformers import DataCollatorForTokenClassification

    return TaskData(
        "token-classification",
        "token",
        out,
        DataCollatorForTokenClassification(tokenizer),
        {split: entity_metrics for split in out},
        preprocess_logits_for_metrics=_argmax,
        labelled=labelled,
    )


def _argmax(logits: Any, labels: Any) -> Any:
    """Keep the argmax, not (B, L, C) logits, across evaluation batches (a vocabulary-sized C fills memory)."""
    if isinstance(logits, tuple):
        logits = logits[0]
    return logits.argmax(-1)


# question answering -------------------------------------------------------------------------------------------


def _answers(row: Mapping[str, Any], data_args: Any) -> tuple[list[str], list[int]]:
    """(texts, character starts) of a row's gold answers: a SQuAD `answers` dict, or answer text/start columns."""
    value = row.get(data_args.answer_column)
    if isinstance(value, Mapping):
        return [str(t) for t in value.get("text", [])], [int(s) for s in value.get("answer_start", [])]
    if "answer_text" in row and "answer_start" in row and row["answer_text"] is not None:
        return [str(row["answer_text"])], [int(row["answer_start"])]
    return [], []


def answer_token_span(
    offsets: Sequence[Sequence[int]], context_tokens: Sequence[int], start_char: int, length: int
) -> tuple[int, int] | None:
    """(first, last) token of the answer at characters [start_char, start_char + length) of the context, among
    `context_tokens` (the window's context positions, in order, with character `offsets`); None when the window
    does not hold the whole answer (the feature then points at the CLS token, as in transformers' run_qa)."""
    end_char = start_char + length
    if offsets[context_tokens[0]][0] > start_char or offsets[context_tokens[-1]][1] < end_char:
        return None
    first = next(i for i in context_tokens if offsets[i][1] > start_char)
    last = max(i for i in context_tokens if offsets[i][0] < end_char)
    return first, last


def _prepare_qa(raw: Any, tokenizer: Any, config: Any, data_args: Any, seed: int) -> TaskData:
    if not getattr(tokenizer, "is_fast", False):
        raise TaskDataError(
            f"question-answering maps answers to tokens through offset mappings, which only fast tokenizers give; "
            f"{type(tokenizer).__name__} is a slow one: save the tokenizer as a fast one (tokenizer.json)"
        )
    question_col, context_col = data_args.question_column, data_args.context_column
    pad_right = getattr(tokenizer, "padding_side", "right") == "right"
    out, metrics, labelled = {}, {}, {}
    for split, ds in raw.items():
        source = _source(data_args, split)
        for col, flag in ((question_col, "--question_column"), (context_col, "--context_column")):
            _pick(ds.column_names, col, (), col, flag, source)
        if data_args.answer_column not in ds.column_names and "answer_text" not in ds.column_names:
            raise TaskDataError(
                f"{source} has no answers: question-answering needs a {data_args.answer_column!r} column "
                "({'text': [...], 'answer_start': [...]}, as in SQuAD json) or answer_text and answer_start "
                f"columns; its columns are {ds.column_names}"
            )
        ids = [str(i) for i in ds["id"]] if "id" in ds.column_names else [str(i) for i in range(len(ds))]
        rows = ds.to_list()
        for k, row in enumerate(rows):
            texts, starts = _answers(row, data_args)
            for text, start in zip(texts, starts):
                if row[context_col][start : start + len(text)] != text:
                    raise TaskDataError(
                        f"{source}, question {ids[k]!r}: answer_start {start} does not point at the answer "
                        f"{text!r} in its context (found {row[context_col][start : start + len(text)]!r}): "
                        "answer_start counts characters of the context from 0"
                    )
        questions = [str(r[question_col]).lstrip() for r in rows]
        contexts = [str(r[context_col]) for r in rows]
        first, second = (questions, contexts) if pad_right else (contexts, questions)
        encoded = tokenizer(
            first,
            second,
            truncation="only_second" if pad_right else "only_first",
            max_length=data_args.max_length,
            stride=data_args.doc_stride,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
        )
        sample_of = encoded.pop("overflow_to_sample_mapping")
        features: dict[str, list[Any]] = {k: list(v) for k, v in encoded.items() if k != "offset_mapping"}
        starts_out, ends_out, offsets, example_ids = [], [], [], []
        context_index = 1 if pad_right else 0
        for f, offset in enumerate(encoded["offset_mapping"]):
            sequence_ids = encoded.sequence_ids(f)
            row = rows[sample_of[f]]
            cls = (
                encoded["input_ids"][f].index(tokenizer.cls_token_id)
                if tokenizer.cls_token_id in encoded["input_ids"][f]
                else 0
            )
            context_tokens = [i for i, s in enumerate(sequence_ids) if s == context_index]
            if not context_tokens:
                raise TaskDataError(
                    f"{source}, question {ids[sample_of[f]]!r}: the question fills the whole "
                    f"{data_args.max_length}-token window, leaving no room for the context: raise --max_seq_length"
                )
            texts, starts = _answers(row, data_args)
            span = answer_token_span(offset, context_tokens, starts[0], len(texts[0])) if texts else None
            start_token, end_token = span if span is not None else (cls, cls)
            starts_out.append(start_token)
            ends_out.append(end_token)
            offsets.append([tuple(o) if s == context_index else None for o, s in zip(offset, sequence_ids)])
            example_ids.append(ids[sample_of[f]])
        features["start_positions"], features["end_positions"] = starts_out, ends_out
        from datasets import Dataset

        out[split] = Dataset.from_dict(features)
        gold = {ids[k]: _answers(r, data_args)[0] for k, r in enumerate(rows)}
        labelled[split] = any(gold.values())
        metrics[split] = _squad_metrics(example_ids, offsets, dict(zip(ids, contexts)), gold, data_args)

    from transformers import DataCollatorWithPadding

    return TaskData(
        "question-answering", "qa", out, DataCollatorWithPadding(tokenizer), metrics, labelled=labelled
    )


def _squad_metrics(
    example_ids: list[str],
    offsets: list[Any],
    contexts: dict[str, str],
    gold: dict[str, list[str]],
    data_args: Any,
) -> Callable[[Any], dict[str, float]]:
    def compute(eval_pred: Any) -> dict[str, float]:
        from .metrics.squad_style import best_answers, compute_squad_metrics

        start_logits, end_logits = eval_pred[0][0], eval_pred[0][1]  # (F, L) each
        predictions = best_answers(
            np.asarray(start_logits),
            np.asarray(end_logits),
            example_ids,
            offsets,
            contexts,
            max_answer_length=data_args.max_answer_length,
        )
        return compute_squad_metrics(predictions, gold)

    return compute


# fill-mask ----------------------------------------------------------------------------------------------------


class MaskingCollator:
    """`DataCollatorForLanguageModeling` over examples that carry a `labels` column.

    The masking collator makes the labels (the original ids at masked positions, -100 elsewhere). The datasets
    still hold the unmasked ids as `labels`, so that the trainer's set-up checks, which read the dataset's columns,
    see a labelled masked-LM task; this collator drops that column before masking.
    """

    def __init__(self, collator: Any) -> None:
        self.collator = collator

    def __call__(self, features: list[dict[str, Any]]) -> Any:
        return self.collator([{k: v for k, v in f.items() if k != "labels"} for f in features])


def _prepare_mlm(raw: Any, tokenizer: Any, config: Any, data_args: Any, seed: int) -> TaskData:
    if tokenizer.mask_token is None:
        raise TaskDataError(
            f"fill-mask needs a tokenizer with a mask token; {type(tokenizer).__name__} has none: use the masked "
            "language model's own tokenizer"
        )
    out = {}
    for split, ds in raw.items():
        text = _pick(
            ds.column_names,
            data_args.text_column,
            TEXT_COLUMNS,
            "text",
            "--text_column",
            _source(data_args, split),
        )

        def tokenize(batch: dict[str, list[Any]], text=text) -> Any:
            lines = [str(t) for t in batch[text] if t is not None and str(t).strip()]
            encoded = tokenizer(
                lines, truncation=True, max_length=data_args.max_length, return_special_tokens_mask=True
            )
            encoded["labels"] = [list(ids) for ids in encoded["input_ids"]]  # replaced by MaskingCollator
            return encoded

        out[split] = ds.map(
            tokenize, batched=True, remove_columns=ds.column_names, desc=f"Tokenising {split}"
        )

    def masked_accuracy(eval_pred: Any) -> dict[str, float]:
        predictions, labels = _logits(eval_pred)
        keep = labels != IGNORE_INDEX
        return {"accuracy": float(np.mean(predictions[keep] == labels[keep])) if keep.any() else 0.0}

    from transformers import DataCollatorForLanguageModeling

    collator = MaskingCollator(
        DataCollatorForLanguageModeling(tokenizer, mlm_probability=data_args.mlm_probability, seed=seed)
    )
    return TaskData(
        "fill-mask",
        "mlm",
        out,
        collator,
        {split: masked_accuracy for split in out},
        preprocess_logits_for_metrics=_argmax,
        labelled={split: True for split in out},
    )
