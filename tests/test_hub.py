"""Publishing to the Hub with the real `huggingface_hub` client, against a Hub-compatible server on 127.0.0.1."""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil

import numpy as np
import pytest
from conftest import VOCAB, tiny_classification_dataset, tiny_model
from hub_server import USER, HubServer, hub_endpoint

pytestmark = pytest.mark.slow

TOKEN = "hf_dummy_test_token"


def accuracy(eval_pred):
    logits, labels = eval_pred
    return {"accuracy": float((np.argmax(logits, -1) == labels).mean())}


def tiny_tokenizer(directory):
    """A BertTokenizerFast over a written vocabulary of VOCAB entries (ids match the tiny models)."""
    from transformers import BertTokenizerFast

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = [f"w{i}" for i in range(VOCAB - len(special))]
    path = os.path.join(directory, "vocab.txt")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(special + words) + "\n")
    return BertTokenizerFast(vocab=path)


def make_trainer(output_dir, tmp_path, **config_kw):
    """4 x 48 teacher -> 2 x 32 student with hidden-state matching: projections 32 -> 48 are learned."""
    from hf_kd import DistillationConfig, DistillationTrainer

    teacher = tiny_model(seed=1, num_layers=4, hidden=48)
    teacher.config._name_or_path = "hf-kd-tests/tiny-bert-teacher"
    student = tiny_model(seed=2, num_layers=2, hidden=32)
    kw = dict(
        max_steps=4,
        per_device_train_batch_size=4,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        hidden_weight=1.0,
        hub_model_id="tiny-student",
        hub_token=TOKEN,
    )
    kw.update(config_kw)
    args = DistillationConfig(output_dir=output_dir, **kw)
    trainer = DistillationTrainer(
        model=student,
        args=args,
        teacher_model=teacher,
        processing_class=tiny_tokenizer(tmp_path),
        train_dataset=tiny_classification_dataset(16, seed=0),
        eval_dataset=tiny_classification_dataset(8, seed=1),
        compute_metrics=accuracy,
    )
    return trainer, student, teacher


def safetensors_keys(data: bytes) -> dict[str, tuple[int, ...]]:
    from safetensors.torch import load

    return {k: tuple(v.shape) for k, v in load(data).items()}


def snapshot(directory) -> dict[str, str]:
    out = {}
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def pushed(tmp_path_factory):
    """One training run pushed with trainer.push_to_hub() to a local Hub server."""
    tmp = tmp_path_factory.mktemp("push")
    out = str(tmp / "student")
    mp = pytest.MonkeyPatch()
    server = HubServer()
    with server, hub_endpoint(mp, server):
        trainer, student, teacher = make_trainer(out, tmp)
        trainer.train()
        evaluated = trainer.evaluate()
        info = trainer.push_to_hub(
            dataset="hf-kd-tests/tiny-random", license="mit", latency_batch_sizes=(1, 2), latency_seq_len=8
        )
    mp.undo()
    return {
        "server": server,
        "trainer": trainer,
        "student": student,
        "teacher": teacher,
        "out": out,
        "info": info,
        "evaluated": evaluated,
        "repo": f"{USER}/tiny-student",
    }


def test_push_commits_student_tokenizer_card_and_plot(pushed):
    server = pushed["server"]
    assert server.unhandled == []
    assert server.tokens_seen == {TOKEN}
    files = server.files(pushed["repo"])
    expected = {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "README.md",
        "distillation_curves.png",
        "hf_kd_card.json",
    }
    assert set(files) == expected, sorted(files)
    # training_args.bin pickles hub_token in clear: it stays local, and no published byte holds the token.
    assert os.path.isfile(os.path.join(pushed["out"], "training_args.bin"))
    assert not [name for name, data in files.items() if TOKEN.encode() in data]
    assert files["distillation_curves.png"][:8] == b"\x89PNG\r\n\x1a\n"
    # What was committed is byte for byte what is in the output directory.
    for name in expected:
        with open(os.path.join(pushed["out"], name), "rb") as f:
            assert f.read() == files[name], name
    assert pushed["info"].oid == server.repos[pushed["repo"]].commits[-1].oid


