"""Pick a student for a latency budget, by measuring candidates on this machine (`hf-kd size`).

    hf-kd size --teacher runs/teacher --latency-ms 10 [--batch-size 1 --seq-len 128 --runtime onnx-int8]

Candidates are a grid of depths x widths built from the teacher with `make_student` (the weights do not change
the speed, so they start at random here; distillation later starts them by weight selection):
- depths: 1 .. the teacher's layers (or `--layers`);
- widths: the teacher's hidden size times 1, 3/4, 2/3, 1/2, 1/3 and 1/4, each rounded down to a multiple of
  the teacher's head size (or `--widths`); heads follow the width (same head size) and the FFN keeps the
  teacher's ratio, which is what `hf-kd distill --student_hidden_size` builds.

Each candidate runs in the chosen runtime: PyTorch float32 (`torch`), ONNX Runtime float32 (`onnx`) or ONNX
Runtime dynamic int8 (`onnx-int8`). The timing is interleaved: after `warmup` untimed passes of every candidate,
each of `runs` rounds times one forward pass of every candidate in turn, so a burst of load on a shared machine
hits all candidates alike; the median per candidate is its latency, and throughput is batch size / latency.
Size is the weight file as deployed (safetensors, or the ONNX file).

The pick is the candidate with the most parameters whose median latency is within the budget (ties: the
faster), printed with the flags that build it in `hf-kd distill`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

RUNTIMES = ("torch", "onnx", "onnx-int8")
WIDTH_FRACTIONS = (1.0, 3 / 4, 2 / 3, 1 / 2, 1 / 3, 1 / 4)

__all__ = [
    "Candidate",
    "candidate_grid",
    "measure_candidates",
    "pick_candidate",
    "distill_flags",
    "format_size_table",
    "add_size_arguments",
    "run_size_command",
]


@dataclass
class Candidate:
    """One student shape and what it measured. Latency in milliseconds (median), throughput in examples/s."""

    layers: int
    hidden_size: int
    num_attention_heads: int
    intermediate_size: int
    parameters: int = 0
    size_bytes: int = 0
    latency_ms: float = float("nan")
    throughput: float = float("nan")
    times_ms: list[float] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def candidate_grid(
    config: Any, layers: Sequence[int] | None = None, widths: Sequence[int] | None = None
) -> list[tuple[int, int]]:
    """(layers, hidden size) pairs, deepest and widest first."""
    head_dim = config.hidden_size // config.num_attention_heads
    depths = sorted(set(layers or range(1, int(config.num_hidden_layers) + 1)), reverse=True)
    if widths is None:
        widths = {max(head_dim, int(config.hidden_size * f) // head_dim * head_dim) for f in WIDTH_FRACTIONS}
    bad = [w for w in widths if w % head_dim or not 0 < w <= config.hidden_size]
    if bad:
        raise ValueError(
            f"widths {bad}: a student width is a multiple of the teacher's head size {head_dim}, up to its hidden "
            f"size {config.hidden_size}"
        )
    bad = [d for d in depths if not 1 <= d <= config.num_hidden_layers]
    if bad:
        raise ValueError(
            f"layers {bad}: the teacher has 1..{config.num_hidden_layers} layers to build students from"
        )
    return [(d, w) for d in depths for w in sorted(set(widths), reverse=True)]


def _build(
    teacher: nn.Module, layers: int, hidden: int, runtime: str, workdir: str
) -> tuple[Candidate, Any, dict[str, torch.Tensor] | None]:
    """The candidate's record, a callable forward pass, and (for torch) its input names."""
    from .compression import count_parameters, model_size_bytes
    from .student import make_student

    student = make_student(teacher, num_layers=layers, hidden_size=hidden, init="random").eval()
    config = student.config
    intermediate = int(getattr(config, "intermediate_size", None) or config.hidden_dim)
    candidate = Candidate(layers, hidden, int(config.num_attention_heads), intermediate)
    candidate.parameters = count_parameters(student)[0]
    if runtime == "torch":
        candidate.size_bytes = model_size_bytes(student)
        return candidate, student, None
    from .export import OnnxClassifier, export_onnx, quantize_onnx_int8

    path = export_onnx(student, os.path.join(workdir, f"l{layers}_h{hidden}.onnx"))
    if runtime == "onnx-int8":
        path = quantize_onnx_int8(path, path.replace(".onnx", "_int8.onnx"))
    session = OnnxClassifier(path)
    candidate.size_bytes = session.size_bytes()
    return candidate, session, None


