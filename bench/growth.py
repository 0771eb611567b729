"""Growth: time per epoch of a live-teacher distillation as the training set doubles and as the length doubles.

    python -m bench.growth            # 500 / 1,000 / 2,000 examples at length 128; lengths 64 / 128 / 256 at 500
    python -m bench.growth --quick    # tiny sizes, epoch times extrapolated from a few steps

Data: BBC News, all 2,225 articles pooled (split does not matter for timing) and subsampled with a fixed seed; the
fine-tuned MiniLM-L6 teacher and a 2-layer student, batch 32, `DistillationTrainer` with the live teacher, logits
only. Nearly every article is longer than 256 tokens, so every batch is padded to the full max length.

Full mode trains whole epochs and reports their wall time; `--steps N` (and --quick) instead times N steps and
extrapolates: epoch time = median step time x steps per epoch (the page says which was done).
"""

from __future__ import annotations

import argparse
import math
import os
import time
from typing import Any

from bench.common import (
    BBC_TEACHER_RECIPE,
    QUICK_TEACHER_RECIPE,
    RESULTS_DIR,
    TaskSpec,
    base_args,
    finetuned_teacher,
    load_raw,
    load_tokenizer,
    machine_info,
    machine_line,
    markdown_table,
    median,
    quiet_trainer,
    quiet_transformers,
    save_json,
    step_timer_callback,
)


def epoch_time(
    teacher: Any, tokenizer: Any, texts: Any, max_length: int, batch_size: int, steps: int | None
) -> dict[str, float]:
    """Seconds for one epoch over `texts` (a Dataset with text/label): measured, or extrapolated from `steps`."""
    from datasets import DatasetDict

    from hf_kd import DistillationConfig, DistillationTrainer, make_student
    from hf_kd.data import tokenize_dataset

    train = tokenize_dataset(DatasetDict(train=texts), tokenizer, max_length=max_length)["train"]
    steps_per_epoch = math.ceil(len(train) / batch_size)
    timer = step_timer_callback()
    limit = {"max_steps": min(steps, steps_per_epoch)} if steps else {"num_train_epochs": 1}
    args = DistillationConfig(
        **base_args(
            os.path.join(RESULTS_DIR, "tmp", "growth"), 0, per_device_train_batch_size=batch_size, **limit
        ),
        teacher_dtype="float32",  # the measured recipe (the default would pick the teacher's dtype by measurement)
    )
    trainer = DistillationTrainer(
        model=make_student(teacher, num_layers=2),
        args=args,
        teacher_model=teacher,
        train_dataset=train,
        processing_class=tokenizer,
        callbacks=[timer],
    )
    start = time.perf_counter()
    quiet_trainer(trainer).train()
    wall = time.perf_counter() - start
    step = median(timer.times[1:] or timer.times)
    return {
        "examples": len(train),
        "max_length": max_length,
        "steps_per_epoch": steps_per_epoch,
        "median_step_seconds": step,
        "epoch_seconds": step * steps_per_epoch if steps else wall,
        "measured": not steps,
    }


def run(quick: bool = False, steps: int | None = None, log: Any = print) -> dict[str, Any]:
    from datasets import concatenate_datasets

    quiet_transformers()
    if quick:
        sizes, lengths, base_size, base_length, batch_size, steps = (
            [16, 32, 64],
            [16, 32, 64],
            32,
            32,
            8,
            steps or 3,
        )
        spec, recipe = TaskSpec("bbc_news", 32, 96, 32), QUICK_TEACHER_RECIPE
    else:
        # The length series runs at 500 examples, so its length-128 point is the size series' first point (one
        # measurement serves both) and the length-256 epoch stays near a minute.
        sizes, lengths, base_size, base_length, batch_size = [500, 1000, 2000], [64, 128, 256], 500, 128, 32
        spec, recipe = TaskSpec("bbc_news", 128), BBC_TEACHER_RECIPE
    machine = machine_info()  # the machine and its load when the measurement starts
    teacher, _ = finetuned_teacher(spec, 0, recipe)  # seed 0: the teacher of step_cost.py and quality.py
    teacher.eval()
    tokenizer = load_tokenizer()
    raw = load_raw(TaskSpec("bbc_news"))
    pool = concatenate_datasets([raw["train"], raw["validation"], raw["test"]]).shuffle(seed=0)
    measured: dict[tuple[int, int], dict[str, Any]] = {}

    def point(n: int, length: int) -> dict[str, Any]:
        if (n, length) not in measured:
            measured[n, length] = epoch_time(
                teacher, tokenizer, pool.select(range(n)), length, batch_size, steps
            )
            log(f"growth: {n} examples, length {length}: {measured[n, length]['epoch_seconds']:.1f} s/epoch")
        return measured[n, length]

    by_size = [point(n, base_length) for n in sizes]
    by_length = [point(base_size, length) for length in lengths]
    return {
        "machine": machine,
        "quick": quick,
        "steps": steps,
        "batch_size": batch_size,
        "by_size": by_size,
        "by_length": by_length,
    }


def report(data: dict[str, Any]) -> str:
    how = (
        f"epoch time extrapolated from {data['steps']} timed steps (median step x steps per epoch)"
        if data["steps"]
        else "whole epochs measured (wall time of `trainer.train()`)"
    )

    def table(rows: list[dict[str, Any]], key: str, label: str) -> str:
        first = rows[0]["epoch_seconds"]
        return markdown_table(
            [label, "steps / epoch", "median s / step", "s / epoch", "ratio to first"],
            [
                [
                    r[key],
                    r["steps_per_epoch"],
                    f"{r['median_step_seconds']:.3f}",
                    f"{r['epoch_seconds']:.1f}",
                    f"{r['epoch_seconds'] / first:.2f}",
                ]
                for r in rows
            ],
        )

    return (
        f"Live-teacher distillation, batch {data['batch_size']}; {how}.\n\n"
        f"Training set doubling (length {data['by_size'][0]['max_length']}):\n\n"
        + table(data["by_size"], "examples", "training examples")
        + f"\n\nSequence length doubling ({data['by_length'][0]['examples']} examples):\n\n"
        + table(data["by_length"], "max_length", "max length")
        + "\n"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--steps", type=int, help="time this many steps per point and extrapolate the epoch")
    parser.add_argument("--output")
    args = parser.parse_args(argv)
    data = run(args.quick, args.steps, log=lambda m: print(m, flush=True))
    save_json(
        data, args.output or os.path.join(RESULTS_DIR, "growth_quick.json" if args.quick else "growth.json")
    )
    print(machine_line(data["machine"]))
    print(report(data))


if __name__ == "__main__":
    main()
