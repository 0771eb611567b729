"""Tuning the distillation: temperature, alpha and the intermediate-layer weights, with Trainer's own
`hyperparameter_search` (optuna backend), scored on the validation split.

    best, table = tune_distillation(
        model_init=lambda: AutoModelForSequenceClassification.from_pretrained("student-init"),
        teacher_model=teacher, args=DistillationConfig(output_dir="tune", num_train_epochs=1),
        train_dataset=train, eval_dataset=validation, n_trials=8,
    )
    print(best.hyperparameters)   # {'temperature': 4.0, 'alpha': 0.61, 'hidden_weight': 0.0}
    print(table)                  # one markdown row per trial

Why the metric defaults to validation accuracy rather than `eval_loss`: the distillation loss itself depends on
T and alpha (alpha * T^2 * KL + (1 - alpha) * CE), so its value is not comparable across trials.

Search space: a dict `{field: values}` where a list is a categorical choice and a 2-tuple `(low, high)` a
uniform float range (`(low, high, "log")` for a log scale); any `DistillationConfig` field may appear
(learning_rate too). Or pass a function `trial -> dict`, as `Trainer.hyperparameter_search` takes.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from .config import DistillationConfig

# Hinton et al. and PKD search temperatures of a few powers of two / tens, alpha over most of [0, 1].
DEFAULT_SEARCH_SPACE: dict[str, Any] = {
    "temperature": [1.0, 2.0, 4.0, 8.0],
    "alpha": (0.2, 0.9),
    "hidden_weight": [0.0, 1.0],
}
STUDY_NAME = "hf-kd-tune"


def make_hp_space(search_space: Mapping[str, Any] | Callable[[Any], dict[str, Any]] | None) -> Callable:
    """An optuna `hp_space(trial) -> dict` from a search-space dict (see module docstring)."""
    if callable(search_space):
        return search_space
    space = dict(DEFAULT_SEARCH_SPACE if search_space is None else search_space)
    names = {f for f in DistillationConfig.__dataclass_fields__}
    unknown = sorted(set(space) - names)
    if unknown:
        raise ValueError(
            f"search space names {unknown}, which are not DistillationConfig fields: use names such as "
            "temperature, alpha, hidden_weight, attention_weight, embedding_weight, learning_rate"
        )
    for name, values in space.items():
        ok = (isinstance(values, list) and values) or (
            isinstance(values, tuple) and len(values) in (2, 3) and float(values[0]) <= float(values[1])
        )
        if not ok:
            raise ValueError(
                f"search space for {name!r} is {values!r}: give a non-empty list of choices, or a (low, high) "
                "tuple for a float range ((low, high, 'log') for a log scale)"
            )

    def hp_space(trial: Any) -> dict[str, Any]:
        params = {}
        for name, values in space.items():
            if isinstance(values, list):
                params[name] = trial.suggest_categorical(name, values)
            else:
                log = len(values) == 3 and values[2] == "log"
                params[name] = trial.suggest_float(name, float(values[0]), float(values[1]), log=log)
        return params

    return hp_space


def in_search_space(
    hyperparameters: Mapping[str, Any], search_space: Mapping[str, Any] | None = None
) -> bool:
    """True when every value lies in its list of choices or its (low, high) range."""
    space = DEFAULT_SEARCH_SPACE if search_space is None else search_space
    for name, values in space.items():
        value = hyperparameters.get(name)
        if value is None:
            return False
        if isinstance(values, list):
            if value not in values:
                return False
        elif not float(values[0]) <= float(value) <= float(values[1]):
            return False
    return True


def format_trials_table(study: Any, metric: str) -> str:
    """One markdown row per trial: number, state, objective, parameters; the best trial is marked."""
    trials = sorted(study.trials, key=lambda t: t.number)
    names = sorted({k for t in trials for k in t.params})
    try:
        best = study.best_trial.number
    except ValueError:  # no trial finished
        best = None
    header = ["Trial", "State", metric, *names]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for t in trials:
        value = "-" if t.value is None else f"{t.value:.4f}"
        cells = [f"{t.number}{' (best)' if t.number == best else ''}", t.state.name, value]
        cells += [_fmt(t.params.get(n)) for n in names]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def tune_distillation(
    model_init: Callable[..., nn.Module],
    teacher_model: nn.Module | list[nn.Module],
    args: DistillationConfig,
    train_dataset: Any,
    eval_dataset: Any,
    n_trials: int = 10,
    search_space: Mapping[str, Any] | Callable[[Any], dict[str, Any]] | None = None,
    compute_metrics: Callable[[Any], dict[str, float]] | None = None,
    direction: str = "maximize",
    metric: str = "eval_accuracy",
    seed: int | None = None,
    **trainer_kwargs: Any,
) -> tuple[Any, str]:
    """Search distillation hyperparameters; returns (best run, trials table in markdown).

    Args:
        model_init: returns a fresh student (Trainer calls it once per trial; it may take the optuna trial).
        teacher_model: the trained teacher (or ensemble), shared by all trials.
        args: the fixed settings of every trial; searched fields are overwritten per trial.
        train_dataset / eval_dataset: training data, and the validation split that scores each trial.
        n_trials: number of optuna trials.
        search_space: dict (see module docstring) or `trial -> dict`; default `DEFAULT_SEARCH_SPACE`
            (T in {1, 2, 4, 8}, alpha in [0.2, 0.9], hidden_weight in {0, 1}).
        compute_metrics: default `hf_kd.metrics.compute_classification_metrics` (`eval_accuracy`, `eval_f1`).
        direction / metric: optimise `metric` of `evaluate()` in this direction.
        seed: seed of optuna's TPE sampler (default `args.seed`), so a search repeats.
        trainer_kwargs: passed to `DistillationTrainer` (data_collator, processing_class, callbacks, ...).

    Returns:
        `transformers.trainer_utils.BestRun` (`run_id`, `objective`, `hyperparameters`) and the table.
    """
    import optuna

    from .trainer import DistillationTrainer

    if direction not in ("maximize", "minimize"):
        raise ValueError(f"direction={direction!r} must be 'maximize' or 'minimize'")
    if n_trials < 1:
        raise ValueError(f"n_trials={n_trials} must be at least 1")
    if eval_dataset is None:
        raise ValueError("tuning scores each trial on the validation split: pass eval_dataset=...")
    hp_space = make_hp_space(search_space)
    if compute_metrics is None:
        from .metrics import compute_classification_metrics as compute_metrics

    def objective(metrics: dict[str, float]) -> float:
        if metric not in metrics:
            raise ValueError(
                f"metric={metric!r} is not among the evaluation metrics {sorted(metrics)}: pass one of them, "
                "or a compute_metrics that returns it"
            )
        return float(metrics[metric])

    trainer = DistillationTrainer(
        model_init=model_init,
        args=args,
        teacher_model=teacher_model,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        compute_metrics=compute_metrics,
        **trainer_kwargs,
    )
    # The study lives in this storage so that we can read every trial back for the table.
    storage = optuna.storages.InMemoryStorage()
    sampler = optuna.samplers.TPESampler(seed=args.seed if seed is None else seed)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    best_run = trainer.hyperparameter_search(
        hp_space=hp_space,
        compute_objective=objective,
        n_trials=n_trials,
        direction=direction,
        backend="optuna",
        study_name=STUDY_NAME,
        storage=storage,
        sampler=sampler,
    )
    study = optuna.load_study(study_name=STUDY_NAME, storage=storage)
    return best_run, format_trials_table(study, metric)


# ---- hf-kd tune ----------------------------------------------------------------------------------------------


def add_tune_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of `hf-kd tune --teacher DIR --student DIR --data (bbc_news | TRAIN_FILE) ...`."""
    parser.add_argument("--teacher", required=True, help="folder of the teacher fine-tuned on the task")
    parser.add_argument(
        "--student",
        required=True,
        help="folder of the student's initial weights (e.g. from hf_kd.make_student), reloaded for every trial",
    )
    parser.add_argument(
        "--data",
        default="bbc_news",
        help="'bbc_news' (embedded), or a local csv/json/jsonl/parquet training file with text and label columns",
    )
    parser.add_argument("--validation-file", default=None, help="validation file (default: 10%% of --data)")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--label-column", default="label")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--max-train-examples", type=int, default=None)
    parser.add_argument("--max-eval-examples", type=int, default=None)
    parser.add_argument("--n-trials", type=int, default=10)
    parser.add_argument(
        "--search-space",
        default=None,
        help='JSON: {"temperature": [1, 2, 4, 8], "alpha": [0.2, 0.9]}; a 2-item list of floats under '
        '"range" is a float range, e.g. {"alpha": {"range": [0.2, 0.9]}} (default: T, alpha, hidden_weight)',
    )
    parser.add_argument("--metric", default="eval_accuracy")
    parser.add_argument("--direction", default="maximize", choices=["maximize", "minimize"])
    parser.add_argument("--output-dir", default="hf-kd-tune")
    parser.add_argument("--num-train-epochs", type=float, default=1.0)
    parser.add_argument("--max-steps", type=int, default=-1)
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--use-cpu", action="store_true")
    parser.add_argument("--json", dest="json_path", default=None, help="also write the result here as JSON")
    return parser