def measure_candidates(
    teacher: nn.Module,
    grid: Sequence[tuple[int, int]],
    batch_size: int = 1,
    seq_len: int = 128,
    runtime: str = "torch",
    warmup: int = 2,
    runs: int = 10,
) -> list[Candidate]:
    """Build every candidate of `grid` and time them interleaved (module docstring)."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime={runtime!r} is not one of {list(RUNTIMES)}")
    if runs < 1 or warmup < 0 or batch_size < 1 or seq_len < 1:
        raise ValueError(
            f"need runs >= 1, warmup >= 0, batch_size >= 1, seq_len >= 1 (got {runs}, {warmup}, "
            f"{batch_size}, {seq_len})"
        )
    max_positions = getattr(teacher.config, "max_position_embeddings", None)
    if max_positions is not None and seq_len > max_positions:
        raise ValueError(f"seq_len={seq_len} exceeds the teacher's max_position_embeddings={max_positions}")
    from .compression import time_runners
    from .export import runner_input_names

    teacher = teacher.float().cpu().eval()
    with tempfile.TemporaryDirectory() as workdir:
        built = [_build(teacher, layers, hidden, runtime, workdir) for layers, hidden in grid]
        runners = {str(i): run for i, (_, run, _) in enumerate(built)}
        times = time_runners(runners, teacher.config, batch_size, seq_len, warmup, runs, runner_input_names)
        for i, (candidate, _, _) in enumerate(built):
            candidate.times_ms = times[str(i)]
            candidate.latency_ms = statistics.median(candidate.times_ms)
            candidate.throughput = batch_size / candidate.latency_ms * 1000.0
        return [c for c, _, _ in built]


def pick_candidate(candidates: Sequence[Candidate], latency_ms: float) -> Candidate | None:
    """The candidate with the most parameters whose latency is within `latency_ms` (ties: the faster);
    None when none is."""
    fitting = [c for c in candidates if c.latency_ms <= latency_ms]
    if not fitting:
        return None
    return max(fitting, key=lambda c: (c.parameters, -c.latency_ms))


def distill_flags(candidate: Candidate) -> str:
    """The `hf-kd distill` flags that build this student from the teacher (by weight selection)."""
    return f"--student_layers {candidate.layers} --student_hidden_size {candidate.hidden_size}"


def format_size_table(candidates: Sequence[Candidate], latency_ms: float, pick: Candidate | None) -> str:
    header = [
        "Layers",
        "Hidden",
        "Heads",
        "FFN",
        "Parameters",
        "Size (MB)",
        "Latency (ms)",
        "Throughput (ex/s)",
        "Fits",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for c in candidates:
        fits = "yes" if c.latency_ms <= latency_ms else "no"
        if c is pick:
            fits = "**pick**"
        lines.append(
            f"| {c.layers} | {c.hidden_size} | {c.num_attention_heads} | {c.intermediate_size} | "
            f"{c.parameters / 1e6:.2f}M | {c.size_bytes / 1e6:.1f} | {c.latency_ms:.2f} | {c.throughput:.1f} | {fits} |"
        )
    return "\n".join(lines)


# ---- hf-kd size -------------------------------------------------------------------------------------------


def add_size_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of `hf-kd size --teacher DIR --latency-ms X`."""
    parser.add_argument("--teacher", required=True, help="the teacher's folder (save_pretrained)")
    parser.add_argument("--latency-ms", type=float, required=True, help="the latency budget per forward pass")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--runtime", default="torch", choices=list(RUNTIMES))
    parser.add_argument(
        "--layers", type=int, nargs="+", default=None, help="depths to try (default: 1..teacher's)"
    )
    parser.add_argument(
        "--widths", type=int, nargs="+", default=None, help="hidden sizes to try (default: a grid)"
    )
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--runs", type=int, default=10, help="timed rounds (median per candidate)")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads (also ONNX Runtime's)"
    )
    parser.add_argument("--json", dest="json_path", default=None, help="also write the table as JSON")
    return parser


def run_size_command(args: argparse.Namespace) -> dict[str, Any]:
    """Measure the grid, print the table and the pick; returns both as data."""
    import json

    from .compression import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    teacher = load_model(args.teacher)
    grid = candidate_grid(teacher.config, args.layers, args.widths)
    candidates = measure_candidates(
        teacher, grid, args.batch_size, args.seq_len, args.runtime, args.warmup, args.runs
    )
    pick = pick_candidate(candidates, args.latency_ms)
    table = format_size_table(candidates, args.latency_ms, pick)
    print(
        f"Candidates from {args.teacher} ({args.runtime}, batch {args.batch_size}, length {args.seq_len}, "
        f"{torch.get_num_threads()} threads; median of {args.runs} interleaved rounds)"
    )
    print(table)
    if pick is None:
        fastest = min(candidates, key=lambda c: c.latency_ms)
        print(
            f"\nNo candidate fits {args.latency_ms:g} ms: the fastest, {fastest.layers} layers x {fastest.hidden_size}, "
            f"took {fastest.latency_ms:.2f} ms. Raise the budget, lower --batch-size or --seq-len, or try "
            "--runtime onnx-int8."
        )
    else:
        print(
            f"\nLargest under {args.latency_ms:g} ms: {pick.layers} layers x hidden {pick.hidden_size} "
            f"({pick.parameters / 1e6:.2f}M parameters, {pick.latency_ms:.2f} ms).\n"
            f"hf-kd distill --teacher_model_name_or_path {args.teacher} {distill_flags(pick)} ..."
        )
    result = {
        "candidates": [c.to_dict() for c in candidates],
        "pick": pick.to_dict() if pick is not None else None,
        "flags": distill_flags(pick) if pick is not None else None,
        "latency_ms": args.latency_ms,
        "runtime": args.runtime,
        "table": table,
    }
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(result, f, indent=2)
    return result
