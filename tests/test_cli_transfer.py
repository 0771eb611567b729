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