def test_push_holds_no_projection_or_teacher_weights(pushed):
    student, teacher = pushed["student"], pushed["teacher"]
    assert hasattr(student, "hf_kd_projections")  # they were trained...
    files = pushed["server"].files(pushed["repo"])
    assert not [n for n in files if "projection" in n or "teacher" in n.replace("hf_kd_card", "")]
    committed = safetensors_keys(files["model.safetensors"])
    expected = {
        k: tuple(v.shape) for k, v in student.state_dict().items() if not k.startswith("hf_kd_projections")
    }
    assert committed == expected  # ...but only the student's own tensors are published
    assert committed["bert.embeddings.word_embeddings.weight"] == (VOCAB, 32)
    # The teacher's hidden size is 48, the student's 32: no published tensor has a teacher-sized dimension.
    assert teacher.config.hidden_size == 48 and all(48 not in shape for shape in committed.values())


def test_committed_card_parses_and_names_teacher_metrics_and_tags(pushed):
    from huggingface_hub import ModelCard

    text = pushed["server"].files(pushed["repo"])["README.md"].decode()
    data = ModelCard(text).data
    assert data.teacher_model == "hf-kd-tests/tiny-bert-teacher"
    assert data.library_name == "transformers" and data.pipeline_tag == "text-classification"
    assert data.license == "mit" and data.datasets == ["hf-kd-tests/tiny-random"]
    assert {"distillation", "hf-kd"} <= set(data.tags)
    results = {r.metric_type: r.metric_value for r in data.eval_results}
    assert results == {"accuracy": pushed["evaluated"]["eval_accuracy"]}
    assert f'from_pretrained("{pushed["repo"]}")' in text
    assert "![Loss components during distillation](distillation_curves.png)" in text


def test_committed_card_loads_with_model_card_load(pushed, tmp_path):
    from huggingface_hub import ModelCard

    path = tmp_path / "README.md"
    path.write_bytes(pushed["server"].files(pushed["repo"])["README.md"])
    card = ModelCard.load(path)
    assert card.data.teacher_model == "hf-kd-tests/tiny-bert-teacher"
    assert card.data.eval_results[0].metric_value == pushed["evaluated"]["eval_accuracy"]


def _push_args(output_dir, repo_id, *extra):
    from hf_kd.hub import add_push_arguments

    return add_push_arguments(argparse.ArgumentParser()).parse_args(
        [output_dir, "--repo-id", repo_id, "--token", TOKEN, *extra]
    )


def test_cli_dry_run_lists_files_without_network_then_push_sends_exactly_them(
    pushed, monkeypatch, capsys, tmp_path
):
    from hf_kd.cli import main
    from hf_kd.hub import run_push_command

    out = str(tmp_path / "trained")
    shutil.copytree(pushed["out"], out)
    # A projections file next to the student (as if copied from a checkpoint) must stay local.
    os.makedirs(os.path.join(out, "checkpoint-2"), exist_ok=True)
    with open(os.path.join(out, "hf_kd_projections.safetensors"), "wb") as f:
        f.write(b"not published")
    server = HubServer()
    with server, hub_endpoint(monkeypatch, server):
        before = snapshot(out)
        assert run_push_command(_push_args(out, "hf-kd-tests/cli-student", "--dry-run")) == 0
        listed = [line.strip() for line in capsys.readouterr().out.splitlines()[1:]]
        assert server.requests == []
        assert "README.md" in listed and "model.safetensors" in listed
        assert not [n for n in listed if "projections" in n or n.startswith("checkpoint-")]
        assert snapshot(out) == before  # a dry run writes nothing, not even the card

        # The console script reaches the same command.
        assert main(["push", out, "--repo-id", "hf-kd-tests/cli-student", "--dry-run"]) == 0
        assert [line.strip() for line in capsys.readouterr().out.splitlines()[1:]] == listed
        assert server.requests == []

        assert run_push_command(_push_args(out, "hf-kd-tests/cli-student", "--private")) == 0
        # --revision commits to a branch, created from main when it does not exist yet.
        assert run_push_command(_push_args(out, "hf-kd-tests/cli-student", "--revision", "dev")) == 0
    assert sorted(server.files("hf-kd-tests/cli-student")) == sorted(listed)
    card = server.files("hf-kd-tests/cli-student")["README.md"].decode()
    assert 'from_pretrained("hf-kd-tests/cli-student")' in card  # the real push re-rendered it for this repo
    assert sorted(server.files("hf-kd-tests/cli-student", "dev")) == sorted(listed)
    assert [c.revision for c in server.repos["hf-kd-tests/cli-student"].commits] == ["main", "dev"]
    assert server.repos["hf-kd-tests/cli-student"].private
    assert server.unhandled == []


