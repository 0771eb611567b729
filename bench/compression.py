"""Compression benchmark: teacher vs distilled student vs int8 distilled student, measured in one run.

For the embedded default (the demo's models: all-MiniLM-L6-v2 fine-tuned on BBC News, and a 2-layer student
distilled from it), print one table of parameters, size on disk, median latency at batch 1 and 32 (sequence
length 128) and test accuracy on the BBC News test split (`hf_kd.data.load_bbc_news`, same seeded split as the
demo). Optional rows: the student trained without distillation (`--baseline`), and the distilled student with
attention heads pruned then re-distilled from the teacher (`--prune-heads N --recover-steps S`). "int8" quantizes
the linear layers; "int8+emb" also stores the word-embedding table as int8 (most of a small student's bytes).

    hf-kd demo --output-dir hf_kd_demo                 # writes teacher/, student_distilled/, student_baseline/
    python bench/compression.py --demo-dir hf_kd_demo  # the table
    python bench/compression.py --quick                # tiny random models: checks the measuring, no numbers

All rows come from one process, one after another, with the same thread count, so the ratios compare; on a
shared machine the absolute latencies are noisy (the median of `--runs` helps, it does not cure).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import tempfile
import time
from typing import Any

import torch

REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_DIR not in sys.path:
    sys.path.insert(0, REPO_DIR)  # `python bench/compression.py` uses the checkout's hf_kd

from hf_kd.compression import (  # noqa: E402
    compare_models,
    evaluate_accuracy,
    format_comparison_table,
    is_quantized,
    load_model,
    measure_model,
    quantize_dynamic_int8,
)
from hf_kd.pruning import prune_heads  # noqa: E402

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


def _demo_setup(args: argparse.Namespace) -> tuple[dict[str, str], Any]:
    dirs = {k: os.path.join(args.demo_dir, v) for k, v in MODEL_DIRS.items()}
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


# ---- the run ----------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import AutoTokenizer

    tmp = tempfile.TemporaryDirectory()
    if args.quick:
        dirs, data = _quick_setup(tmp.name)
        args.runs, args.warmup = min(args.runs, 2), min(args.warmup, 1)
        args.seq_len = min(args.seq_len, 32)
        args.batch_sizes = [min(b, 4) for b in args.batch_sizes]
        args.prune_heads = args.prune_heads or 2
        args.recover_steps = min(args.recover_steps, 2)
        args.baseline = True
    else:
        dirs, data = _demo_setup(args)
    test = data["test"]
    if args.max_test:
        test = test.select(range(min(args.max_test, len(test))))
    texts, labels = list(test["text"]), list(test["label"])
    tokenizer = AutoTokenizer.from_pretrained(dirs["teacher"])

    teacher = load_model(dirs["teacher"])
    distilled = load_model(dirs["distilled"])
    rows: list[tuple[str, torch.nn.Module]] = [
        ("teacher", teacher),
        ("student distilled", distilled),
        ("student distilled int8", quantize_dynamic_int8(distilled)),
        ("student distilled int8+emb", quantize_dynamic_int8(distilled, embeddings=True)),
    ]
    if args.baseline:
        rows.append(("student no KD", load_model(dirs["baseline"])))
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
        rows.append((f"student distilled -{args.prune_heads} heads", pruned))
        rows.append(
            (
                f"student distilled -{args.prune_heads} heads int8+emb",
                quantize_dynamic_int8(pruned, embeddings=True),
            )
        )

    measurements, scores = [], {}
    for name, model in rows:
        # int8 kernels are CPU-only; compare int8 rows with float rows only when --device is cpu.
        device = "cpu" if is_quantized(model) else args.device
        m = measure_model(model, name, args.batch_sizes, args.seq_len, args.warmup, args.runs, device)
        scores[name] = evaluate_accuracy(
            model, tokenizer, texts, labels, batch_size=32, max_length=args.seq_len
        )
        measurements.append(m)
        print(f"measured {name}: accuracy {scores[name]:.4f}", flush=True)

    table = format_comparison_table(measurements, scores)
    print()
    print(
        f"Compression on {'tiny random models (--quick)' if args.quick else 'BBC News test'} "
        f"({len(texts)} examples); torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.processor() or platform.machine()}"
    )
    print(table)
    comparisons = [
        compare_models(measurements[0], m, scores[measurements[0].name], scores[m.name])
        for m in measurements[1:]
    ]
    result = {
        "measurements": [m.to_dict() for m in measurements],
        "scores": scores,
        "table": table,
        "comparisons": comparisons,
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
