"""Seconds per training step with a live teacher, with cached teacher logits, and for plain fine-tuning.

    python bench/teacher_cache.py            # MiniLM-L6 teacher, 2-layer student, BBC News, batch 32, length 128
    python bench/teacher_cache.py --quick    # a few tiny steps: checks that the script runs

Same student initialisation (hf_kd.make_student, teacher layers 3 and 6), same data and batch order in all three
setups:
  (a) DistillationTrainer with the live teacher (a teacher forward every step);
  (b) DistillationTrainer on cached teacher logits (hf_kd.cache_teacher_outputs; no teacher forward);
  (c) plain transformers.Trainer fine-tuning the student alone on the labels.
The three are measured in interleaved rounds (a, b, c, a, b, c, ...) so that a change in the machine's load hits
all three alike. Each round trains a fresh copy of the student for warm-up + measured steps; the first steps of a
round (allocations, first-call overheads) are dropped. A step is timed two ways by a TrainerCallback:
  - wall: from one step's end to the next one's (includes fetching and collating the batch), the headline figure;
  - compute: on_step_begin -> on_step_end (forward, backward, optimizer step).
The table gives the median over all measured steps and the ratios between the medians. The teacher is the embedded
all-MiniLM-L6-v2 with a new 5-class head (not fine-tuned: step time does not depend on the weights' values).
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from bench.common import (  # noqa: E402
    RESULTS_DIR,
    TaskSpec,
    base_args,
    load_task,
    machine_info,
    machine_line,
    markdown_table,
    median,
    quiet_transformers,
    save_json,
    teacher_path,
)

SETUPS = {
    "live": "DistillationTrainer, live teacher",
    "cached": "DistillationTrainer, cached logits",
    "plain": "Trainer, student alone (no teacher)",
}


def step_clock() -> Any:
    """A TrainerCallback recording each optimizer step's compute time and the wall time between step ends."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.compute: list[float] = []
            self.wall: list[float] = []
            self._begin: float | None = None
            self._last_end: float | None = None

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self._begin = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            now = time.perf_counter()
            if self._begin is not None:
                self.compute.append(now - self._begin)
            if self._last_end is not None:
                self.wall.append(now - self._last_end)  # batch fetch + collation + step + callbacks
            self._last_end = now

    return StepClock()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes and few steps: checks the script runs"
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per setup")
    parser.add_argument("--steps", type=int, default=10, help="measured steps per round")
    parser.add_argument("--warmup", type=int, default=2, help="steps dropped at the start of each round")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--num-layers", type=int, default=2, help="student depth (teacher has 6)")
    parser.add_argument("--train-size", type=int, default=None, help="training examples (default: enough)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--output", default=None, help="JSON file for the figures")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.steps, args.warmup = 2, 2, 1
        args.batch_size, args.max_length = 8, 32
    steps_per_round = args.steps + args.warmup + 1  # +1: the first step has no previous end for its wall time
    if args.train_size is None:
        args.train_size = steps_per_round * args.batch_size
    if args.train_size < steps_per_round * args.batch_size:
        parser.error(
            f"--train-size must be at least {steps_per_round * args.batch_size} for one epoch of a round"
        )
    if args.output is None:
        args.output = os.path.join(
            RESULTS_DIR, "teacher_cache_quick.json" if args.quick else "teacher_cache.json"
        )
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    quiet_transformers()
    from transformers import AutoModelForSequenceClassification, PrinterCallback, Trainer, TrainingArguments

    from hf_kd import DistillationConfig, DistillationTrainer, cache_teacher_outputs, make_student

    info = machine_info()
    print(machine_line(info))

    spec = TaskSpec("bbc_news", max_length=args.max_length, train_size=args.train_size)
    _, tokenized, tokenizer = load_task(spec)
    train = tokenized["train"]
    torch.manual_seed(0)
    teacher = AutoModelForSequenceClassification.from_pretrained(teacher_path(), num_labels=5).eval()
    student = make_student(teacher, num_layers=args.num_layers)
    steps_per_round = args.steps + args.warmup + 1

    start = time.perf_counter()
    cached = cache_teacher_outputs(teacher, train, batch_size=args.batch_size, tokenizer=tokenizer)
    cache_seconds = time.perf_counter() - start

    def run(setup: str, workdir: str) -> Any:
        clock = step_clock()
        common = base_args(
            workdir, seed=0, max_steps=steps_per_round, per_device_train_batch_size=args.batch_size,
            learning_rate=5e-4,
        )  # fmt: skip
        model = copy.deepcopy(student)
        if setup == "plain":
            trainer = Trainer(
                model=model, args=TrainingArguments(**common), train_dataset=train, processing_class=tokenizer,
                callbacks=[clock],
            )  # fmt: skip
        else:
            trainer = DistillationTrainer(
                model, DistillationConfig(**common, temperature=2.0, alpha=0.5),
                train_dataset=cached if setup == "cached" else train, processing_class=tokenizer,
                teacher_model=teacher if setup == "live" else None, callbacks=[clock],
            )  # fmt: skip
        trainer.remove_callback(PrinterCallback)  # keep the output to the figures
        trainer.train()
        # wall[i] ends at step i + 2; keep steps after the warm-up
        return clock.compute[args.warmup + 1 :], clock.wall[args.warmup :]

    compute: dict[str, list[float]] = {s: [] for s in SETUPS}
    wall: dict[str, list[float]] = {s: [] for s in SETUPS}
    with tempfile.TemporaryDirectory() as workdir:
        for r in range(args.rounds):
            for setup in SETUPS:
                c, w = run(setup, workdir)
                compute[setup] += c
                wall[setup] += w
            print(
                f"round {r + 1}/{args.rounds}: "
                + ", ".join(f"{s} {median(wall[s][-args.steps :]):.3f} s/step" for s in SETUPS),
                flush=True,
            )

    med = {s: median(wall[s]) for s in SETUPS}
    med_compute = {s: median(compute[s]) for s in SETUPS}
    rows = [
        [
            SETUPS[s], med[s], med_compute[s], f"{min(wall[s]):.3f}-{max(wall[s]):.3f}", len(wall[s]),
            f"{med[s] / med['plain']:.2f}x", f"{med[s] / med['live']:.2f}x",
        ]
        for s in SETUPS
    ]  # fmt: skip
    teacher_params = sum(p.numel() for p in teacher.parameters()) / 1e6
    student_params = sum(p.numel() for p in student.parameters()) / 1e6
    print()
    print(
        f"BBC News, {len(train)} training examples, batch {args.batch_size}, max length {args.max_length}; "
        f"teacher all-MiniLM-L6-v2 ({teacher_params:.1f}M parameters, 6 layers), student "
        f"{args.num_layers} layers ({student_params:.1f}M) from make_student; {args.rounds} interleaved rounds x "
        f"{args.steps} measured steps"
    )
    print(
        markdown_table(
            ["setup", "s/step (wall, median)", "s/step (compute, median)", "wall range", "steps",
             "vs plain fine-tuning", "vs live teacher"],
            rows,
        )
    )  # fmt: skip
    saved = med["live"] - med["cached"]
    per_epoch_steps = -(-len(train) // args.batch_size)
    print(
        f"\nCaching the teacher's outputs once took {cache_seconds:.1f} s for {len(train)} examples "
        f"({cache_seconds / per_epoch_steps:.3f} s per batch of {args.batch_size}); cached logits save "
        f"{saved:.3f} s per step against the live teacher"
        + (f", so caching pays for itself after {cache_seconds / saved:.0f} steps." if saved > 0 else ".")
    )
    result = {
        "machine": info,
        "settings": {k: v for k, v in vars(args).items() if k != "output"},
        "train_examples": len(train),
        "cache_seconds": cache_seconds,
        "median_wall_s_per_step": med,
        "median_compute_s_per_step": med_compute,
        "wall_s_per_step": wall,
        "compute_s_per_step": compute,
        "ratio_cached_vs_plain": med["cached"] / med["plain"],
        "ratio_live_vs_plain": med["live"] / med["plain"],
        "ratio_cached_vs_live": med["cached"] / med["live"],
    }
    save_json(result, args.output)
    print(f"figures saved to {os.path.relpath(args.output)}")
    return result


if __name__ == "__main__":
    main()
