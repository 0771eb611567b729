"""A checkpoint is complete only when every file Trainer writes is there and whole, and unchanged since the save:
a manifest of sizes and sha256, written last, proves it. A bad or missing file makes resume fall back to the previous
complete checkpoint with a warning naming the file, and an explicit resume path to it is an error naming the file."""

from __future__ import annotations

import json
import logging
import os
import shutil

import pytest
from conftest import tiny_classification_dataset, tiny_model

from hf_kd import DistillationConfig, DistillationTrainer
from hf_kd.checkpoints import (
    MANIFEST_FILE,
    CheckpointManifestCallback,
    IncompleteCheckpointError,
    check_resumable,
    checkpoint_problem,
    last_complete_checkpoint,
    safetensors_is_all_zero,
    sha256_of,
    torch_file_is_complete,
)
from hf_kd.layer_map import PROJECTIONS_FILE


def _trainer(out: str, max_steps: int = 4) -> DistillationTrainer:
    args = DistillationConfig(
        output_dir=out,
        teacher_dtype="float32",  # compared with float32 runs; auto has its own tests
        max_steps=max_steps,
        save_steps=2,
        save_strategy="steps",
        per_device_train_batch_size=4,
        hidden_weight=1.0,  # student hidden 32, teacher 48: checkpoints carry projections
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=7,
    )
    return DistillationTrainer(
        model=tiny_model(seed=0),
        args=args,
        teacher_model=tiny_model(seed=1, hidden=48),
        train_dataset=tiny_classification_dataset(16),
    )


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("integrity") / "run")
    _trainer(out).train()
    assert sorted(os.listdir(out)) == ["checkpoint-2", "checkpoint-4"]
    return out


@pytest.fixture
def run_dir(trained_dir, tmp_path):
    out = str(tmp_path / "run")
    shutil.copytree(trained_dir, out)
    return out


def _truncate(path: str) -> None:
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _zero_fill(path: str) -> None:
    size = os.path.getsize(path)
    with open(path, "wb") as f:
        f.write(b"\0" * size)


def _zero_tensor_data(path: str) -> None:
    """Keep the safetensors header, zero every tensor byte: the right size, a valid format, no weights."""
    with open(path, "r+b") as f:
        header_len = int.from_bytes(f.read(8), "little")
        f.seek(8 + header_len)
        f.write(b"\0" * (os.path.getsize(path) - 8 - header_len))


def _flip_a_byte(path: str) -> None:
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) - 3)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))


def _remove(name: str):
    return lambda d: os.remove(os.path.join(d, name))


# The damage, and the words the problem must contain: each names the file.
DAMAGE = {
    "no-optimizer": (_remove("optimizer.pt"), "optimizer.pt is missing"),
    "no-scheduler": (_remove("scheduler.pt"), "scheduler.pt is missing"),
    "no-rng": (_remove("rng_state.pth"), "rng_state.pth is missing"),
    "cut-optimizer": (lambda d: _truncate(os.path.join(d, "optimizer.pt")), "optimizer.pt is truncated"),
    "cut-scheduler": (lambda d: _truncate(os.path.join(d, "scheduler.pt")), "scheduler.pt is truncated"),
    "cut-rng": (lambda d: _truncate(os.path.join(d, "rng_state.pth")), "rng_state.pth is truncated"),
    "cut-config": (lambda d: _truncate(os.path.join(d, "config.json")), "config.json does not parse"),
    "zero-filled-optimizer": (
        lambda d: _zero_fill(os.path.join(d, "optimizer.pt")),
        "optimizer.pt is truncated",
    ),
    "zeroed-weights": (
        lambda d: _zero_tensor_data(os.path.join(d, "model.safetensors")),
        f"model.safetensors does not match its sha256 in {MANIFEST_FILE}",
    ),
    "garbled-projections": (
        lambda d: _flip_a_byte(os.path.join(d, PROJECTIONS_FILE)),
        f"{PROJECTIONS_FILE} does not match its sha256",
    ),
    "garbled-optimizer": (
        lambda d: _flip_a_byte(os.path.join(d, "optimizer.pt")),
        "optimizer.pt does not match its sha256",
    ),
    "no-training-args": (
        _remove("training_args.bin"),
        f"training_args.bin is missing (it is listed in {MANIFEST_FILE})",
    ),
}