def parse_search_space(text: str | None) -> dict[str, Any] | None:
    """The JSON form of a search space: lists are choices, {"range": [low, high]} (optionally "log": true)
    is a float range."""
    if text is None:
        return None
    if os.path.isfile(text):
        with open(text) as f:
            text = f.read()
    raw = json.loads(text)
    space: dict[str, Any] = {}
    for name, value in raw.items():
        if isinstance(value, dict) and "range" in value:
            low, high = value["range"]
            space[name] = (float(low), float(high), "log") if value.get("log") else (float(low), float(high))
        elif isinstance(value, list):
            space[name] = [float(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value]
        else:
            raise ValueError(
                f"search space entry {name}={value!r}: use a list of choices or {{'range': [lo, hi]}}"
            )
    return space


def run_tune_command(args: argparse.Namespace) -> dict[str, Any]:
    """Load teacher, student initialisation and data, run `tune_distillation`, print best setting and table."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

    from .data import label_maps, load_bbc_news, load_local_dataset, tokenize_dataset

    if args.data == "bbc_news":
        data = load_bbc_news(seed=args.seed)
    else:
        files = {"train": args.data}
        if args.validation_file:
            files["validation"] = args.validation_file
        data = load_local_dataset(files, args.text_column, args.label_column, seed=args.seed)
    id2label, label2id = label_maps(data)
    tokenizer = AutoTokenizer.from_pretrained(args.teacher)
    encoded = tokenize_dataset(data, tokenizer, max_length=args.max_length)
    train, validation = encoded["train"], encoded["validation"]
    if args.max_train_examples:
        train = train.select(range(min(args.max_train_examples, len(train))))
    if args.max_eval_examples:
        validation = validation.select(range(min(args.max_eval_examples, len(validation))))
    teacher = AutoModelForSequenceClassification.from_pretrained(args.teacher)

    def model_init() -> nn.Module:
        return AutoModelForSequenceClassification.from_pretrained(
            args.student, num_labels=len(id2label), id2label=id2label, label2id=label2id
        )

    config = DistillationConfig(
        output_dir=args.output_dir,
        num_train_epochs=args.num_train_epochs,
        max_steps=args.max_steps,
        learning_rate=args.learning_rate,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size,
        seed=args.seed,
        eval_strategy="no",
        save_strategy="no",
        report_to=[],
        use_cpu=args.use_cpu,
    )
    space = parse_search_space(args.search_space)
    best, table = tune_distillation(
        model_init,
        teacher,
        config,
        train,
        validation,
        n_trials=args.n_trials,
        search_space=space,
        direction=args.direction,
        metric=args.metric,
        data_collator=DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
    )
    print(f"Best {args.metric}: {best.objective:.4f} with {json.dumps(best.hyperparameters)}")
    print(table)
    result = {
        "best_run_id": best.run_id,
        "objective": best.objective,
        "hyperparameters": best.hyperparameters,
        "metric": args.metric,
        "table": table,
    }
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(result, f, indent=2)
    return result
