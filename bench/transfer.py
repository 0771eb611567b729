"""Label-scarce distillation with a transfer set: does the teacher's labelling of unlabelled text help?

BBC News with 100 labelled training articles (stratified, one draw per seed) and the other 1,458 training
articles with their labels hidden. Per seed: the MiniLM-L6 teacher is fine-tuned on the 100 labelled articles;
a 2-layer student cut from it is trained three ways with the same hyperparameters:

- `no KD`: plain fine-tuning on the 100 (alpha = 0);
- `KD`: distillation on the 100 (alpha = 0.5, T = 2);
- `KD + transfer`: the same, plus the 1,458 unlabelled articles (`unlabeled_dataset`, 4 per labelled one in each
  batch), which take the KD term only.

The teacher's logits are cached once per seed for both sets. It prints mean +- std of test accuracy (445
articles), the paired per-seed differences with their standard errors, and the share of the mean no-KD-to-teacher gap
that each student closes.

    python -m bench.transfer [--seeds 5] [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

from bench.common import (
    RESULTS_DIR,
    base_args,
    load_json,
    load_tokenizer,
    machine_info,
    machine_line,
    markdown_table,
    quiet_trainer,
    quiet_transformers,
    save_json,
    teacher_path,
)
from bench.common import split_accuracy as accuracy_on

LABELLED = 100
STUDENT_LAYERS = 2
TEACHER = dict(num_train_epochs=8, learning_rate=1e-4, per_device_train_batch_size=16, bf16=True)
STUDENT = dict(num_train_epochs=8, learning_rate=5e-4, per_device_train_batch_size=16)
TRANSFER_EPOCHS = 2  # an epoch with the transfer set covers 1,458 unlabelled articles (365 bundles)
VARIANTS = ("no KD", "KD", "KD + transfer")


def _splits(seed: int, quick: bool) -> tuple[Any, Any, Any, Any]:
    from hf_kd.data import load_bbc_news, tokenize_dataset

    raw = load_bbc_news(seed=42)
    tokenizer = load_tokenizer()
    data = tokenize_dataset(raw, tokenizer, max_length=64 if quick else 128)
    picked = data["train"].train_test_split(train_size=LABELLED, seed=seed, stratify_by_column="labels")
    labelled, unlabelled = picked["train"], picked["test"].remove_columns("labels")
    test = data["test"]
    if quick:
        unlabelled, test = unlabelled.select(range(200)), test.select(range(100))
    return labelled, unlabelled, test, tokenizer


def run_seed(seed: int, quick: bool, log: Any = print) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForSequenceClassification, Trainer, TrainingArguments

    from hf_kd import DistillationConfig, DistillationTrainer, cache_teacher_outputs, make_student

    labelled, unlabelled, test, tokenizer = _splits(seed, quick)
    names = labelled.features["labels"].names
    out = os.path.join(RESULTS_DIR, "tmp", "transfer")
    torch.manual_seed(seed)
    teacher = AutoModelForSequenceClassification.from_pretrained(
        teacher_path(),
        num_labels=len(names),
        id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)},
    )
    start = time.perf_counter()
    epochs = {"num_train_epochs": 1} if quick else {}
    args = TrainingArguments(**base_args(out, seed, **{**TEACHER, **epochs}))
    quiet_trainer(
        Trainer(model=teacher, args=args, train_dataset=labelled, processing_class=tokenizer)
    ).train()
    teacher.eval()
    result = {"seed": seed, "teacher": accuracy_on(teacher, test, tokenizer)}
    cached = cache_teacher_outputs(teacher, labelled, tokenizer=tokenizer)
    cached_unlabelled = cache_teacher_outputs(teacher, unlabelled, tokenizer=tokenizer)
    log(f"seed {seed}: teacher {result['teacher']:.4f} ({time.perf_counter() - start:.0f} s)")
    for variant in VARIANTS:
        torch.manual_seed(seed)
        student = make_student(teacher, num_layers=STUDENT_LAYERS)
        settings = dict(STUDENT, alpha=0.0 if variant == "no KD" else 0.5, temperature=2.0)
        if variant == "KD + transfer":
            settings.update(num_train_epochs=TRANSFER_EPOCHS, unlabeled_ratio=4.0)
        if quick:
            settings.update(num_train_epochs=1)
        trainer = DistillationTrainer(
            model=student,
            args=DistillationConfig(**base_args(out, seed, **settings)),
            train_dataset=cached,
            unlabeled_dataset=cached_unlabelled if variant == "KD + transfer" else None,
            processing_class=tokenizer,
        )
        begin = time.perf_counter()
        quiet_trainer(trainer).train()
        result[variant] = accuracy_on(student, test, tokenizer)
        log(f"seed {seed}: {variant} {result[variant]:.4f} ({time.perf_counter() - begin:.0f} s)")
    return result


def _mean_std(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{statistics.mean(values):.4f} +- {sd:.4f}"


def report(runs: list[dict[str, Any]], info: dict[str, Any]) -> str:
    rows = [["teacher (100 labels)", _mean_std([r["teacher"] for r in runs]), "", ""]]
    base = [r["no KD"] for r in runs]
    for variant in VARIANTS:
        values = [r[variant] for r in runs]
        diffs = [v - b for v, b in zip(values, base)]
        se = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else float("nan")
        # The share of the mean teacher-to-no-KD gap closed (a per-seed ratio explodes where a seed's gap is ~0).
        teacher_gap = statistics.mean(r["teacher"] - b for r, b in zip(runs, base))
        gaps = [statistics.mean(diffs) / teacher_gap] if teacher_gap > 0 else []
        rows.append(
            [
                f"student, {variant}",
                _mean_std(values),
                "" if variant == "no KD" else f"{statistics.mean(diffs):+.4f} +- {se:.4f}",
                "" if variant == "no KD" or not gaps else f"{statistics.mean(gaps):.0%}",
            ]
        )
    headers = ["model", "test accuracy (mean +- std)", "paired diff. vs no KD (+- s.e.)", "gap closed"]
    return f"{machine_line(info)}; {len(runs)} seeds\n\n" + markdown_table(headers, rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="1 epoch, 200 unlabelled and 100 test articles")
    parser.add_argument("--report", action="store_true", help="Print the table of the saved results only.")
    a = parser.parse_args(argv)
    quiet_transformers()
    info = machine_info()
    path = os.path.join(RESULTS_DIR, "transfer_quick.json" if a.quick else "transfer.json")
    # Seeds already in the results file are kept (a rerun resumes); each new seed is saved as soon as it ends.
    runs = load_json(path)["runs"] if os.path.isfile(path) else []
    if a.report:
        print(report(runs, load_json(path)["machine"]))
        return
    for seed in range(a.seeds):
        if any(r["seed"] == seed for r in runs):
            continue
        runs.append(run_seed(seed, a.quick))
        save_json({"machine": info, "runs": runs}, path)
    print(report(runs, info))


if __name__ == "__main__":
    main()