def test_the_trainer_writes_the_manifest_into_every_checkpoint(tmp_path):
    trainer = _trainer(str(tmp_path / "unused"))
    assert sum(isinstance(cb, CheckpointManifestCallback) for cb in trainer.callback_handler.callbacks) == 1


def test_the_manifest_lists_every_file_with_its_size_and_hash_and_is_written_last(trained_dir):
    for name in ("checkpoint-2", "checkpoint-4"):
        folder = os.path.join(trained_dir, name)
        with open(os.path.join(folder, MANIFEST_FILE)) as f:
            manifest = json.load(f)
        assert manifest["global_step"] == int(name.split("-")[1])
        on_disk = sorted(n for n in os.listdir(folder) if n != MANIFEST_FILE)
        assert sorted(manifest["files"]) == on_disk
        for expected in ("model.safetensors", "config.json", "optimizer.pt", "scheduler.pt", "rng_state.pth"):
            assert expected in on_disk
        assert PROJECTIONS_FILE in on_disk and "trainer_state.json" in on_disk
        for rel, entry in manifest["files"].items():
            path = os.path.join(folder, rel)
            assert entry == {"size": os.path.getsize(path), "sha256": sha256_of(path)}
        newest_other = max(os.stat(os.path.join(folder, n)).st_mtime_ns for n in on_disk)
        assert os.stat(os.path.join(folder, MANIFEST_FILE)).st_mtime_ns >= newest_other
        assert checkpoint_problem(folder, require_projections=True) is None


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_a_bad_or_missing_file_falls_back_to_the_previous_checkpoint_with_a_warning_naming_it(
    run_dir, caplog, kind
):
    damage, reason = DAMAGE[kind]
    newest = os.path.join(run_dir, "checkpoint-4")
    damage(newest)
    assert reason in checkpoint_problem(newest, require_projections=True)
    with caplog.at_level(logging.WARNING, logger="hf_kd.checkpoints"):
        found = last_complete_checkpoint(run_dir, require_projections=True)
    assert found == os.path.join(run_dir, "checkpoint-2")
    warnings = [r.getMessage() for r in caplog.records if r.name == "hf_kd.checkpoints"]
    assert len(warnings) == 1 and "checkpoint-4" in warnings[0] and reason in warnings[0]


@pytest.mark.parametrize("kind", ["no-optimizer", "cut-rng", "zeroed-weights", "garbled-optimizer"])
def test_an_explicit_resume_path_to_an_incomplete_checkpoint_is_an_error_naming_the_file(run_dir, kind):
    damage, reason = DAMAGE[kind]
    newest = os.path.join(run_dir, "checkpoint-4")
    damage(newest)
    with pytest.raises(IncompleteCheckpointError, match="cannot resume from .*checkpoint-4") as err:
        check_resumable(newest, require_projections=True)
    assert reason in str(err.value) and "resume_from_checkpoint=True" in str(err.value)
    check_resumable(
        os.path.join(run_dir, "checkpoint-2"), require_projections=True
    )  # the complete one passes


def test_a_missing_resume_directory_is_named(tmp_path):
    with pytest.raises(IncompleteCheckpointError, match="checkpoint-9.*is not a directory"):
        check_resumable(str(tmp_path / "checkpoint-9"))


def test_a_checkpoint_from_before_the_manifest_is_judged_by_its_files(run_dir):
    newest = os.path.join(run_dir, "checkpoint-4")
    os.remove(os.path.join(newest, MANIFEST_FILE))
    assert checkpoint_problem(newest, require_projections=True) is None  # complete without a manifest
    assert last_complete_checkpoint(run_dir, require_projections=True) == newest
    # Its files are still checked: a missing optimizer, or weights zeroed at the right size, are caught.
    os.remove(os.path.join(newest, "optimizer.pt"))
    assert "optimizer.pt is missing" in checkpoint_problem(newest)
    _zero_tensor_data(os.path.join(newest, "model.safetensors"))
    assert "model.safetensors holds only zeros" in checkpoint_problem(newest)


