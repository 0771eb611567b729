"""Distil into a LoRA student: the student's base weights stay frozen and only low-rank adapters (and the
classification head) learn from the teacher -- a small file to ship, and a cheap run.

    python examples/lora_student.py --tiny                              # offline, seconds
    python examples/lora_student.py --teacher hf-kd-demo/teacher        # after `hf-kd demo`

`DistillationTrainer(..., peft_config=LoraConfig(...))` wraps the student itself; this example falls back to
wrapping it with `peft.get_peft_model` on versions of hf-kd without that argument.
"""

from __future__ import annotations

import argparse
import inspect

from peft import LoraConfig, TaskType, get_peft_model
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from hf_kd import DistillationConfig, DistillationTrainer, make_student, shutdown_distributed
from hf_kd.data import load_bbc_news, tokenize_dataset
from hf_kd.metrics import compute_classification_metrics


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tiny", action="store_true", help="Tiny random models and data (offline, seconds).")
    parser.add_argument("--teacher", default="hf-kd-demo/teacher", help="A teacher fine-tuned on BBC News.")
    parser.add_argument("--student-layers", type=int, default=None)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--output-dir", default="runs/lora_student")
    parser.add_argument("--epochs", type=float, default=2.0)
    args = parser.parse_args()

    if args.tiny:
        from _tiny import WORDS, sentiment_rows, tiny_bert, tiny_tokenizer
        from datasets import ClassLabel, Dataset, DatasetDict

        tokenizer = tiny_tokenizer()
        teacher = tiny_bert("BertForSequenceClassification", tokenizer, list(WORDS), num_layers=2)
        raw = DatasetDict(
            train=Dataset.from_dict(sentiment_rows(64, seed=0)),
            validation=Dataset.from_dict(sentiment_rows(24, seed=1)),
        )
        raw = raw.cast_column("label", ClassLabel(names=list(WORDS)))
        max_length = 32
    else:
        tokenizer = AutoTokenizer.from_pretrained(args.teacher)
        teacher = AutoModelForSequenceClassification.from_pretrained(args.teacher)
        raw, max_length = load_bbc_news(seed=42), 128
    data = tokenize_dataset(raw, tokenizer, max_length)

    student = make_student(
        teacher, num_layers=args.student_layers or max(1, teacher.config.num_hidden_layers // 2)
    )
    # LoRA on the attention projections; peft's SEQ_CLS task type keeps the classifier head trainable.
    lora = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=args.rank,
        lora_alpha=2 * args.rank,
        lora_dropout=0.0,
        target_modules=["query", "value"],
    )
    extra = {}
    if "peft_config" in inspect.signature(DistillationTrainer.__init__).parameters:
        extra["peft_config"] = lora
    else:
        student = get_peft_model(student, lora)

    trainer = DistillationTrainer(
        model=student,
        args=DistillationConfig(
            output_dir=args.output_dir,
            num_train_epochs=args.epochs,
            learning_rate=1e-3,  # adapters start at zero and take a larger step than full fine-tuning
            per_device_train_batch_size=32,
            temperature=2.0,
            alpha=0.7,
            eval_strategy="epoch",
            save_strategy="no",
            logging_steps=5,
            report_to="none",
        ),
        teacher_model=teacher,
        train_dataset=data["train"],
        eval_dataset=data["validation"],
        processing_class=tokenizer,
        compute_metrics=compute_classification_metrics,
        **extra,
    )
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in trainer.model.parameters())
    print(f"trainable parameters: {trainable:,} of {total:,} ({trainable / total:.1%})")
    trainer.train()
    metrics = trainer.evaluate()
    print({k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)})
    trainer.save_model(args.output_dir)  # the adapter (PeftModel.from_pretrained(base, dir) loads it)

    # Under torchrun / accelerate launch: wait for every process, then end the process group (gloo can abort
    # at interpreter exit otherwise). Harmless in a single process.
    shutdown_distributed(trainer)


if __name__ == "__main__":
    main()
