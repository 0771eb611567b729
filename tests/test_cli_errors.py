"""`hf-kd distill` refuses bad inputs before anything runs: a clear one-line message, exit status 2, and the output
directory left as it was. Also the flag conventions (run_glue and TRL names, grouped help, "did you mean")."""

from __future__ import annotations

import argparse
import json
import os

import cli_assets as A
import pytest

from hf_kd import cli


def _snapshot(folder) -> dict[str, bytes]:
    """Every file under `folder` with its bytes ({} when it does not exist)."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = f.read()
    return out


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    base = tmp_path_factory.mktemp("teachers")
    return {
        "sequence": A.save_teacher(str(base / "sequence"), "BertForSequenceClassification", A.SENTIMENTS),
        "token": A.save_teacher(str(base / "token"), "BertForTokenClassification", A.TAGS),
        "mlm": A.save_teacher(str(base / "mlm"), "BertForMaskedLM"),
        "bare": A.save_teacher(str(base / "bare"), "BertModel"),
    }


@pytest.fixture
def data(tmp_path):
    train = A.write_csv(str(tmp_path / "train.csv"), ["sentence", "label"], A.sentiment_rows(12, 0))
    return {"train": train}


def _distill(capsys, teacher: str, out, *extra: str) -> tuple[int, str]:
    code = cli.main(
        [
            "distill",
            "--teacher_model_name_or_path",
            teacher,
            "--student_layers",
            "1",
            "--output_dir",
            str(out),
            "--report_to",
            "none",
            "--use_cpu",
            "true",
            *extra,
        ]
    )
    return code, capsys.readouterr().err


@pytest.fixture
def previous_run(tmp_path):
    """An output directory holding another run's files, which a refused command must leave byte for byte."""
    out = tmp_path / "out"
    (out / "checkpoint-6").mkdir(parents=True)
    (out / "checkpoint-6" / "config.json").write_text('{"num_hidden_layers": 1}')
    (out / "test_results.json").write_text('{"test_accuracy": 0.5}')
    return out


# ---- teachers ----------------------------------------------------------------------------------------------------


def test_masked_lm_teacher_with_labelled_data_is_refused_naming_finetune(
    teachers, data, previous_run, capsys
):
    before = _snapshot(previous_run)
    code, err = _distill(
        capsys, teachers["mlm"], previous_run, "--train_file", data["train"], "--overwrite_output_dir"
    )
    assert code == 2
    assert "masked-LM head" in err and "hf-kd finetune" in err and "--task fill-mask" in err
    assert "Traceback" not in err
    assert _snapshot(previous_run) == before


def test_teacher_whose_head_is_newly_initialised_is_refused(teachers, data, tmp_path, capsys):
    # A bare encoder asked for text classification: transformers would initialise the classifier at random.
    code, err = _distill(
        capsys,
        teachers["bare"],
        tmp_path / "out",
        "--task",
        "text-classification",
        "--train_file",
        data["train"],
    )
    assert code == 2
    assert "text-classification head" in err and "hf-kd finetune" in err
    assert not (tmp_path / "out").exists()


def test_missing_head_weights_are_named(teachers, data, tmp_path, capsys):
    # The config claims a sequence classifier, but the weights hold no classifier (as for a converted checkpoint).
    import shutil

    from safetensors.torch import load_file, save_file

    folder = tmp_path / "headless"
    shutil.copytree(teachers["sequence"], folder)
    weights = load_file(str(folder / "model.safetensors"))
    save_file(
        {k: v for k, v in weights.items() if not k.startswith("classifier.")},
        str(folder / "model.safetensors"),
    )
    code, err = _distill(capsys, str(folder), tmp_path / "out", "--train_file", data["train"])
    assert code == 2
    assert "newly initialised" in err and "classifier.weight" in err and "hf-kd finetune" in err


def test_teacher_of_another_task_is_refused(teachers, data, tmp_path, capsys):
    # A token classifier loads as a sequence classifier without a missing key (same `classifier` names).
    code, err = _distill(
        capsys,
        teachers["token"],
        tmp_path / "out",
        "--task",
        "text-classification",
        "--train_file",
        data["train"],
    )
    assert code == 2
    assert "token-classification head" in err and "BertForTokenClassification" in err


def test_missing_local_teacher_folder_is_not_a_hub_connection_error(data, tmp_path, capsys):
    missing = str(tmp_path / "no-such-teacher")
    code, err = _distill(capsys, missing, tmp_path / "out", "--train_file", data["train"])
    assert code == 2
    assert missing in err and "no such folder" in err
    assert "connect" not in err.lower() and "huggingface.co" not in err


def test_relative_missing_teacher_folder_is_named(data, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, err = _distill(capsys, "./runs/teacher", tmp_path / "out", "--train_file", data["train"])
    assert code == 2 and "'./runs/teacher': no such folder" in err


# ---- data ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content, expected",
    [("", "is empty (0 bytes)"), ("sentence,label\n", "has a header but no rows")],
    ids=["zero-bytes", "header-only"],
)
def test_empty_training_file_is_named_before_training(
    teachers, tmp_path, capsys, content, expected, previous_run
):
    path = tmp_path / "train.csv"
    path.write_text(content)
    before = _snapshot(previous_run)
    code, err = _distill(
        capsys, teachers["sequence"], previous_run, "--train_file", str(path), "--overwrite_output_dir"
    )
    assert code == 2
    assert str(path) in err and expected in err
    assert "Traceback" not in err and "DatasetGenerationError" not in err
    assert (
        _snapshot(previous_run) == before
    )  # --overwrite_output_dir removes nothing until every check passed


