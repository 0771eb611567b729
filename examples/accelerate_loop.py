"""Distil in your own training loop: `hf_kd.DistillationObjective` with Accelerate, no Trainer.

The objective is the same one `DistillationTrainer` uses: it picks the KD and hard losses for the head, the
positions they cover and their item counts, and attaches the learned projections to the student (so build it
before the optimizer, and the optimizer sees them).

    python examples/accelerate_loop.py --tiny                    # tiny random models, seconds, offline
    accelerate launch examples/accelerate_loop.py --tiny         # the same loop on several processes
"""

from __future__ import annotations

import argparse

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from transformers import default_data_collator

from hf_kd import DistillationObjective
from hf_kd.objective import split_batch


def distil(
    student, teacher, train_dataset, settings, steps, batch_size=8, lr=1e-3, seed=0, max_grad_norm=1.0
):
    """Train `student` for `steps` optimizer steps on `train_dataset` (tokenized, equal-length rows)."""
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    set_seed(seed)
    objective = DistillationObjective(settings, student, teacher)  # projections join the student here
    optimizer = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0.0)
    loader = DataLoader(train_dataset, batch_size=batch_size, shuffle=True, collate_fn=default_data_collator)
    student, optimizer, loader = accelerator.prepare(student, optimizer, loader)
    teacher = teacher.to(accelerator.device).eval().requires_grad_(False)
    objective.set_teachers([teacher])
    student.train()
    step, history = 0, []
    while step < steps:
        for batch in loader:
            inputs = split_batch(batch)[0]  # the model inputs, without labels or cached teacher columns
            outputs = student(**inputs, **objective.forward_kwargs)
            teacher_outputs = objective.teacher_outputs(inputs, accelerator.autocast())
            result = objective(outputs, teacher_outputs, batch)  # divides by this batch's item counts
            accelerator.backward(result.loss)
            if max_grad_norm:
                accelerator.clip_grad_norm_(student.parameters(), max_grad_norm)
            optimizer.step()
            optimizer.zero_grad()
            history.append({k: v.item() for k, v in result.components.items()} | {"loss": result.loss.item()})
            step += 1
            if step >= steps:
                break
    return accelerator.unwrap_model(student), history


def tiny_setup(n: int = 32, seq_len: int = 12):
    """A tiny teacher, a 1-layer student cut from it, and `n` tokenized sentiment rows (offline)."""
    import os
    import sys

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _tiny import WORDS, sentiment_rows, tiny_bert, tiny_tokenizer
    from datasets import Dataset

    from hf_kd import make_student

    tokenizer = tiny_tokenizer()
    teacher = tiny_bert("BertForSequenceClassification", tokenizer, list(WORDS), num_layers=2)
    student = make_student(teacher, num_layers=1)
    rows = sentiment_rows(n, seed=0)
    encoded = tokenizer(rows["text"], padding="max_length", truncation=True, max_length=seq_len)
    data = Dataset.from_dict({**encoded, "labels": rows["label"]}).with_format("torch")
    return teacher, student, data


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tiny", action="store_true", required=True, help="Tiny random models and data.")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    teacher, student, data = tiny_setup()
    _, history = distil(
        student, teacher, data, {"temperature": 2.0, "alpha": 0.5, "hidden_weight": 1.0}, args.steps
    )
    for i in (0, len(history) - 1):
        print(f"step {i + 1}: " + ", ".join(f"{k}={v:.4f}" for k, v in history[i].items()))


if __name__ == "__main__":
    main()