def test_a_stale_manifest_from_an_earlier_save_marks_a_half_rewritten_checkpoint_incomplete(run_dir):
    # A save into an existing checkpoint folder that was killed after rewriting the weights: the old manifest no
    # longer matches, so the checkpoint is not taken as complete.
    folder = os.path.join(run_dir, "checkpoint-4")
    shutil.copy(
        os.path.join(run_dir, "checkpoint-2", "model.safetensors"), os.path.join(folder, "model.safetensors")
    )
    assert "model.safetensors does not match its sha256" in checkpoint_problem(folder)


def test_projections_in_the_manifest_are_only_required_when_the_run_has_them(run_dir):
    newest = os.path.join(run_dir, "checkpoint-4")
    os.remove(os.path.join(newest, PROJECTIONS_FILE))
    assert checkpoint_problem(newest, require_projections=False) is None
    assert PROJECTIONS_FILE in checkpoint_problem(newest, require_projections=True)


def test_format_checks_on_fixed_files(tmp_path):
    import torch
    from safetensors.torch import save_file

    pt = str(tmp_path / "state.pt")
    torch.save({"a": torch.arange(1000)}, pt)
    assert torch_file_is_complete(pt)
    data = open(pt, "rb").read()
    for broken in (data[: len(data) // 2], b"\0" * len(data), b""):
        with open(pt, "wb") as f:
            f.write(broken)
        assert not torch_file_is_complete(pt)
    weights = str(tmp_path / "w.safetensors")
    save_file({"w": torch.ones(4, 4), "b": torch.zeros(4)}, weights)
    assert not safetensors_is_all_zero(weights)  # one tensor of zeros is a model; all of them is not
    _zero_tensor_data(weights)
    assert safetensors_is_all_zero(weights)


@pytest.mark.slow
def test_resume_true_skips_a_checkpoint_without_its_optimizer_and_ends_like_the_uninterrupted_run(
    run_dir, trained_dir, caplog, tmp_path
):
    """The finding: a checkpoint missing its optimizer state resumed silently, and every tensor then differed from
    the uninterrupted run. Now it is skipped, and resuming from checkpoint-2 ends where the full run ended."""
    import torch
    from safetensors.torch import load_file

    os.remove(os.path.join(run_dir, "checkpoint-4", "optimizer.pt"))
    trainer = _trainer(run_dir, max_steps=4)
    loaded = []
    load = trainer._load_from_checkpoint

    def spy(path, model=None):
        loaded.append(os.path.basename(path))
        return load(path, model)

    trainer._load_from_checkpoint = spy
    with caplog.at_level(logging.WARNING, logger="hf_kd.checkpoints"):
        trainer.train(resume_from_checkpoint=True)
    assert loaded == ["checkpoint-2"]
    assert any("optimizer.pt is missing" in r.getMessage() for r in caplog.records)
    expected = load_file(os.path.join(trained_dir, "checkpoint-4", "model.safetensors"))
    got = load_file(os.path.join(run_dir, "checkpoint-4", "model.safetensors"))
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("kind", ["no-scheduler", "cut-optimizer", "garbled-projections"])
def test_trainer_train_with_an_explicit_path_to_an_incomplete_checkpoint_names_the_file(run_dir, kind):
    damage, reason = DAMAGE[kind]
    newest = os.path.join(run_dir, "checkpoint-4")
    damage(newest)
    trainer = _trainer(run_dir, max_steps=6)
    with pytest.raises(IncompleteCheckpointError, match="cannot resume from") as err:
        trainer.train(resume_from_checkpoint=newest)
    assert reason in str(err.value)
    assert trainer.state.global_step == 0  # refused before loading anything
