"""Every task runs end to end from the command line on tiny data: the student reloads with the task's
`AutoModelFor...` class and its `pipeline(...)` answers with the teacher's label names.

Tiny BERT teachers are built from configs and saved with a word-level tokenizer (tests/cli_assets.py); a few
optimizer steps each. One run per task goes through a real subprocess (`python -m hf_kd.cli`); the variants of text
classification run in-process through `cli.main`."""

from __future__ import annotations

import json
import os

import cli_assets as A
import pytest

from hf_kd import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "examples", "configs")


def _pipeline(task: str, folder: str):
    from transformers import AutoTokenizer, pipeline

    from hf_kd.tasks import auto_model_class

    model, info = auto_model_class(task).from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    return model, pipeline(task, model=model, tokenizer=AutoTokenizer.from_pretrained(folder), device="cpu")


def _card(out) -> str:
    return (out / "README.md").read_text()


def _check_card_scores_are_test_scores(out, metric: str) -> None:
    """Test-split scores exist, the card labels them test, and its model-index says split test."""
    test = json.loads((out / "test_results.json").read_text())
    assert f"test_{metric}" in test
    card = _card(out)
    assert f"| {metric} (test) |" in card
    assert "type: test" in card or "split: test" in card
    assert "median of 10 timed forward passes" in card
    assert "Latency on cpu, batch size 1," in card


