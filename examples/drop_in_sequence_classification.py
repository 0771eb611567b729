"""Distil a sequence classifier with the Trainer script you already have: one line changes.

    # before: plain fine-tuning
    trainer = Trainer(model=student, args=TrainingArguments(...), train_dataset=train, ...)
    # after: the same student learns from a fine-tuned teacher
    trainer = DistillationTrainer(model=student, args=DistillationConfig(...), teacher_model=teacher,
                                  train_dataset=train, ...)

`DistillationConfig` is `TrainingArguments` plus the distillation fields (temperature, alpha, hidden_weight,
...), so the rest of the arguments stay as they were. Everything else -- the datasets, collator, callbacks,
evaluation, checkpoints -- is Trainer's own.

Run it:

    python examples/drop_in_sequence_classification.py --tiny                # tiny random models, seconds
    hf-kd demo && python examples/drop_in_sequence_classification.py \\
        --teacher hf-kd-demo/teacher                                         # real: MiniLM-L6 on BBC News
"""

from __future__ import annotations

import argparse

from transformers import AutoModelForSequenceClassification, AutoTokenizer, TrainingArguments  # noqa: F401

from hf_kd import DistillationConfig, DistillationTrainer, make_student, shutdown_distributed
from hf_kd.data import load_bbc_news, tokenize_dataset
from hf_kd.metrics import compute_classification_metrics


def load_tiny():
    from _tiny import WORDS, sentiment_rows, tiny_bert, tiny_tokenizer
    from datasets import ClassLabel, Dataset, DatasetDict

    tokenizer = tiny_tokenizer()
    teacher = tiny_bert("BertForSequenceClassification", tokenizer, list(WORDS), num_layers=2)
    data = DatasetDict(
        train=Dataset.from_dict(sentiment_rows(64, seed=0)),
        validation=Dataset.from_dict(sentiment_rows(24, seed=1)),
    )
    data = data.cast_column("label", ClassLabel(names=list(WORDS)))
    return teacher, tokenizer, data, 32


def load_real(teacher_path: str):
    tokenizer = AutoTokenizer.from_pretrained(teacher_path)
    teacher = AutoModelForSequenceClassification.from_pretrained(
        teacher_path
    )  # already fine-tuned on the task
    return teacher, tokenizer, load_bbc_news(seed=42), 128


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tiny", action="store_true", help="Tiny random models and data (offline, seconds).")
    parser.add_argument("--teacher", default="hf-kd-demo/teacher", help="A teacher fine-tuned on BBC News.")
    parser.add_argument("--student-layers", type=int, default=None, help="Student depth (default: half).")
    parser.add_argument("--output-dir", default="runs/drop_in")
    parser.add_argument("--epochs", type=float, default=2.0)
    args = parser.parse_args()

    teacher, tokenizer, raw, max_length = load_tiny() if args.tiny else load_real(args.teacher)
    data = tokenize_dataset(raw, tokenizer, max_length)
    # A student built from the teacher: half its layers, copied, plus its embeddings and head.
    student = make_student(
        teacher, num_layers=args.student_layers or max(1, teacher.config.num_hidden_layers // 2)
    )

    common = dict(
        output_dir=args.output_dir,
        num_train_epochs=args.epochs,
        learning_rate=5e-4,
        per_device_train_batch_size=32,
        eval_strategy="epoch",
        save_strategy="no",
        logging_steps=5,
        report_to="none",
    )
    # ---- the one-line change ---------------------------------------------------------------------------
    # trainer = Trainer(
    #     model=student, args=TrainingArguments(**common),
    trainer = DistillationTrainer(
        model=student,
        args=DistillationConfig(**common, temperature=2.0, alpha=0.5, hidden_weight=1.0),
        teacher_model=teacher,
        # ---------------------------------------------------------------------------------------------------
        train_dataset=data["train"],
        eval_dataset=data["validation"],
        processing_class=tokenizer,
        compute_metrics=compute_classification_metrics,
    )
    trainer.train()
    metrics = trainer.evaluate()
    print({k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)})
    trainer.save_model(args.output_dir)  # the student alone, loadable with from_pretrained

    # Under torchrun / accelerate launch: wait for every process, then end the process group (gloo can abort
    # at interpreter exit otherwise). Harmless in a single process.
    shutdown_distributed(trainer)


if __name__ == "__main__":
    main()
