"""hf-kd distill with a transfer set (--unlabeled_file, --unlabeled_fraction) and with a student whose tokenizer
differs from the teacher's (each model then reads its own ids)."""

from __future__ import annotations

import json
import os

import cli_assets as A
import pytest

from hf_kd import cli


def _distill(*args: str) -> int:
    return cli.main(["distill", "--student_layers", "1", *A.QUICK, *args])


def _recipe(out) -> dict:
    with open(os.path.join(out, "hf_kd_card.json")) as f:
        return json.load(f)["recipe"]


@pytest.mark.slow
def test_a_fraction_of_the_training_file_becomes_the_transfer_set(tmp_path):
    teacher = A.save_teacher(str(tmp_path / "teacher"), "BertForSequenceClassification", A.SENTIMENTS)
    train = A.write_csv(str(tmp_path / "train.csv"), ["sentence", "label"], A.sentiment_rows(40, 0))
    out = str(tmp_path / "student")
    args = ["--teacher_model_name_or_path", teacher, "--train_file", train, "--output_dir", out]
    assert _distill(*args, "--unlabeled_fraction", "0.5", "--validation_size", "0.2") == 0
    recipe = _recipe(out)
    # 40 rows: 20 keep their labels (then 4 of them are held out for validation), 20 are the transfer set.
    assert recipe["unlabeled_examples"] == 20 and recipe["unlabeled_ratio"] == 4.0  # the measured default


@pytest.mark.slow
def test_an_unlabelled_text_file_is_the_transfer_set(tmp_path):
    teacher = A.save_teacher(str(tmp_path / "teacher"), "BertForSequenceClassification", A.SENTIMENTS)
    train = A.write_csv(str(tmp_path / "train.csv"), ["text", "label"], A.sentiment_rows(24, 0))
    unlabelled = A.text_lines(str(tmp_path / "more.txt"), 30, seed=1)
    out = str(tmp_path / "student")
    code = _distill(
        "--teacher_model_name_or_path", teacher, "--train_file", train, "--unlabeled_file", unlabelled,
        "--unlabeled_ratio", "2", "--output_dir", out,
    )  # fmt: skip
    assert code == 0
    assert _recipe(out)["unlabeled_examples"] == 30 and _recipe(out)["unlabeled_ratio"] == 2.0


@pytest.mark.slow
def test_a_student_with_its_own_tokenizer_distils_across_tokenizers(tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification, BertConfig, BertTokenizerFast

    teacher = A.save_teacher(str(tmp_path / "teacher"), "BertForSequenceClassification", A.SENTIMENTS)
    # A student vocabulary in another order, so the same word has other ids.
    folder = tmp_path / "student_start"
    folder.mkdir()
    vocab = A.SPECIAL + list(reversed(A.FILLER + [w for ws in A.WORDS.values() for w in ws]))
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(vocab=str(folder / "vocab.txt"), do_lower_case=True)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab), hidden_size=24, num_hidden_layers=1, num_attention_heads=4, intermediate_size=48,
        num_labels=3, id2label=dict(enumerate(A.SENTIMENTS)), label2id={n: i for i, n in enumerate(A.SENTIMENTS)},
    )  # fmt: skip
    AutoModelForSequenceClassification.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    train = A.write_csv(str(tmp_path / "train.csv"), ["sentence", "label"], A.sentiment_rows(24, 0))
    out = str(tmp_path / "student")
    code = cli.main(
        ["distill", *A.QUICK, "--teacher_model_name_or_path", teacher, "--model_name_or_path", str(folder),
         "--train_file", train, "--output_dir", out, "--pooled_weight", "1.0"]
    )  # fmt: skip
    assert code == 0
    recipe = _recipe(out)
    assert recipe["cross_tokenizer"] is True and recipe["pooled_weight"] == 1.0
    # The saved student keeps its own tokenizer.
    assert BertTokenizerFast.from_pretrained(out)("good")["input_ids"] == tokenizer("good")["input_ids"]


def test_the_labelled_share_keeps_every_class_in_its_proportion():
    from collections import Counter

    from datasets import Dataset

    # 60 / 30 / 10 examples of three classes, labels as strings (a CSV file's), shuffled.
    labels = ["sport"] * 60 + ["tech"] * 30 + ["politics"] * 10
    order = list(range(100))
    __import__("random").Random(0).shuffle(order)
    rows = Dataset.from_dict({"text": [f"article {i}" for i in order], "label": [labels[i] for i in order]})
    for seed in range(5):
        kept, hidden = cli._stratified_split(rows, 0.9, seed, None)
        assert Counter(kept["label"]) == {"sport": 6, "tech": 3, "politics": 1}
        # The rows themselves, labels untouched, each on exactly one side.
        assert sorted(list(kept["text"]) + list(hidden["text"])) == sorted(rows["text"])
        assert set(kept.column_names) == {"text", "label"} and kept.features["label"].dtype == "string"


def test_labels_that_cannot_be_stratified_get_a_plain_seeded_split():
    from datasets import Dataset

    scores = Dataset.from_dict({"text": [str(i) for i in range(20)], "score": [i / 20 for i in range(20)]})
    kept, hidden = cli._stratified_split(scores, 0.5, 3, None)
    plain = scores.train_test_split(test_size=0.5, seed=3)
    assert list(kept["text"]) == list(plain["train"]["text"])
    assert list(hidden["text"]) == list(plain["test"]["text"])
    # A class with one example cannot be on both sides: a plain split too.
    single = Dataset.from_dict({"text": [str(i) for i in range(11)], "label": [0] * 10 + [1]})
    kept, hidden = cli._stratified_split(single, 0.5, 3, None)
    plain = single.train_test_split(test_size=0.5, seed=3)
    assert list(kept["text"]) == list(plain["train"]["text"])
