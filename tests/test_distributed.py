"""Several processes on CPU (gloo): torchrun and accelerate launch through the Trainer's own Accelerator.

The reference is the same run in one process with the same global batch (1 x 8). tests/scripts/distill_worker.py
explains why the global batches hold the same examples: the dataset is exactly one global batch.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "scripts", "distill_worker.py")
COMPONENTS = ("loss", "loss_kd", "loss_ce", "loss_hidden")


def _load_worker():
    import importlib.util

    spec = importlib.util.spec_from_file_location("distill_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(
    launcher: list[str], out: str, per_device: int, accum: int, *extra: str
) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    command = [
        *launcher,
        WORKER,
        "--out",
        out,
        "--per-device",
        str(per_device),
        "--accum",
        str(accum),
        *extra,
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (
        f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    )
    # gloo on CPU aborts about 1 run in 10 at exit without an orderly shutdown; shutdown_distributed prevents it.
    assert "terminate called" not in result.stderr
    return result


def _read(out: str, rank: int) -> tuple[dict, dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    with open(os.path.join(out, f"rank{rank}.json")) as f:
        report = json.load(f)
    return report, load_file(os.path.join(out, f"rank{rank}.safetensors"))


def _curve(report: dict) -> list[dict[str, float]]:
    return [{k: h[k] for k in COMPONENTS} for h in report["log_history"] if "loss" in h]


@pytest.fixture(scope="module")
def single_process(tmp_path_factory):
    """One process, batch 8: the reference loss curve and final student."""
    out = str(tmp_path_factory.mktemp("single"))
    _load_worker().run(out, per_device=8, accum=1)
    return _read(out, 0)


def _check_matches_reference(out: str, reference: tuple[dict, dict[str, torch.Tensor]]) -> None:
    ref_report, ref_state = reference
    ref_curve = _curve(ref_report)
    assert len(ref_curve) == 4 and ref_curve[0]["loss_kd"] > 1e-3  # the KD term is really exercised
    assert ref_curve[-1]["loss"] < ref_curve[0]["loss"]
    states = []
    for rank in (0, 1):
        report, state = _read(out, rank)
        states.append(state)
        assert report["world_size"] == 2
        # The teacher is on this process's device, frozen, untouched, and not wrapped in DDP; the student is.
        assert report["teacher_placement"] == "replicate"
        assert not report["teacher_is_ddp"] and report["student_is_ddp"]
        assert report["teacher_device"] == "cpu"
        assert report["teacher_unchanged"] and not report["teacher_requires_grad"]
        # Every rank logs the same components, averaged over processes, and they equal the 1-process curve.
        curve = _curve(report)
        assert len(curve) == len(ref_curve)
        for got, want in zip(curve, ref_curve):
            for key in COMPONENTS:
                assert got[key] == pytest.approx(want[key], rel=1e-4, abs=1e-6), (rank, key, got, want)
    projection_keys = [k for k in ref_state if "hf_kd_projections" in k]
    assert projection_keys, "student and teacher hidden sizes differ, so projections must exist"
    assert set(states[0]) == set(ref_state) == set(states[1])
    for key in ref_state:
        # Identical on both ranks (DDP keeps replicas in step, projections included) ...
        assert torch.equal(states[0][key], states[1][key]), key
        # ... and equal to the 1-process student to float tolerance.
        torch.testing.assert_close(states[0][key], ref_state[key], rtol=1e-3, atol=1e-4, msg=key)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_torchrun_two_processes_match_one_process(tmp_path, single_process):
    """torchrun, 2 x 4 examples: same loss curve and final student as 1 x 8; the FSDP teacher path shards."""
    out = str(tmp_path / "torchrun")
    launcher = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
    ]
    _launch(launcher, out, 4, 1, "--fsdp-teacher-check")
    _check_matches_reference(out, single_process)
    # The same processes also sharded a copy of the teacher through hf_kd's FSDP path (FSDP2 runs on gloo):
    # each rank holds about half of it, and its logits equal the replicated teacher's.
    for rank in (0, 1):
        report, _ = _read(out, rank)
        assert report["fsdp_max_abs_diff"] < 1e-5
        assert report["fsdp_local_params"] < 0.6 * report["fsdp_full_params"]


@pytest.mark.slow
@pytest.mark.multiprocess
def test_accelerate_launch_with_accumulation_matches_one_process(tmp_path, single_process):
    """accelerate launch, 2 processes x 2 examples x accumulation 2: same as 1 x 8 (counts span both)."""
    out = str(tmp_path / "accelerate")
    launcher = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_ip",
        "127.0.0.1",
        "--main_process_port",
        str(_free_port()),
    ]
    _launch(launcher, out, per_device=2, accum=2)
    _check_matches_reference(out, single_process)


def test_shutdown_in_one_process_releases_the_trainer():
    """shutdown_distributed is safe without a process group and drops the trainer's module references."""
    from conftest import tiny_classification_dataset, tiny_model

    from hf_kd import DistillationConfig, DistillationTrainer
    from hf_kd.distributed import shutdown_distributed

    args = DistillationConfig(output_dir="unused", use_cpu=True, report_to=[], max_steps=1)
    trainer = DistillationTrainer(
        model=tiny_model(seed=0),
        args=args,
        train_dataset=tiny_classification_dataset(n=4),
        teacher_model=tiny_model(seed=1),
    )
    shutdown_distributed(trainer)
    assert trainer.model is None and trainer.model_wrapped is None and trainer.teachers == []
    assert not torch.distributed.is_initialized()