# ---- one subprocess run per task ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_text_classification_from_the_example_config_with_mixed_formats(tmp_path):
    teacher = A.save_teacher(str(tmp_path / "teacher"), "BertForSequenceClassification", A.SENTIMENTS)
    train = A.write_csv(str(tmp_path / "train.csv"), ["sentence", "sentiment"], A.sentiment_rows(24, 0))
    dev = A.write_jsonl(
        str(tmp_path / "dev.jsonl"), [{"sentence": s, "sentiment": lab} for s, lab in A.sentiment_rows(6, 1)]
    )
    test = A.write_csv(str(tmp_path / "test.csv"), ["sentence", "sentiment"], A.sentiment_rows(6, 2))
    out = tmp_path / "student"
    result = A.run_cli(
        "distill",
        "--config",
        os.path.join(CONFIGS, "text_classification.yaml"),
        "--teacher_model_name_or_path",
        teacher,
        "--student_layers",
        "1",
        "--train_file",
        train,
        "--validation_file",
        dev,
        "--test_file",
        test,
        "--text_column_names",
        "sentence",  # one text per example here; the config's pair is the MRPC-style default
        "--label_column",
        "sentiment",
        "--output_dir",
        str(out),
        "--license",
        "apache-2.0",
        *A.QUICK,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    model, classify = _pipeline("text-classification", str(out))
    assert model.config.num_hidden_layers == 1
    scores = classify("good great happy", top_k=None)
    assert {s["label"] for s in scores} == set(A.SENTIMENTS)
    _check_card_scores_are_test_scores(out, "accuracy")
    assert "license: apache-2.0" in _card(out)


@pytest.mark.slow
def test_token_classification_aligns_word_tags_and_scores_entities(tmp_path):
    teacher = A.save_teacher(str(tmp_path / "teacher"), "BertForTokenClassification", A.TAGS)
    train = A.write_jsonl(str(tmp_path / "train.jsonl"), A.tagging_rows(24, 0))
    test = A.write_jsonl(str(tmp_path / "test.jsonl"), A.tagging_rows(8, 1))
    out = tmp_path / "student"
    result = A.run_cli(
        "distill",
        "--teacher_model_name_or_path",
        teacher,
        "--student_layers",
        "1",
        "--train_file",
        train,
        "--test_file",
        test,
        "--label_all_tokens",
        "true",
        "--output_dir",
        str(out),
        *A.QUICK,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    model, tag = _pipeline("token-classification", str(out))
    assert model.config.id2label == dict(enumerate(A.TAGS))
    # Every word gets one of the teacher's tags (the pipeline leaves out "O").
    entities = tag("bad goodness the nice", ignore_labels=[])
    assert entities and {e["entity"] for e in entities} <= set(A.TAGS)
    _check_card_scores_are_test_scores(out, "f1")
    test_metrics = json.loads((out / "test_results.json").read_text())
    assert {"test_precision", "test_recall", "test_f1", "test_accuracy"} <= set(test_metrics)


@pytest.mark.slow
def test_question_answering_on_squad_json(tmp_path):
    teacher = A.save_teacher(str(tmp_path / "teacher"), "BertForQuestionAnswering")
    train = A.squad_json(str(tmp_path / "train.json"), 24, 0)
    test = A.squad_json(str(tmp_path / "test.json"), 8, 1)
    out = tmp_path / "student"
    result = A.run_cli(
        "distill",
        "--teacher_model_name_or_path",
        teacher,
        "--student_layers",
        "1",
        "--train_file",
        train,
        "--test_file",
        test,
        "--output_dir",
        str(out),
        *A.QUICK,
        "--max_seq_length",
        "12",
        "--doc_stride",
        "2",  # contexts longer than a window: several features per question
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    # transformers 5 has no question-answering pipeline: reload the student and read its best span the same way.
    import torch
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    from hf_kd.metrics.squad_style import best_answers

    model, info = AutoModelForQuestionAnswering.from_pretrained(str(out), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    context = "the a good is was"
    encoded = tokenizer("what word is it", context, return_offsets_mapping=True, return_tensors="pt")
    offsets = [
        tuple(o) if s == 1 else None
        for o, s in zip(encoded.pop("offset_mapping")[0].tolist(), encoded.sequence_ids(0))
    ]
    with torch.no_grad():
        output = model(**encoded)
    found = best_answers(
        output.start_logits.numpy(), output.end_logits.numpy(), ["q"], [offsets], {"q": context}
    )
    assert found["q"] and found["q"] in context
    _check_card_scores_are_test_scores(out, "exact_match")


@pytest.mark.slow
def test_fill_mask_general_distillation_on_raw_text(tmp_path):
    teacher = A.save_teacher(str(tmp_path / "teacher"), "BertForMaskedLM")
    train = A.text_lines(str(tmp_path / "corpus.txt"), 40, 0)
    out = tmp_path / "student"
    result = A.run_cli(
        "distill",
        "--config",
        os.path.join(CONFIGS, "fill_mask.yaml"),
        "--teacher_model_name_or_path",
        teacher,
        "--student_layers",
        "1",
        "--train_file",
        train,
        "--output_dir",
        str(out),
        "--save_strategy",
        "no",
        *A.QUICK,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    _, fill = _pipeline("fill-mask", str(out))
    vocab = set((tmp_path / "teacher" / "vocab.txt").read_text().split())
    predictions = fill("good [MASK] table")
    assert predictions and all(p["token_str"].replace(" ", "") in vocab for p in predictions)
    eval_metrics = json.loads((out / "eval_results.json").read_text())
    assert 0.0 <= eval_metrics["eval_accuracy"] <= 1.0 and "eval_loss_kd" in eval_metrics


# ---- text classification variants, in-process ------------------------------------------------------------------


def _distill(*args: str) -> int:
    return cli.main(["distill", "--student_layers", "1", *A.QUICK, *args])  # the test's flags win


@pytest.mark.slow
def test_sentence_pairs_with_run_glue_column_names(tmp_path):
    teacher = A.save_teacher(str(tmp_path / "teacher"), "BertForSequenceClassification", A.NLI)
    train = A.write_csv(str(tmp_path / "train.csv"), ["premise", "hypothesis", "label"], A.pair_rows(24, 0))
    out = tmp_path / "student"
    code = _distill(
        "--teacher_model_name_or_path",
        teacher,
        "--train_file",
        train,
        "--text_column_names",
        "premise,hypothesis",
        "--output_dir",
        str(out),
    )
    assert code == 0
    _, classify = _pipeline("text-classification", str(out))
    scores = classify({"text": "good nice", "text_pair": "bad sad"}, top_k=None)
    assert {s["label"] for s in scores} == set(A.NLI)


@pytest.mark.slow
def test_regression_teacher_distils_scores(tmp_path):
    import random

    teacher = A.save_teacher(str(tmp_path / "teacher"), "BertForSequenceClassification", ["LABEL_0"])
    rng = random.Random(0)
    rows = [[A.sentence(rng, A.SENTIMENTS[i % 3]), round(i % 3 * 2.5 + rng.random(), 2)] for i in range(24)]
    train = A.write_csv(str(tmp_path / "train.csv"), ["sentence", "score"], rows)
    out = tmp_path / "student"
    assert (
        _distill("--teacher_model_name_or_path", teacher, "--train_file", train, "--output_dir", str(out))
        == 0
    )
    model, _ = _pipeline("text-classification", str(out))
    assert model.config.num_labels == 1
    metrics = json.loads((out / "eval_results.json").read_text())
    assert "eval_mse" in metrics and "eval_loss_kd" in metrics


@pytest.mark.slow
def test_multi_label_teacher_distils_label_sets(tmp_path):
    teacher = A.save_teacher(
        str(tmp_path / "teacher"),
        "BertForSequenceClassification",
        A.SENTIMENTS,
        problem_type="multi_label_classification",
    )
    import random

    rng = random.Random(0)
    rows = []
    for i in range(24):
        labels = sorted({A.SENTIMENTS[i % 3], A.SENTIMENTS[(i * 7) % 3]})
        rows.append([" ".join(A.sentence(rng, lab, 2) for lab in labels), ",".join(labels)])
    train = A.write_csv(str(tmp_path / "train.csv"), ["text", "labels"], rows)
    out = tmp_path / "student"
    assert (
        _distill("--teacher_model_name_or_path", teacher, "--train_file", train, "--output_dir", str(out))
        == 0
    )
    model, classify = _pipeline("text-classification", str(out))
    assert model.config.problem_type == "multi_label_classification"
    scores = classify("good bad", top_k=None)
    assert {s["label"] for s in scores} == set(A.SENTIMENTS)
    assert "eval_f1_micro" in json.loads((out / "eval_results.json").read_text())


@pytest.mark.slow
def test_finetune_then_distill_with_integer_labels_mapped_by_name(tmp_path, capsys):
    """The whole path from a pretrained masked LM: distill refuses it, finetune makes a teacher (classes named
    "0", "1", "2" from the integer labels), and distill maps the integers by those names."""
    pretrained = A.save_teacher(str(tmp_path / "pretrained"), "BertForMaskedLM")
    rows = [[s, A.SENTIMENTS.index(lab)] for s, lab in A.sentiment_rows(24, 0)]
    train = A.write_csv(str(tmp_path / "train.csv"), ["sentence", "label"], rows)
    student = tmp_path / "student"
    assert (
        _distill(
            "--teacher_model_name_or_path", pretrained, "--train_file", train, "--output_dir", str(student)
        )
        == 2
    )
    assert "hf-kd finetune" in capsys.readouterr().err and not student.exists()

    teacher = tmp_path / "teacher"
    code = cli.main(
        [
            "finetune",
            "--model_name_or_path",
            pretrained,
            "--task",
            "text-classification",
            "--train_file",
            train,
            "--output_dir",
            str(teacher),
            *A.QUICK,
        ]
    )
    assert code == 0
    assert "hf-kd distill --teacher_model_name_or_path" in capsys.readouterr().out
    assert (
        _distill(
            "--teacher_model_name_or_path", str(teacher), "--train_file", train, "--output_dir", str(student)
        )
        == 0
    )
    _, classify = _pipeline("text-classification", str(student))
    assert {s["label"] for s in classify("good bad table", top_k=None)} == {"0", "1", "2"}


@pytest.mark.slow
def test_restarting_the_same_run_resumes_and_another_run_is_refused(tmp_path, capsys):
    teacher = A.save_teacher(str(tmp_path / "teacher"), "BertForSequenceClassification", A.SENTIMENTS)
    train = A.write_csv(str(tmp_path / "train.csv"), ["sentence", "label"], A.sentiment_rows(32, 0))
    out = tmp_path / "student"
    common = ["--teacher_model_name_or_path", teacher, "--train_file", train, "--output_dir", str(out)]
    saving = ["--save_strategy", "steps", "--save_steps", "2"]
    assert _distill(*common, "--max_steps", "2", *saving) == 0
    assert (out / "checkpoint-2").is_dir()
    capsys.readouterr()
    # The same run with a longer schedule continues from checkpoint-2 rather than starting over.
    assert _distill(*common, "--max_steps", "4", *saving) == 0
    assert f"from {out / 'checkpoint-2'}" in capsys.readouterr().out
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 4 and state["log_history"][0]["step"] > 2
    # Another recipe into the same folder is refused, and leaves it as it was.
    before = sorted(os.listdir(out))
    assert _distill(*common, "--max_steps", "4", *saving, "--alpha", "0.9") == 2
    assert "alpha: 0.5 -> 0.9" in capsys.readouterr().err
    assert sorted(os.listdir(out)) == before


def test_every_example_config_parses(tmp_path):
    for name in sorted(os.listdir(CONFIGS)):
        if name.endswith(".yaml"):
            command = cli.parse_command("distill", ["--config", os.path.join(CONFIGS, name)])
            assert command.model.teacher_model_name_or_path, name
    pair = cli.parse_command("distill", ["--config", os.path.join(CONFIGS, "text_classification.yaml")])
    assert (pair.data.text_column, pair.data.text_pair_column) == ("sentence1", "sentence2")
    assert pair.data.max_length == 128


@pytest.mark.slow
def test_lora_student_from_parquet_is_saved_merged(tmp_path):
    import pandas as pd

    teacher = A.save_teacher(str(tmp_path / "teacher"), "BertForSequenceClassification", A.SENTIMENTS)
    train = str(tmp_path / "train.parquet")
    pd.DataFrame(A.sentiment_rows(24, 0), columns=["text", "label"]).to_parquet(train)
    out = tmp_path / "student"
    code = _distill(
        "--teacher_model_name_or_path",
        teacher,
        "--train_file",
        train,
        "--use_peft",
        "--lora_r",
        "4",
        "--output_dir",
        str(out),
    )
    assert code == 0
    assert not (out / "adapter_config.json").exists()  # a full model, not an adapter
    _, classify = _pipeline("text-classification", str(out))
    assert {s["label"] for s in classify("good bad", top_k=None)} == set(A.SENTIMENTS)
