"""Tuning temperature, alpha and the layer weights with Trainer.hyperparameter_search (optuna)."""

from __future__ import annotations

import pytest
from conftest import tiny_classification_dataset, tiny_model
from transformers import TrainerCallback

from hf_kd import DistillationConfig
from hf_kd.tuning import in_search_space, make_hp_space, parse_search_space, tune_distillation

pytest.importorskip("optuna")


def _args(tmp_out, **kw):
    return DistillationConfig(
        output_dir=tmp_out,
        max_steps=2,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=8,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        **kw,
    )


class RecordLogs(TrainerCallback):
    def __init__(self):
        self.logs: list[dict] = []
        self.settings: list[tuple] = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.settings.append((args.temperature, args.alpha, args.hidden_weight))

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs or {}))


@pytest.mark.slow
def test_two_trial_search_returns_a_best_setting_in_the_space(tmp_out):
    space = {"temperature": [1.0, 2.0, 4.0, 8.0], "alpha": (0.2, 0.9), "hidden_weight": [0.0, 1.0]}
    recorder = RecordLogs()
    best, table = tune_distillation(
        lambda: tiny_model(seed=0),
        tiny_model(seed=1),
        _args(tmp_out),
        tiny_classification_dataset(16),
        tiny_classification_dataset(8, seed=1),
        n_trials=2,
        search_space=space,
        callbacks=[recorder],
    )
    assert set(best.hyperparameters) == {"temperature", "alpha", "hidden_weight"}
    assert in_search_space(best.hyperparameters, space)
    assert 0.0 <= best.objective <= 1.0  # validation accuracy
    rows = table.splitlines()[2:]
    assert len(rows) == 2 and all("COMPLETE" in r for r in rows)
    assert sum("(best)" in r for r in rows) == 1
    # Each trial trained with its own sampled values (set on args by Trainer before training).
    assert len(recorder.settings) == 2
    for temperature, alpha, hidden_weight in recorder.settings:
        assert in_search_space(
            {"temperature": temperature, "alpha": alpha, "hidden_weight": hidden_weight}, space
        )


@pytest.mark.slow
def test_a_trials_layer_weight_takes_effect_although_args_start_without_it(tmp_out):
    """Trainer sets a trial's values after building the student; the hidden-state term must still be on."""
    recorder = RecordLogs()
    tune_distillation(
        lambda: tiny_model(seed=0),
        tiny_model(seed=1),
        _args(tmp_out, hidden_weight=0.0),
        tiny_classification_dataset(16),
        tiny_classification_dataset(8, seed=1),
        n_trials=1,
        search_space={"hidden_weight": [1.0]},
        callbacks=[recorder],
    )
    train_logs = [log for log in recorder.logs if "loss" in log]
    assert train_logs and all(log.get("loss_hidden", 0.0) > 0 for log in train_logs)


def test_search_space_forms_and_errors():
    class FakeTrial:
        def suggest_categorical(self, name, values):
            return values[-1]

        def suggest_float(self, name, low, high, log=False):
            return (low + high) / 2

    hp_space = make_hp_space({"temperature": [2.0, 4.0], "alpha": (0.2, 0.6)})
    assert hp_space(FakeTrial()) == {"temperature": 4.0, "alpha": pytest.approx(0.4)}
    assert make_hp_space(None)(FakeTrial()) == {
        "temperature": 8.0,
        "alpha": pytest.approx(0.55),
        "hidden_weight": 1.0,
    }
    with pytest.raises(ValueError, match="not DistillationConfig fields"):
        make_hp_space({"temprature": [1.0]})
    with pytest.raises(ValueError, match="non-empty list"):
        make_hp_space({"alpha": (0.9, 0.2)})
    assert parse_search_space('{"temperature": [1, 2], "alpha": {"range": [0.2, 0.9]}}') == {
        "temperature": [1.0, 2.0],
        "alpha": (0.2, 0.9),
    }
    assert not in_search_space({"temperature": 3.0}, {"temperature": [1.0, 2.0]})
    assert not in_search_space({"alpha": 0.95}, {"alpha": (0.2, 0.9)})


@pytest.mark.slow
def test_tune_command_reads_local_files_and_reports_the_best_setting(tmp_path, capsys):
    import argparse
    import csv

    from transformers import BertTokenizer

    from hf_kd.tuning import add_tune_arguments, run_tune_command

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(94)]
    for name, layers in (("teacher", 2), ("student", 1)):
        tiny_model(num_layers=layers, seed=layers).save_pretrained(tmp_path / name)
        BertTokenizer(vocab={w: i for i, w in enumerate(words)}).save_pretrained(tmp_path / name)
    for split, n in (("train", 12), ("validation", 6)):
        with open(tmp_path / f"{split}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["sentence", "label"])
            writer.writerows([[f"w{i} w{i + 1} w{2 * i}", ["neg", "neu", "pos"][i % 3]] for i in range(n)])
    args = add_tune_arguments(argparse.ArgumentParser()).parse_args(
        [
            "--teacher",
            str(tmp_path / "teacher"),
            "--student",
            str(tmp_path / "student"),
            "--data",
            str(tmp_path / "train.csv"),
            "--validation-file",
            str(tmp_path / "validation.csv"),
            "--text-column",
            "sentence",
            "--n-trials",
            "1",
            "--max-steps",
            "1",
            "--batch-size",
            "4",
            "--use-cpu",
            "--search-space",
            '{"temperature": [2, 4], "alpha": {"range": [0.3, 0.7]}}',
            "--output-dir",
            str(tmp_path / "out"),
        ]
    )
    result = run_tune_command(args)
    printed = capsys.readouterr().out
    assert in_search_space(result["hyperparameters"], {"temperature": [2.0, 4.0], "alpha": (0.3, 0.7)})
    assert "Best eval_accuracy" in printed and "| 0 (best) | COMPLETE |" in printed
