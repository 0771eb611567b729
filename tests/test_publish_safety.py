"""Publishing cannot leak: an allow-list of regular files, links refused by name, dotfiles and stray files left
local, repository ids checked by huggingface_hub, a dry run that writes nothing, and a card never written through a
link. Every push runs against the loopback Hub server."""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil

import pytest
from conftest import tiny_classification_dataset, tiny_model
from hub_server import USER, HubServer, hub_endpoint

pytestmark = pytest.mark.slow

TOKEN = "hf_publish_safety_token"
SECRET = b"outside the output folder: never published"


def snapshot(directory) -> dict[str, str]:
    out = {}
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                with open(path, "rb") as f:
                    out[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-step distillation run saved with its tokenizer and distillation card (README, plot, hf_kd_card.json)."""
    from test_hub import tiny_tokenizer

    from hf_kd import DistillationConfig, DistillationTrainer

    tmp = tmp_path_factory.mktemp("publish")
    out = str(tmp / "student")
    args = DistillationConfig(
        output_dir=out,
        max_steps=2,
        per_device_train_batch_size=4,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        hub_token=TOKEN,
    )
    trainer = DistillationTrainer(
        model=tiny_model(seed=2),
        args=args,
        teacher_model=tiny_model(seed=1),
        processing_class=tiny_tokenizer(tmp),
        train_dataset=tiny_classification_dataset(8),
    )
    trainer.train()
    trainer.save_model()
    trainer.create_model_card(latency_batch_sizes=(1,), latency_seq_len=8)
    return out


@pytest.fixture
def folder(trained, tmp_path):
    """A copy of the trained output folder, and a secret file outside it."""
    out = str(tmp_path / "student")
    shutil.copytree(trained, out)
    secret = tmp_path / "secret.txt"
    secret.write_bytes(SECRET)
    return out, str(secret)


def push_args(output_dir, repo_id, *extra):
    from hf_kd.hub import add_push_arguments

    return add_push_arguments(argparse.ArgumentParser()).parse_args(
        [output_dir, "--repo-id", repo_id, "--token", TOKEN, *extra]
    )


def test_a_symlink_to_a_file_outside_the_folder_stops_the_push_and_names_the_link(
    folder, monkeypatch, capsys
):
    from hf_kd.hub import UnsafeUploadError, push_distilled_model, run_push_command

    out, secret = folder
    os.symlink(secret, os.path.join(out, "leak.txt"))
    os.symlink(secret, os.path.join(out, "tokenizer.json.link"))
    os.remove(os.path.join(out, "tokenizer_config.json"))
    os.symlink(secret, os.path.join(out, "tokenizer_config.json"))  # a link with a published name
    server = HubServer()
    with server, hub_endpoint(monkeypatch, server):
        with pytest.raises(
            UnsafeUploadError, match=r"symbolic links: leak.txt, tokenizer.json.link, tokenizer_config.json"
        ):
            push_distilled_model(out, "hf-kd-tests/leaky", token=TOKEN)
        assert run_push_command(push_args(out, "hf-kd-tests/leaky")) == 1
        assert "leak.txt" in capsys.readouterr().out
    assert server.requests == []  # refused before any request
    assert "hf-kd-tests/leaky" not in server.repos


def test_dotfiles_and_files_off_the_allow_list_stay_local(folder, monkeypatch):
    from hf_kd.hub import push_distilled_model

    out, _ = folder
    with open(os.path.join(out, ".env"), "w") as f:
        f.write(f"HF_TOKEN={TOKEN}\n")
    os.makedirs(os.path.join(out, ".git"))
    with open(os.path.join(out, ".git", "config"), "w") as f:
        f.write("[remote]\n")
    for name in ("notes.txt", "run.log", "teacher_model.safetensors", "training_args.bin"):
        with open(os.path.join(out, name), "wb") as f:
            f.write(b"local only")
    server = HubServer()
    with server, hub_endpoint(monkeypatch, server):
        push_distilled_model(out, "hf-kd-tests/tidy", token=TOKEN)
    files = server.files("hf-kd-tests/tidy")
    assert set(files) == {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "README.md",
        "distillation_curves.png",
        "hf_kd_card.json",
    }
    assert not [name for name, data in files.items() if TOKEN.encode() in data]
    assert server.unhandled == []


@pytest.mark.parametrize("repo_id", ["../../etc", "user/../../etc", "a/b/c", "user/.hidden", "bad name"])
def test_a_repo_id_that_is_not_one_is_refused_before_any_request(folder, monkeypatch, capsys, repo_id):
    from hf_kd.hub import push_distilled_model, run_push_command

    out, _ = folder
    before = snapshot(out)
    server = HubServer()
    with server, hub_endpoint(monkeypatch, server):
        with pytest.raises(ValueError, match=r"is not a Hub repository id.*'namespace/name'"):
            push_distilled_model(out, repo_id, token=TOKEN)
        assert run_push_command(push_args(out, repo_id)) == 1
        assert repr(repo_id) in capsys.readouterr().out
        assert run_push_command(push_args(out, repo_id, "--dry-run")) == 1
    assert server.requests == []
    assert snapshot(out) == before  # not even the card was re-rendered for it


def test_dry_run_writes_nothing_and_lists_what_the_push_sends(folder, monkeypatch, capsys):
    from hf_kd.hub import run_push_command

    out, _ = folder
    before = snapshot(out)
    mtimes = {name: os.stat(os.path.join(out, name)).st_mtime_ns for name in os.listdir(out)}
    server = HubServer()
    with server, hub_endpoint(monkeypatch, server):
        assert run_push_command(push_args(out, "hf-kd-tests/dry", "--dry-run")) == 0
        listed = [line.strip() for line in capsys.readouterr().out.splitlines()[1:]]
        assert server.requests == []
        assert snapshot(out) == before
        assert {n: os.stat(os.path.join(out, n)).st_mtime_ns for n in os.listdir(out)} == mtimes
        assert run_push_command(push_args(out, "hf-kd-tests/dry")) == 0
    assert sorted(server.files("hf-kd-tests/dry")) == listed


def test_a_card_symlinked_outside_the_folder_is_never_written_through(folder, monkeypatch):
    from hf_kd.hub import UnsafeUploadError, push_distilled_model, run_push_command

    out, secret = folder
    os.remove(os.path.join(out, "README.md"))
    os.symlink(secret, os.path.join(out, "README.md"))
    server = HubServer()
    with server, hub_endpoint(monkeypatch, server):
        for dry_run in (True, False):
            with pytest.raises(UnsafeUploadError, match="README.md"):
                push_distilled_model(out, "hf-kd-tests/card-link", token=TOKEN, dry_run=dry_run)
        assert run_push_command(push_args(out, "hf-kd-tests/card-link", "--dry-run")) == 1
    with open(secret, "rb") as f:
        assert f.read() == SECRET  # the file the link points to is untouched
    assert server.requests == []


@pytest.mark.parametrize("name", ["README.md", "hf_kd_card.json", "distillation_curves.png"])
def test_the_card_writer_refuses_a_link_at_each_card_file(folder, name):
    from hf_kd.model_card import LinkedFileError, load_card_context, render_card_from_context

    out, secret = folder
    context = load_card_context(out)
    os.remove(os.path.join(out, name))
    os.symlink(secret, os.path.join(out, name))
    with pytest.raises(LinkedFileError, match=f"{name} is a symbolic link"):
        render_card_from_context(context, out)
    with open(secret, "rb") as f:
        assert f.read() == SECRET


def test_training_pushes_follow_the_allow_list_too(tmp_path, monkeypatch):
    """hub_strategy='every_save': Trainer's own upload of the output folder skips a .env and a linked file."""
    from hf_kd import DistillationConfig, DistillationTrainer

    out = tmp_path / "student"
    out.mkdir()
    (out / ".env").write_text(f"HF_TOKEN={TOKEN}\n")
    (tmp_path / "secret.txt").write_bytes(SECRET)
    os.symlink(tmp_path / "secret.txt", out / "leak.txt")
    server = HubServer()
    with server, hub_endpoint(monkeypatch, server):
        args = DistillationConfig(
            output_dir=str(out),
            max_steps=2,
            per_device_train_batch_size=4,
            save_strategy="steps",
            save_steps=2,
            push_to_hub=True,
            hub_strategy="every_save",
            hub_model_id="every-save",
            hub_token=TOKEN,
            report_to=[],
            use_cpu=True,
            disable_tqdm=True,
        )
        trainer = DistillationTrainer(
            model=tiny_model(seed=2),
            args=args,
            teacher_model=tiny_model(seed=1),
            train_dataset=tiny_classification_dataset(8),
        )
        trainer.train()
        trainer._finish_current_push()
    files = server.files(f"{USER}/every-save")
    assert "model.safetensors" in files and "config.json" in files
    assert ".env" not in files and "leak.txt" not in files and "training_args.bin" not in files
    assert not [name for name, data in files.items() if TOKEN.encode() in data or SECRET in data]
