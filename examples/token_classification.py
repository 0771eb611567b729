"""Distil a token classifier (NER, tagging) with DistillationTrainer.

Only the positions that carry a label enter the KD term (`kd_positions="labelled"`, the default): with the
usual label alignment that is the first sub-token of each word, exactly the positions the hard loss sees.
`kd_positions="all"` distils every non-padding position instead.

    python examples/token_classification.py --tiny                                  # offline, seconds
    python examples/token_classification.py --teacher my-ner-teacher --dataset conll2003   # online
"""

from __future__ import annotations

import argparse

from transformers import AutoModelForTokenClassification, AutoTokenizer, DataCollatorForTokenClassification

from hf_kd import DistillationConfig, DistillationTrainer, make_student, shutdown_distributed


def align_labels(batch, tokenizer, max_length: int):
    """Tokenise pre-split words; label each word's first sub-token, and -100 (ignored) elsewhere."""
    encoded = tokenizer(batch["tokens"], is_split_into_words=True, truncation=True, max_length=max_length)
    labels = []
    for i, tags in enumerate(batch["ner_tags"]):
        previous, row = None, []
        for word in encoded.word_ids(batch_index=i):
            row.append(-100 if word is None or word == previous else tags[word])
            previous = word
        labels.append(row)
    encoded["labels"] = labels
    return encoded


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tiny", action="store_true", help="Tiny random models and data (offline, seconds).")
    parser.add_argument("--teacher", default=None, help="A token classifier fine-tuned on --dataset.")
    parser.add_argument(
        "--dataset", default="conll2003", help="A datasets Hub name with tokens/ner_tags columns."
    )
    parser.add_argument("--student-layers", type=int, default=None)
    parser.add_argument("--output-dir", default="runs/token_classification")
    parser.add_argument("--epochs", type=float, default=2.0)
    args = parser.parse_args()

    from datasets import Dataset, DatasetDict, load_dataset

    if args.tiny:
        from _tiny import tagging_rows, tiny_bert, tiny_tokenizer

        tokenizer = tiny_tokenizer()
        train, validation = tagging_rows(64, seed=0), tagging_rows(16, seed=1)
        tags = train.pop("tag_names")
        validation.pop("tag_names")
        raw = DatasetDict(train=Dataset.from_dict(train), validation=Dataset.from_dict(validation))
        teacher = tiny_bert("BertForTokenClassification", tokenizer, tags, num_layers=2)
    else:
        if not args.teacher:
            parser.error(
                "--teacher is required without --tiny (a token classifier fine-tuned on the dataset)"
            )
        raw = load_dataset(args.dataset)
        tokenizer = AutoTokenizer.from_pretrained(args.teacher)
        teacher = AutoModelForTokenClassification.from_pretrained(args.teacher)

    data = raw.map(
        lambda b: align_labels(b, tokenizer, 128), batched=True, remove_columns=raw["train"].column_names
    )
    student = make_student(
        teacher, num_layers=args.student_layers or max(1, teacher.config.num_hidden_layers // 2)
    )

    trainer = DistillationTrainer(
        model=student,
        args=DistillationConfig(
            output_dir=args.output_dir,
            num_train_epochs=args.epochs,
            learning_rate=5e-4,
            per_device_train_batch_size=16,
            temperature=2.0,
            alpha=0.5,
            kd_positions="labelled",
            eval_strategy="epoch",
            save_strategy="no",
            logging_steps=5,
            report_to="none",
        ),
        teacher_model=teacher,
        train_dataset=data["train"],
        eval_dataset=data["validation"],
        processing_class=tokenizer,
        data_collator=DataCollatorForTokenClassification(tokenizer),
    )
    trainer.train()
    metrics = trainer.evaluate()
    print({k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)})
    trainer.save_model(args.output_dir)

    # Under torchrun / accelerate launch: wait for every process, then end the process group (gloo can abort
    # at interpreter exit otherwise). Harmless in a single process.
    shutdown_distributed(trainer)


if __name__ == "__main__":
    main()
