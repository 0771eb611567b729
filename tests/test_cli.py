"""The `hf-kd` command: `distill` end to end from the command line, help, and clear errors."""

from __future__ import annotations

import csv
import importlib.util
import os
import subprocess
import sys

import pytest
import torch
import yaml

from hf_kd import cli

WORDS = {
    "neg": ["bad", "awful", "poor", "sad", "broken"],
    "neu": ["table", "chair", "paper", "stone", "window"],
    "pos": ["good", "great", "happy", "fine", "nice"],
}
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _run_cli(*args: str, cwd: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.run(
        [sys.executable, "-m", "hf_kd.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=600,
    )


@pytest.fixture
def tiny_assets(tmp_path):
    """A tiny BERT teacher with a word-level tokenizer, and train/validation/test csv files."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    vocab = SPECIAL + [w for words in WORDS.values() for w in words]
    vocab_file = tmp_path / "vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(vocab=str(vocab_file), do_lower_case=True)
    labels = list(WORDS)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=3,
        id2label=dict(enumerate(labels)),
        label2id={n: i for i, n in enumerate(labels)},
    )
    teacher_dir = tmp_path / "teacher"
    BertForSequenceClassification(config).save_pretrained(teacher_dir)
    tokenizer.save_pretrained(teacher_dir)

    g = torch.Generator().manual_seed(0)
    files = {}
    for split, n in (("train", 24), ("validation", 9), ("test", 9)):
        path = tmp_path / f"{split}.csv"
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["sentence", "sentiment"])
            for i in range(n):
                label = labels[i % 3]
                idx = torch.randint(0, 5, (4,), generator=g).tolist()
                writer.writerow([" ".join(WORDS[label][j] for j in idx), label])
        files[split] = str(path)
    return {"teacher": str(teacher_dir), "files": files, "tmp": tmp_path}


@pytest.mark.slow
def test_distill_end_to_end_from_yaml_with_flag_override(tiny_assets):
    from transformers import AutoModelForSequenceClassification

    tmp = tiny_assets["tmp"]
    out = tmp / "student"
    config = {
        "teacher_model_name_or_path": tiny_assets["teacher"],
        "student_layers": 1,
        "train_file": tiny_assets["files"]["train"],
        "validation_file": tiny_assets["files"]["validation"],
        "test_file": tiny_assets["files"]["test"],
        "text_column": "sentence",
        "label_column": "sentiment",
        "max_length": 16,
        "output_dir": str(out),
        "num_train_epochs": 2,
        "per_device_train_batch_size": 8,
        "learning_rate": "1e-3",  # YAML 1.1 reads 1e-3 as a string; the parser converts it
        "alpha": 0.5,
        "temperature": 2.0,
        "hidden_weight": 1.0,
        "save_strategy": "no",
        "report_to": "none",
        "use_cpu": True,
        "seed": 1,
    }
    config_file = tmp / "run.yaml"
    config_file.write_text(yaml.safe_dump(config))

    result = _run_cli("distill", "--config", str(config_file), "--alpha", "0.8")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    student, info = AutoModelForSequenceClassification.from_pretrained(str(out), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert student.config.num_hidden_layers == 1
    assert student.config.id2label == {0: "neg", 1: "neu", 2: "pos"}
    assert os.path.isfile(out / "tokenizer.json") or os.path.isfile(out / "vocab.txt")

    # The flag overrides the YAML value; the YAML values the flag did not touch are kept.
    args = torch.load(out / "training_args.bin", weights_only=False)
    assert args.alpha == 0.8
    assert args.learning_rate == pytest.approx(1e-3)
    assert args.hidden_weight == 1.0

    # Training changed the student: its one layer started as a copy of the teacher's last layer (make_student's
    # uniform choice for 2 -> 1), and it no longer equals it.
    teacher = AutoModelForSequenceClassification.from_pretrained(tiny_assets["teacher"])
    copied_from = student.config.hf_kd_teacher_layers[0]
    t = teacher.bert.encoder.layer[copied_from - 1].attention.self.query.weight
    s = student.bert.encoder.layer[0].attention.self.query.weight
    assert t.shape == s.shape and not torch.allclose(t, s)

    # Evaluation ran on validation and test, and the metric scripts produced accuracy and macro F1.
    import json

    test_metrics = json.loads((out / "test_results.json").read_text())
    assert 0.0 <= test_metrics["test_accuracy"] <= 1.0 and "test_f1" in test_metrics
    assert "eval_loss_kd" in json.loads((out / "eval_results.json").read_text())

    if importlib.util.find_spec("hf_kd.model_card") is not None:
        card = (out / "README.md").read_text()
        assert "0.8" in card  # the recipe's alpha, as overridden
    else:
        assert "model card skipped" in result.stderr


def test_help_lists_subcommands():
    result = _run_cli("--help")
    assert result.returncode == 0
    for command in ("distill", "demo", "push", "report", "tune"):
        assert command in result.stdout


def test_distill_help_shows_every_group_of_fields(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["distill", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in (
        "--teacher_model_name_or_path",
        "--train_file",
        "--temperature",
        "--alpha",
        "--learning_rate",
        "--config",
    ):
        assert flag in text


def test_missing_config_file_is_a_clear_error(tmp_path, capsys):
    missing = str(tmp_path / "nope.yaml")
    assert cli.main(["distill", "--config", missing]) == 2
    err = capsys.readouterr().err
    assert missing in err and "no such file" in err


def test_unknown_yaml_field_is_named(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("alpah: 0.5\noutput_dir: x\n")
    assert cli.main(["distill", "--config", str(path)]) == 2
    assert "alpah" in capsys.readouterr().err


def test_bad_flag_exits_nonzero_with_message(capsys):
    assert cli.main(["distill", "--not_a_field", "1"]) == 2
    assert "--not_a_field" in capsys.readouterr().err


def test_out_of_range_value_names_the_value(capsys):
    assert cli.main(["distill", "--alpha", "1.5"]) == 2
    assert "alpha=1.5" in capsys.readouterr().err


def test_missing_training_file_is_a_clear_error(tiny_assets, tmp_path, capsys):
    missing = str(tmp_path / "train.csv")
    code = cli.main(
        [
            "distill",
            "--teacher_model_name_or_path",
            tiny_assets["teacher"],
            "--student_layers",
            "1",
            "--train_file",
            missing,
            "--output_dir",
            str(tmp_path / "o"),
            "--report_to",
            "none",
        ]
    )
    assert code == 2
    assert missing in capsys.readouterr().err


def test_missing_plugin_module_gives_a_message_not_a_traceback(monkeypatch, capsys):
    monkeypatch.setitem(
        cli.PLUGIN_COMMANDS,
        "tune",
        ("help", "hf_kd._no_such_module", "add_tune_arguments", "run_tune_command"),
    )
    assert cli.main(["tune", "--trials", "3"]) == 2
    err = capsys.readouterr().err
    assert "hf-kd tune is not available" in err and "Traceback" not in err


def test_unknown_command_is_rejected(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["distil"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
