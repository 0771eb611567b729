"""Faults survived with nothing lost: a SIGKILLed run resumes to the same student, and a checkpoint left half
written by a kill is skipped in favour of the previous complete one."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch
from conftest import tiny_classification_dataset, tiny_model
from safetensors.torch import load_file, save_file

from hf_kd import DistillationConfig, DistillationTrainer
from hf_kd.checkpoints import checkpoint_problem, last_complete_checkpoint, safetensors_is_complete
from hf_kd.layer_map import PROJECTIONS_FILE

WORKER = os.path.join(os.path.dirname(__file__), "scripts_faults", "kd_run.py")


def _worker(output_dir: str, final: str, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(
        [sys.executable, WORKER, "--output-dir", output_dir, "--final", final, *extra],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


@pytest.mark.slow
def test_sigkill_between_checkpoints_then_resume_equals_uninterrupted_run(tmp_path):
    # The worker: 10 steps, checkpoints every 4, dropout 0.1, hidden-size projections (32 -> 48), linear alpha and
    # cosine temperature schedules, 6 steps per epoch.
    full = _worker(str(tmp_path / "full"), str(tmp_path / "full.safetensors"))
    assert full.returncode == 0, full.stderr[-3000:]

    killed = _worker(str(tmp_path / "run"), str(tmp_path / "run.safetensors"), "--kill-at", "7")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not (tmp_path / "run.safetensors").exists()
    assert sorted(os.listdir(tmp_path / "run")) == [
        "checkpoint-4"
    ]  # killed 3 steps after it, before checkpoint-8
    assert (tmp_path / "run" / "checkpoint-4" / PROJECTIONS_FILE).is_file()

    resumed = _worker(str(tmp_path / "run"), str(tmp_path / "run.safetensors"), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    expected = load_file(str(tmp_path / "full.safetensors"))
    got = load_file(str(tmp_path / "run.safetensors"))
    assert sorted(got) == sorted(expected)
    assert any("hf_kd_projections" in k for k in got), "the projections are part of the compared student"
    for name, tensor in expected.items():
        torch.testing.assert_close(
            got[name], tensor, rtol=1e-5, atol=1e-6, msg=f"{name} differs after resume"
        )
    # And the comparison can tell students apart: the state at the checkpoint differs from the final one.
    at_checkpoint = load_file(str(tmp_path / "run" / "checkpoint-4" / "model.safetensors"))
    assert any(not torch.equal(at_checkpoint[k], expected[k]) for k in at_checkpoint)


# ---- incomplete checkpoints -------------------------------------------------------------------------------


def _args(out: str, max_steps: int) -> DistillationConfig:
    return DistillationConfig(
        output_dir=out,
        teacher_dtype="float32",  # compared with float32 runs; auto has its own tests
        max_steps=max_steps,
        save_steps=2,
        save_strategy="steps",
        per_device_train_batch_size=4,
        hidden_weight=1.0,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=7,
    )


def _trainer(out: str, max_steps: int = 4) -> DistillationTrainer:
    # Student hidden 32, teacher 48: checkpoints carry projections.
    return DistillationTrainer(
        model=tiny_model(seed=0),
        args=_args(out, max_steps),
        teacher_model=tiny_model(seed=1, hidden=48),
        train_dataset=tiny_classification_dataset(16),
    )


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory):
    """A finished 4-step run with checkpoint-2 and checkpoint-4, both complete."""
    out = str(tmp_path_factory.mktemp("faults") / "run")
    _trainer(out).train()
    assert sorted(os.listdir(out)) == ["checkpoint-2", "checkpoint-4"]
    return out


@pytest.fixture
def run_dir(trained_dir, tmp_path):
    out = str(tmp_path / "run")
    shutil.copytree(trained_dir, out)
    return out


def _truncate(path: str) -> None:
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size // 2)


def _resume_and_record(out: str, max_steps: int = 4) -> tuple[DistillationTrainer, list[str]]:
    """Resume with resume_from_checkpoint=True, recording which checkpoint the trainer loaded."""
    trainer = _trainer(out, max_steps)
    loaded: list[str] = []
    load = trainer._load_from_checkpoint

    def spy(path, model=None):
        loaded.append(os.path.basename(path))
        return load(path, model)

    trainer._load_from_checkpoint = spy
    trainer.train(resume_from_checkpoint=True)
    return trainer, loaded


def test_complete_checkpoints_are_taken_newest_first(run_dir):
    assert last_complete_checkpoint(run_dir, require_projections=True) == os.path.join(
        run_dir, "checkpoint-4"
    )
    trainer, loaded = _resume_and_record(run_dir)
    assert loaded == ["checkpoint-4"]
    assert trainer.state.global_step == 4


DAMAGE = {
    "no-state": (lambda d: os.remove(os.path.join(d, "trainer_state.json")), "trainer_state.json is missing"),
    "cut-state": (
        lambda d: _truncate(os.path.join(d, "trainer_state.json")),
        "trainer_state.json does not parse",
    ),
    "cut-weights": (
        lambda d: _truncate(os.path.join(d, "model.safetensors")),
        "model.safetensors is truncated",
    ),
    "no-weights": (lambda d: os.remove(os.path.join(d, "model.safetensors")), "holds no model weights"),
    "no-projections": (
        lambda d: os.remove(os.path.join(d, PROJECTIONS_FILE)),
        f"{PROJECTIONS_FILE} (the hidden",
    ),
    "cut-projections": (
        lambda d: _truncate(os.path.join(d, PROJECTIONS_FILE)),
        f"{PROJECTIONS_FILE} is truncated",
    ),
}


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_incomplete_newest_checkpoint_is_detected_and_skipped_with_a_warning(run_dir, caplog, kind):
    damage, reason = DAMAGE[kind]
    newest = os.path.join(run_dir, "checkpoint-4")
    damage(newest)
    assert reason in checkpoint_problem(newest, require_projections=True)
    with caplog.at_level(logging.WARNING, logger="hf_kd.checkpoints"):
        found = last_complete_checkpoint(run_dir, require_projections=True)
    assert found == os.path.join(run_dir, "checkpoint-2")
    warnings = [r.getMessage() for r in caplog.records if r.name == "hf_kd.checkpoints"]
    assert len(warnings) == 1 and "checkpoint-4" in warnings[0] and reason in warnings[0]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["no-state", "cut-weights"])
def test_trainer_resumes_from_the_previous_complete_checkpoint(run_dir, caplog, kind):
    damage, reason = DAMAGE[kind]
    damage(os.path.join(run_dir, "checkpoint-4"))
    with caplog.at_level(logging.WARNING, logger="hf_kd.checkpoints"):
        trainer, loaded = _resume_and_record(run_dir)
    assert loaded == ["checkpoint-2"]  # Trainer alone would take checkpoint-4 and fail or load half a model
    assert trainer.state.global_step == 4
    assert any("checkpoint-4" in r.getMessage() and reason in r.getMessage() for r in caplog.records)


def test_projections_are_only_required_when_the_run_has_them(run_dir):
    newest = os.path.join(run_dir, "checkpoint-4")
    os.remove(os.path.join(newest, PROJECTIONS_FILE))
    assert last_complete_checkpoint(run_dir, require_projections=False) == newest
    assert last_complete_checkpoint(run_dir, require_projections=True) == os.path.join(
        run_dir, "checkpoint-2"
    )


def test_no_complete_checkpoint_is_an_error_not_a_fresh_start(run_dir):
    for name in ("checkpoint-2", "checkpoint-4"):
        os.remove(os.path.join(run_dir, name, "trainer_state.json"))
    with pytest.raises(ValueError, match="No complete checkpoint found"):
        _trainer(run_dir).train(resume_from_checkpoint=True)


def test_safetensors_completeness_check(tmp_path):
    path = str(tmp_path / "w.safetensors")
    save_file({"a": torch.arange(100, dtype=torch.float32), "b": torch.ones(3, 3)}, path)
    assert safetensors_is_complete(path)
    data = open(path, "rb").read()
    for cut in (4, 20, len(data) - 1):  # inside the length prefix, inside the header, one byte of data short
        with open(path, "wb") as f:
            f.write(data[:cut])
        assert not safetensors_is_complete(path), cut
    with open(path, "wb") as f:
        f.write(b"\xff" * 64)  # garbage header length
    assert not safetensors_is_complete(path)