def test_failed_commit_names_the_request_keeps_the_directory_and_retry_succeeds(pushed, monkeypatch):
    from hf_kd.hub import HubPushError, push_distilled_model

    out = pushed["out"]
    server = HubServer()
    with server, hub_endpoint(monkeypatch, server):
        before = snapshot(out)
        server.fail_next("/commit/", count=1, status=500)
        with pytest.raises(HubPushError) as failure:
            push_distilled_model(out, "hf-kd-tests/flaky", token=TOKEN, refresh_card=False)
        message = str(failure.value)
        assert f"POST {server.endpoint}/api/models/hf-kd-tests/flaky/commit/main answered 500" in message
        assert out in message and "push again" in message
        assert snapshot(out) == before
        assert server.repos["hf-kd-tests/flaky"].commits == []

        info = push_distilled_model(out, "hf-kd-tests/flaky", token=TOKEN, refresh_card=False)
    files = server.files("hf-kd-tests/flaky")
    assert info.oid == server.repos["hf-kd-tests/flaky"].commits[-1].oid
    assert {n: hashlib.sha256(b).hexdigest() for n, b in files.items()} == {
        n: h for n, h in before.items() if not n.startswith("checkpoint-") and n != "training_args.bin"
    }


def test_unreachable_endpoint_names_the_url(pushed, monkeypatch):
    from hf_kd.hub import HubPushError, push_distilled_model

    server = HubServer()  # never started: its port refuses connections
    endpoint = server.endpoint
    server._httpd.server_close()
    with hub_endpoint(monkeypatch, server):
        with pytest.raises(HubPushError) as failure:
            push_distilled_model(pushed["out"], "hf-kd-tests/offline", token=TOKEN, refresh_card=False)
    assert f"{endpoint}/api/repos/create" in str(failure.value)


def test_weights_with_projection_tensors_are_refused(tmp_path):
    import torch
    from safetensors.torch import save_file

    from hf_kd.hub import UnsafeUploadError, check_publishable, files_to_upload

    save_file(
        {"bert.pooler.dense.weight": torch.zeros(2, 2), "hf_kd_projections.proj.1.weight": torch.zeros(2, 2)},
        str(tmp_path / "model.safetensors"),
    )
    with pytest.raises(UnsafeUploadError, match="hf_kd_projections.proj.1.weight"):
        check_publishable(tmp_path, files_to_upload(tmp_path))


def test_hub_strategy_checkpoint_pushes_checkpoint_without_projections(tmp_path, monkeypatch):
    out = str(tmp_path / "student")
    server = HubServer()
    with server, hub_endpoint(monkeypatch, server):
        trainer, _, _ = make_trainer(
            out,
            tmp_path,
            max_steps=2,
            save_strategy="steps",
            save_steps=2,
            push_to_hub=True,
            hub_strategy="checkpoint",
            hub_model_id="ckpt-student",
        )
        trainer.train()
        trainer._finish_current_push()
    assert os.path.isfile(os.path.join(out, "checkpoint-2", "hf_kd_projections.safetensors"))  # kept locally
    files = server.files(f"{USER}/ckpt-student")
    assert "last-checkpoint/model.safetensors" in files and "model.safetensors" in files
    assert not [n for n in files if "projections" in n]
    for name in ("model.safetensors", "last-checkpoint/model.safetensors"):
        assert not [k for k in safetensors_keys(files[name]) if "hf_kd_projections" in k]
    assert server.unhandled == []
