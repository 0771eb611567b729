"""Shared helpers: tiny randomly initialised models built from configs, and tiny datasets. No downloads."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

VOCAB = 99
LABELS = ["neg", "neu", "pos"]


def tiny_bert_config(num_layers: int = 2, hidden: int = 32, heads: int = 4, num_labels: int = 3, **kw):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        num_hidden_layers=num_layers,
        num_attention_heads=heads,
        intermediate_size=hidden * 2,
        max_position_embeddings=64,
        num_labels=num_labels,
        id2label={i: n for i, n in enumerate(LABELS[:num_labels])} if num_labels == 3 else None,
        label2id={n: i for i, n in enumerate(LABELS[:num_labels])} if num_labels == 3 else None,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        **kw,
    )


def tiny_model(cls_name: str = "BertForSequenceClassification", seed: int = 0, **kw):
    import transformers

    torch.manual_seed(seed)
    config = tiny_bert_config(**kw)
    return getattr(transformers, cls_name)(config)


def tiny_classification_dataset(
    n: int = 16, seq_len: int = 12, num_labels: int = 3, seed: int = 0, pad: bool = True
):
    """Random token ids with variable lengths (right padding) and labels, as a datasets.Dataset."""
    from datasets import Dataset

    g = torch.Generator().manual_seed(seed)
    rows = {"input_ids": [], "attention_mask": [], "labels": []}
    for _ in range(n):
        length = int(torch.randint(4, seq_len + 1, (1,), generator=g)) if pad else seq_len
        ids = torch.randint(5, VOCAB, (length,), generator=g).tolist()
        ids = [2] + ids[1:]
        rows["input_ids"].append(ids + [0] * (seq_len - length))
        rows["attention_mask"].append([1] * length + [0] * (seq_len - length))
        rows["labels"].append(int(torch.randint(0, num_labels, (1,), generator=g)))
    return Dataset.from_dict(rows)


# TrainingArguments fields for quick CPU tests: batch 4, no saving, log every step. Shared by make_args and by tests
# that build a plain TrainingArguments with the same settings.
QUICK_ARGS = dict(
    per_device_train_batch_size=4,
    per_device_eval_batch_size=4,
    report_to=[],
    use_cpu=True,
    save_strategy="no",
    logging_steps=1,
    learning_rate=1e-3,
    seed=0,
    disable_tqdm=True,
)


def make_args(out: str, **kw):
    """A DistillationConfig with QUICK_ARGS for quick CPU tests; `kw` overrides.

    The teacher runs in float32 (`teacher_dtype="auto"` would pick bfloat16 on a CPU with bfloat16 instructions):
    tests compare with float32 arithmetic done by hand; `auto` has its own tests in test_placement.py."""
    from hf_kd import DistillationConfig

    return DistillationConfig(**{"output_dir": out, **QUICK_ARGS, "teacher_dtype": "float32", **kw})


@pytest.fixture
def tmp_out(tmp_path):
    return str(tmp_path / "out")