def test_empty_jsonl_validation_file_is_named(teachers, data, tmp_path, capsys):
    path = tmp_path / "dev.jsonl"
    path.write_text("")
    code, err = _distill(
        capsys,
        teachers["sequence"],
        tmp_path / "out",
        "--train_file",
        data["train"],
        "--validation_file",
        str(path),
    )
    assert code == 2 and str(path) in err and "empty" in err


def test_unreadable_json_is_named(teachers, data, tmp_path, capsys):
    path = tmp_path / "dev.json"
    path.write_text('{"sentence": "good", "label": ')
    code, err = _distill(
        capsys,
        teachers["sequence"],
        tmp_path / "out",
        "--train_file",
        data["train"],
        "--validation_file",
        str(path),
    )
    assert code == 2 and f"cannot read '{path}' as json" in err and "Traceback" not in err


def test_csv_train_and_jsonl_validation_are_read_each_with_its_own_reader(tmp_path):
    from hf_kd.data import read_data_files

    rows = A.sentiment_rows(6, 0)
    train = A.write_csv(str(tmp_path / "train.csv"), ["sentence", "label"], rows)
    dev = A.write_jsonl(str(tmp_path / "dev.jsonl"), [{"sentence": s, "label": lab} for s, lab in rows[:3]])
    dsdict = read_data_files({"train": train, "validation": dev})
    assert dsdict["train"]["sentence"] == [r[0] for r in rows]
    assert dsdict["validation"]["label"] == [r[1] for r in rows[:3]]


def test_label_unknown_to_the_teacher_is_named(teachers, tmp_path, capsys):
    rows = A.sentiment_rows(6, 0) + [["good nice", "excellent"]]
    train = A.write_csv(str(tmp_path / "train.csv"), ["sentence", "label"], rows)
    code, err = _distill(capsys, teachers["sequence"], tmp_path / "out", "--train_file", train)
    assert code == 2 and "'excellent'" in err and "neg" in err and "hf-kd finetune" in err


def test_integer_labels_against_named_teacher_say_how(teachers, tmp_path, capsys):
    rows = [[s, A.SENTIMENTS.index(lab)] for s, lab in A.sentiment_rows(6, 0)]
    train = A.write_csv(str(tmp_path / "train.csv"), ["sentence", "label"], rows)
    code, err = _distill(capsys, teachers["sequence"], tmp_path / "out", "--train_file", train)
    assert code == 2
    assert "--labels_are_ids true" in err and "write the class names" in err and "'neg'" in err


def test_integer_labels_map_by_name_when_the_names_are_their_strings():
    from hf_kd.tasks import LabelEncoder

    # The teacher's class 0 is named "2": a data label 2 means that class, not id 2.
    encode = LabelEncoder(["2", "0", "1"])
    assert [encode(v) for v in (2, 0, 1, "1")] == [0, 1, 2, 2]
    assert LabelEncoder(["neg", "pos"], labels_are_ids=True)(1) == 1
    assert LabelEncoder(["LABEL_0", "LABEL_1"])(1) == 1  # unnamed classes: integers are ids
    with pytest.raises(ValueError, match="holds label 2 .* 2 classes"):
        LabelEncoder(["LABEL_0", "LABEL_1"])(2)


# ---- output directory ----------------------------------------------------------------------------------------------


def test_non_empty_output_dir_of_another_run_is_refused(teachers, data, previous_run, capsys):
    before = _snapshot(previous_run)
    code, err = _distill(capsys, teachers["sequence"], previous_run, "--train_file", data["train"])
    assert code == 2
    assert str(previous_run) in err and "--overwrite_output_dir" in err and "checkpoint-6" in err
    assert _snapshot(previous_run) == before


def _command(out, *extra: str) -> cli.Command:
    return cli.parse_command(
        "distill",
        [
            "--teacher_model_name_or_path",
            "t",
            "--student_layers",
            "1",
            "--output_dir",
            str(out),
            "--report_to",
            "none",
            *extra,
        ],
    )


def test_recorded_run_with_other_settings_is_refused_naming_the_difference(tmp_path):
    out = tmp_path / "out"
    cli.record_run(_command(out, "--alpha", "0.5"))
    with pytest.raises(cli.CommandError, match=r"alpha: 0\.5 -> 0\.9.*--overwrite_output_dir"):
        cli.prepare_output_dir(_command(out, "--alpha", "0.9"))


