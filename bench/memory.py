"""Memory: peak resident memory (RSS) of a live-teacher distillation against plain fine-tuning of the student.

    python -m bench.memory            # MiniLM-L6 teacher, 2-layer student, BBC News, batch 32, length 128, 10 steps
    python -m bench.memory --quick    # tiny sizes

Each configuration runs in a fresh Python process (a process's peak RSS never goes down, so sharing one would
mix them up). The parent saves the 2-layer student and the cached-logit training set first, so a configuration
without a live teacher never loads the teacher. The child loads what its configuration needs, records its RSS
before training, trains `steps` steps, and reports its resident high-water mark, VmHWM from /proc/self/status
(`resource.getrusage(...).ru_maxrss` is kept in the JSON too, but Linux carries a forking parent's peak across exec
into it, so under a big parent such as run_all.py it reports the parent's peak).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from typing import Any

from bench.common import (
    BBC_TEACHER_RECIPE,
    QUICK_TEACHER_RECIPE,
    REPO_DIR,
    RESULTS_DIR,
    TaskSpec,
    TeacherRecipe,
    base_args,
    finetuned_teacher,
    load_task,
    machine_info,
    machine_line,
    markdown_table,
    quiet_trainer,
    quiet_transformers,
    save_json,
)

CONFIGS = {
    "plain": "plain Trainer, student alone",
    "cached": "DistillationTrainer, cached teacher logits",
    "live": "DistillationTrainer, live teacher, logits",
    "hidden": "DistillationTrainer, live teacher, logits + hidden states",
}


def _status_mib(field: str) -> float:
    """A memory field of /proc/self/status (VmRSS: resident now, VmHWM: resident high-water mark), in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _paths(quick: bool) -> tuple[str, str]:
    base = os.path.join(RESULTS_DIR, "tmp", f"memory{'_quick' if quick else ''}")
    return os.path.join(base, "student"), os.path.join(base, "cached_train")


def _setting(quick: bool) -> tuple[TaskSpec, TeacherRecipe]:
    if quick:
        return TaskSpec("bbc_news", 32, 96, 32), QUICK_TEACHER_RECIPE
    return TaskSpec("bbc_news", 128), BBC_TEACHER_RECIPE


def prepare(quick: bool) -> None:
    """In the parent: save the 2-layer student and the cached-logit training set, so that a child that trains
    without a teacher never loads one (its weights would stay in the peak)."""
    from hf_kd import cache_teacher_outputs, make_student

    spec, recipe = _setting(quick)
    _, tokenized, tokenizer = load_task(spec)
    teacher, _ = finetuned_teacher(spec, 0, recipe)  # seed 0: the teacher step_cost.py and quality.py use
    student_dir, cached_dir = _paths(quick)
    make_student(teacher, num_layers=2).save_pretrained(student_dir)
    cached = cache_teacher_outputs(
        teacher, tokenized["train"], batch_size=64, tokenizer=tokenizer, device="cpu"
    )
    cached.save_to_disk(cached_dir)


def child(config: str, quick: bool, steps: int, batch_size: int) -> dict[str, Any]:
    """Runs in the fresh process: train `steps` steps of one configuration, return RSS figures in MiB."""
    from datasets import load_from_disk
    from transformers import AutoModelForSequenceClassification, Trainer, TrainingArguments

    from hf_kd import DistillationConfig, DistillationTrainer

    quiet_transformers()
    spec, recipe = _setting(quick)
    _, tokenized, tokenizer = load_task(spec)
    student_dir, cached_dir = _paths(quick)
    student = AutoModelForSequenceClassification.from_pretrained(student_dir)
    train = load_from_disk(cached_dir) if config == "cached" else tokenized["train"]
    teacher = finetuned_teacher(spec, 0, recipe)[0] if config in ("live", "hidden") else None
    common = base_args(
        os.path.join(RESULTS_DIR, "tmp", "memory"), 0, max_steps=steps, per_device_train_batch_size=batch_size
    )
    if config == "plain":
        trainer = Trainer(
            model=student, args=TrainingArguments(**common), train_dataset=train, processing_class=tokenizer
        )
    else:
        args = DistillationConfig(
            **common, hidden_weight=1.0 if config == "hidden" else 0.0, teacher_dtype="float32"
        )
        trainer = DistillationTrainer(
            model=student, args=args, teacher_model=teacher, train_dataset=train, processing_class=tokenizer
        )
    before = _status_mib("VmRSS")
    quiet_trainer(trainer).train()
    # VmHWM is this process image's own high-water mark. getrusage's ru_maxrss is not: Linux carries the
    # forking parent's peak across exec into it, so a child of a big parent would report the parent's peak.
    peak = _status_mib("VmHWM")
    return {
        "rss_before_training_mib": before,
        "peak_rss_mib": peak,
        "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux reports KiB
    }


def run(quick: bool = False, steps: int | None = None, log: Any = print) -> dict[str, Any]:
    steps = steps or (3 if quick else 10)
    batch_size = 8 if quick else 32
    max_length = 32 if quick else 128
    machine = machine_info()  # the machine and its load when the measurement starts
    prepare(quick)
    results = {}
    for config in CONFIGS:
        cmd = [sys.executable, "-m", "bench.memory", "--child", config, "--steps", str(steps)]
        if quick:
            cmd.append("--quick")
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO_DIR)
        line = next(line for line in out.stdout.splitlines() if line.startswith("@@"))
        results[config] = json.loads(line[2:])
        log(f"memory: {config} peak {results[config]['peak_rss_mib']:.0f} MiB")
    return {
        "machine": machine,
        "quick": quick,
        "steps": steps,
        "batch_size": batch_size,
        "max_length": max_length,
        "results": results,
    }


def report(data: dict[str, Any]) -> str:
    res = data["results"]
    plain = res["plain"]["peak_rss_mib"]
    rows = [
        [
            label,
            f"{res[c]['rss_before_training_mib']:.0f}",
            f"{res[c]['peak_rss_mib']:.0f}",
            f"{res[c]['peak_rss_mib'] / plain:.2f}",
        ]
        for c, label in CONFIGS.items()
        if c in res
    ]
    return (
        f"{data['steps']} training steps at batch {data['batch_size']}, max length {data['max_length']}, each "
        "configuration in a fresh process; RSS in MiB.\n\n"
        + markdown_table(["configuration", "RSS before training", "peak RSS", "peak / plain"], rows)
        + "\n"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--output")
    parser.add_argument("--child", choices=list(CONFIGS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        result = child(args.child, args.quick, args.steps, 8 if args.quick else 32)
        print("@@" + json.dumps(result), flush=True)
        return
    data = run(args.quick, args.steps, log=lambda m: print(m, flush=True))
    save_json(
        data, args.output or os.path.join(RESULTS_DIR, "memory_quick.json" if args.quick else "memory.json")
    )
    print(machine_line(data["machine"]))
    print(report(data))


if __name__ == "__main__":
    main()
