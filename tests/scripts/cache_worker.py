"""Build a teacher cache in every process of a torchrun launch; see tests/test_cache.py.

Run: torchrun --nproc_per_node 2 tests/scripts/cache_worker.py --cache-dir DIR

The teacher, dataset and settings come from `cache_case()`, which the test also calls in its own (single) process,
so the two builds have the same cache key when hf-kd gets the key right.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # tests/, for conftest


def cache_case():
    """(teacher, dataset, keyword arguments): token classification with top-k, so rows have different lengths."""
    import torch
    from conftest import tiny_classification_dataset, tiny_model

    teacher = tiny_model("BertForTokenClassification", seed=1, num_layers=2, hidden=48, num_labels=5)
    with torch.no_grad():
        teacher.classifier.weight.mul_(10.0)
    data = tiny_classification_dataset(n=13, seq_len=10, seed=4).remove_columns("labels")
    return teacher, data, {"batch_size": 4, "top_k": 3, "temperature": 2.0}


def main(cache_dir: str) -> None:
    import torch

    from hf_kd import cache_teacher_outputs
    from hf_kd.cache import read_cache_metadata
    from hf_kd.distributed import shutdown_distributed

    teacher, data, kwargs = cache_case()
    cached = cache_teacher_outputs(teacher, data, cache_dir=cache_dir, **kwargs)
    rank = torch.distributed.get_rank()
    report = {
        "rank": rank,
        "world_size": torch.distributed.get_world_size(),
        "rows": len(cached),
        "fingerprint": cached._fingerprint,
        "cache_files": [os.path.basename(f["filename"]) for f in cached.cache_files],
        "metadata": read_cache_metadata(cached),
    }
    with open(os.path.join(cache_dir, f"report-rank{rank}.json"), "w") as f:
        json.dump(report, f)
    del cached, teacher
    shutdown_distributed()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--cache-dir", required=True)
    main(parser.parse_args().cache_dir)