def test_same_run_restarted_resumes_from_its_last_complete_checkpoint(tmp_path, capsys):
    import torch
    from safetensors.torch import save_file

    from hf_kd.checkpoints import write_manifest

    out = tmp_path / "out"
    command = _command(out, "--num_train_epochs", "1")
    cli.record_run(command)
    assert cli.prepare_output_dir(command) is None  # recorded, but nothing saved yet: start afresh
    # checkpoint-4 is complete (a manifest over its files); checkpoint-6 was cut short by a kill.
    good, broken = out / "checkpoint-4", out / "checkpoint-6"
    good.mkdir()
    (good / "trainer_state.json").write_text(json.dumps({"global_step": 4}))
    save_file({"w": torch.ones(2)}, str(good / "model.safetensors"))
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
        torch.save({"state": 1}, str(good / name))
    write_manifest(str(good), 4)
    broken.mkdir()
    (broken / "trainer_state.json").write_text('{"global_st')
    # A longer schedule is the same run continued.
    restarted = _command(out, "--num_train_epochs", "3")
    assert cli.prepare_output_dir(restarted) == str(good)
    assert "resuming" in capsys.readouterr().out
    assert cli.prepare_output_dir(
        _command(out, "--num_train_epochs", "3", "--resume_from_checkpoint", "true")
    ) == str(good)


def test_resume_true_without_a_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(cli.CommandError, match="holds no checkpoint yet"):
        cli.prepare_output_dir(_command(tmp_path / "new", "--resume_from_checkpoint", "true"))


def test_overwrite_removes_the_earlier_runs_checkpoints_and_results_only(previous_run):
    (previous_run / "notes.txt").write_text("mine")
    command = _command(previous_run, "--overwrite_output_dir")
    assert cli.prepare_output_dir(command) is None
    assert sorted(os.listdir(previous_run)) == ["notes.txt"]


@pytest.mark.parametrize(
    "value, expected",
    [("true", True), ("True", True), ("false", None), ("ckpt/checkpoint-2", "ckpt/checkpoint-2")],
)
def test_resume_from_checkpoint_true_means_the_last_complete_one(tmp_path, value, expected):
    assert _command(tmp_path, "--resume_from_checkpoint", value).training.resume_from_checkpoint == expected


# ---- flags -------------------------------------------------------------------------------------------------------


def test_run_glue_and_trl_names_set_the_same_fields(tmp_path):
    command = cli.parse_command(
        "distill",
        [
            "--teacher_model_name_or_path",
            "t",
            "--model_name_or_path",
            "s",
            "--max_seq_length",
            "64",
            "--text_column_names",
            "sentence1,sentence2",
            "--dataset_config",
            "mrpc",
            "--dataset_train_split",
            "train[:10]",
            "--use_peft",
            "--lora_r",
            "4",
            "--lora_alpha",
            "8",
            "--trust_remote_code",
            "true",
            "--overwrite_output_dir",
            "--output_dir",
            str(tmp_path),
        ],
    )
    m, d = command.model, command.data
    assert (m.student_model_name_or_path, d.max_length) == ("s", 64)
    assert (d.text_column, d.text_pair_column) == ("sentence1", "sentence2")
    assert (d.dataset_config_name, d.dataset_train_split) == ("mrpc", "train[:10]")
    assert (m.use_peft, m.lora_r, m.lora_alpha, m.trust_remote_code) == (True, 4, 8, True)
    assert command.run.overwrite_output_dir is True


def test_trust_remote_code_is_off_by_default(tmp_path):
    assert _command(tmp_path).model.trust_remote_code is False


def test_unknown_flag_gets_a_did_you_mean(capsys):
    assert cli.main(["distill", "--alpah", "0.9"]) == 2
    err = capsys.readouterr().err
    assert "--alpah" in err and "did you mean --alpha?" in err


def test_unknown_yaml_field_gets_a_did_you_mean(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text("temperatur: 2.0\nmodel_name_or_path: s\n")  # a run_glue alias is a known field
    assert cli.main(["distill", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "'temperatur'" in err and "did you mean temperature?" in err and "model_name_or_path" not in err


def test_distill_help_is_in_sections_model_data_distillation_training(capsys):
    with pytest.raises(SystemExit):
        cli.main(["distill", "--help"])
    text = capsys.readouterr().out
    headings = [text.index(f"\n{name}:\n") for name in ("model", "data", "distillation", "training")]
    assert headings == sorted(headings)
    sections = dict(zip(("model", "data", "distillation", "training"), headings + [len(text)]))

    def section_of(flag: str) -> str:
        at = text.index(f"  {flag} ")
        return max((name for name, start in sections.items() if start < at), key=lambda n: sections[n])

    assert section_of("--teacher_model_name_or_path") == "model"
    assert section_of("--train_file") == "data"
    assert section_of("--temperature") == "distillation" and section_of("--alpha") == "distillation"
    assert section_of("--learning_rate") == "training" and section_of("--overwrite_output_dir") == "training"


def test_push_accepts_repo_id_with_an_underscore(tmp_path):
    from hf_kd.hub import add_push_arguments

    parser = add_push_arguments(argparse.ArgumentParser())
    assert parser.parse_args([str(tmp_path), "--repo_id", "me/student"]).repo_id == "me/student"
    assert parser.parse_args([str(tmp_path), "--repo-id", "me/student"]).repo_id == "me/student"
