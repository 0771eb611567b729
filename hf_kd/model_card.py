"""Model cards for distilled students: the compression story, rendered through `huggingface_hub.ModelCard`.

A card names the teacher, compares teacher and student (parameters, size on disk, CPU latency, every evaluation
metric, the share of the teacher's score kept), states the recipe (temperature, alpha, intermediate losses, the
resolved layer map, projections, hyperparameters) and shows the training curves of each loss component.

`create_distillation_model_card(trainer)` gathers all of that from a finished `DistillationTrainer`, writes
`README.md`, the plot and `hf_kd_card.json` (everything the card was rendered from) into the output directory.
`render_card_from_context` renders the card again from that JSON alone, which is how `hf-kd push` refreshes the
card of an output directory without the trainer.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import math
import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

logger = logging.getLogger(__name__)

CARD_FILE = "README.md"
CARD_CONTEXT_FILE = "hf_kd_card.json"
PLOT_FILE = "distillation_curves.png"
TEMPLATE_NAME = "distilled_student.md"
CARD_TAGS = ("distillation", "hf-kd")
# Logged loss components, in the order they are drawn.
LOSS_KEYS = ("loss", "loss_kd", "loss_ce", "loss_hidden", "loss_attention", "loss_embedding")
# Evaluation keys that describe the run rather than the model.
_BOOKKEEPING = {
    "runtime",
    "samples_per_second",
    "steps_per_second",
    "model_preparation_time",
    "epoch",
    "step",
}
# Weight files the student is published as (the size on disk is their sum).
WEIGHT_FILE_PATTERNS = (
    r"model\.safetensors",
    r"model-\d+-of-\d+\.safetensors",
    r"pytorch_model\.bin",
    r"pytorch_model-\d+-of-\d+\.bin",
    r"adapter_model\.safetensors",
    r"adapter_model\.bin",
)
# hf-kd task name -> Hub pipeline tag and the Auto class of the usage snippet.
TASK_PIPELINES = {
    "sequence": ("text-classification", "AutoModelForSequenceClassification"),
    "token": ("token-classification", "AutoModelForTokenClassification"),
    "qa": ("question-answering", "AutoModelForQuestionAnswering"),
    "mlm": ("fill-mask", "AutoModelForMaskedLM"),
    "causal": ("text-generation", "AutoModelForCausalLM"),
    "generic": (None, "AutoModel"),
}
# Latency in the card: the median of this many timed forward passes, after the warm-up passes.
LATENCY_RUNS = 10
LATENCY_WARMUP = 2
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def template_path(name: str = TEMPLATE_NAME) -> Path:
    """The card template: inside the installed package (`hf_kd/model_cards`), else the repository's
    top-level `model_cards/` (a source checkout that is not installed)."""
    candidates = [
        Path(__file__).resolve().parent / "model_cards" / name,
        Path(__file__).resolve().parent.parent / "model_cards" / name,
    ]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"model card template {name!r} not found in {[str(c.parent) for c in candidates]}: reinstall hf-kd "
        "(`pip install .`), which packages model_cards/ as hf_kd/model_cards"
    )


# ---- helpers that read a run ------------------------------------------------------------------------------


def weight_files(directory: str | os.PathLike) -> list[str]:
    """Names of the weight files in `directory` (single file, shards or adapter), sorted."""
    if not os.path.isdir(directory):
        return []
    names = os.listdir(directory)
    return sorted(n for n in names if any(re.fullmatch(p, n) for p in WEIGHT_FILE_PATTERNS))


def size_on_disk(directory: str | os.PathLike) -> int | None:
    """Sum of the sizes of the weight files in `directory`, or None when it holds none."""
    files = weight_files(directory)
    if not files:
        return None
    return sum(os.path.getsize(os.path.join(directory, f)) for f in files)


def _hub_id(name: str | None) -> str | None:
    """`name` when it can be a Hub repository id; local paths and empty names give None (the Hub rejects them
    in `base_model`, and a local path says nothing to a reader)."""
    if not name or os.path.exists(name) or os.path.isabs(name):
        return None
    return name if _REPO_ID.fullmatch(name) else None


def _display_name(name: str | None, fallback: str) -> str:
    if not name:
        return fallback
    if os.path.isabs(name) or os.path.exists(name):
        return os.path.basename(os.path.normpath(name)) or fallback
    return name


def split_metrics(metrics: dict[str, Any] | None) -> tuple[dict[str, float], dict[str, float]]:
    """(metrics comparable between teacher and student, student-only distillation figures), prefix stripped.

    The student's `eval_loss` is the distillation objective and the teacher's is plain cross-entropy, so losses
    are never compared; they go with the teacher agreement into the student-only part. When test-split scores
    are present, validation scores are left out, so a figure labelled test is always a test score.
    """
    comparable: dict[str, float] = {}
    student_only: dict[str, float] = {}
    metrics = metrics or {}
    if any(k.startswith("test_") for k in metrics):
        metrics = {k: v for k, v in metrics.items() if not k.startswith("eval_")}
    for key, value in metrics.items():
        name = key.split("_", 1)[1] if "_" in key and key.split("_", 1)[0] in ("eval", "test") else key
        if name in _BOOKKEEPING or not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        if name == "loss" or name.startswith("loss_") or name in ("teacher_agreement", "nonfinite_skipped"):
            student_only[name] = float(value)
        else:
            comparable[name] = float(value)
    return comparable, student_only


def loss_curves(log_history: Iterable[dict[str, Any]]) -> dict[str, dict[str, list[float]]]:
    """{"train": {key: [steps..., values...]}, "eval": {...}} from `trainer.state.log_history`.

    Stored as {"key": {"step": [...], "value": [...]}} so the JSON context can rebuild the plot.
    """
    curves: dict[str, dict[str, Any]] = {"train": {}, "eval": {}}
    for entry in log_history:
        step = entry.get("step")
        if step is None:
            continue
        split, prefix = ("eval", "eval_") if any(k.startswith("eval_") for k in entry) else ("train", "")
        for key in LOSS_KEYS:
            value = entry.get(prefix + key)
            if isinstance(value, (int, float)) and math.isfinite(value):
                curve = curves[split].setdefault(key, {"step": [], "value": []})
                curve["step"].append(step)
                curve["value"].append(float(value))
    return curves


class LinkedFileError(ValueError):
    """A file the card would be written to is a symbolic link."""


def write_file_no_follow(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` as a regular file, never through a symbolic link (a link named README.md in an output
    folder could point at any file of the user's); a link there raises `LinkedFileError` naming it."""
    path = os.fspath(path)
    if os.path.islink(path):
        raise LinkedFileError(
            f"{path} is a symbolic link: the card is never written through a link (it could overwrite the file it "
            "points to); remove the link, or replace it with a copy of the file"
        )
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as err:
        if err.errno == errno.ELOOP:  # a link appeared after the check above
            raise LinkedFileError(
                f"{path} is a symbolic link: the card is never written through a link"
            ) from None
        raise
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def plot_loss_curves(curves: dict[str, dict[str, dict[str, list[float]]]], path: str | os.PathLike) -> bool:
    """Draw each loss component against the step (training, and evaluation when logged) into a PNG.

    Uses `matplotlib.figure.Figure` directly (Agg canvas), so no global pyplot backend is touched.
    Returns False, writing nothing, when no loss was logged.
    """
    splits = [s for s in ("train", "eval") if curves.get(s)]
    if not splits:
        return False
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5 * len(splits), 4.0), dpi=100)
    axes = fig.subplots(1, len(splits), squeeze=False)[0]
    for ax, split in zip(axes, splits):
        for key in LOSS_KEYS:
            curve = curves[split].get(key)
            if not curve:
                continue
            style = "-" if key == "loss" else "--"
            ax.plot(
                curve["step"],
                curve["value"],
                style,
                marker="o" if len(curve["step"]) < 20 else None,
                label=key,
                linewidth=2.0 if key == "loss" else 1.2,
            )
        ax.set_title("training" if split == "train" else "evaluation")
        ax.set_xlabel("global step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    write_file_no_follow(path, buffer.getvalue())
    return True


def _measure(models: dict[str, Any], batch_sizes: tuple[int, ...], seq_len: int) -> dict[str, dict[str, Any]]:
    from .compression import measure_models  # lazy: compression pulls in timing and quantisation helpers

    # The card reports CPU latency: that is where a small student is usually deployed. The models are timed in
    # interleaved rounds, so the speed-up comes from one run.
    measured = measure_models(
        models,
        batch_sizes=batch_sizes,
        seq_len=seq_len,
        device="cpu",
        warmup=LATENCY_WARMUP,
        runs=LATENCY_RUNS,
    )
    result = {}
    for name, m in measured.items():
        measurement = m.to_dict()
        measurement["latency_runs"] = LATENCY_RUNS
        measurement["latency_ms"] = {int(k): float(v) for k, v in measurement.get("latency_ms", {}).items()}
        result[name] = measurement
    return result


def _evaluate_teacher(trainer: Any, teacher: Any) -> dict[str, float]:
    """The teacher's metrics on the trainer's eval_dataset with the same compute_metrics, via a plain Trainer."""
    from transformers import Trainer, TrainingArguments

    a = trainer.args
    with tempfile.TemporaryDirectory(prefix="hf_kd_teacher_eval_") as tmp:
        args = TrainingArguments(
            output_dir=tmp,
            per_device_eval_batch_size=a.per_device_eval_batch_size,
            use_cpu=a.use_cpu,
            bf16=a.bf16,  # the process-wide accelerate state refuses a second precision setting
            fp16=a.fp16,
            label_names=a.label_names,
            remove_unused_columns=a.remove_unused_columns,
            dataloader_num_workers=0,
            report_to="none",
            seed=a.seed,
        )
        evaluator = Trainer(
            model=teacher,
            args=args,
            eval_dataset=trainer.eval_dataset,
            data_collator=trainer.data_collator,
            compute_metrics=trainer.compute_metrics,
            preprocess_logits_for_metrics=trainer.preprocess_logits_for_metrics,
        )
        metrics = evaluator.evaluate()
        del evaluator
    return metrics


def _hyperparameters(trainer: Any) -> dict[str, Any]:
    a = trainer.args
    total_batch = a.per_device_train_batch_size * a.gradient_accumulation_steps * max(a.world_size, 1)
    values = {
        "learning_rate": a.learning_rate,
        "per_device_train_batch_size": a.per_device_train_batch_size,
        "gradient_accumulation_steps": a.gradient_accumulation_steps,
        "processes": a.world_size,
        "total_train_batch_size": total_batch,
        "num_train_epochs": a.num_train_epochs,
        "max_steps": a.max_steps if a.max_steps and a.max_steps > 0 else None,
        "global_steps_trained": trainer.state.global_step,
        "optimizer": str(getattr(a.optim, "value", a.optim)),
        "lr_scheduler_type": str(getattr(a.lr_scheduler_type, "value", a.lr_scheduler_type)),
        "warmup_steps": a.warmup_steps,
        "weight_decay": a.weight_decay,
        "seed": a.seed,
        "bf16": a.bf16,
        "teacher_dtype": getattr(a, "teacher_dtype", None),
    }
    return {k: v for k, v in values.items() if v is not None}


def _versions() -> dict[str, str]:
    import torch
    import transformers
    from huggingface_hub import __version__ as hub_version

    from . import __version__

    return {
        "hf-kd": __version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "huggingface_hub": hub_version,
    }


# ---- the card -----------------------------------------------------------------------------------------------


def _card_metrics(
    trainer: Any, teacher: Any, teacher_metrics: dict | None, student_metrics: dict | None
) -> tuple[dict[str, float], dict[str, float]]:
    """The card's figures: as given, else evaluated now (the student by the trainer, the teacher by a plain
    Trainer), else the student's last logged evaluation (several processes: the card is written on process 0)."""
    single_process = trainer.args.world_size <= 1
    if student_metrics is None:
        if single_process and trainer.eval_dataset is not None:
            student_metrics = trainer.evaluate()
        else:
            logged = [e for e in trainer.state.log_history if any(k.startswith("eval_") for k in e)]
            student_metrics = logged[-1] if logged else {}
    if teacher_metrics is None:
        if teacher is not None and trainer.eval_dataset is not None and single_process:
            teacher_metrics = _evaluate_teacher(trainer, teacher)
        else:
            teacher_metrics = {}
    return teacher_metrics, student_metrics


def _card_measurements(
    student: Any, teacher: Any, measure: bool, batch_sizes: tuple[int, ...], seq_len: int
) -> tuple[dict[str, Any], int]:
    """Parameters, size and CPU latency of the student as published (no projections) and of the teacher."""
    # A synthetic batch longer than the position table would fail; measure at the longest length both allow.
    for model in (student, teacher):
        limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        if isinstance(limit, int) and limit > 0:
            seq_len = min(seq_len, limit)
    measurements: dict[str, Any] = {}
    if measure:
        from .layer_map import without_projections

        models = {"student": student} if teacher is None else {"student": student, "teacher": teacher}
        with without_projections(student):
            measurements = _measure(models, batch_sizes, seq_len)
    return measurements, seq_len


def _card_sizes(teacher: Any, summary: dict[str, Any], output_dir: str) -> tuple[str | None, dict[str, Any]]:
    """Where the teacher came from, and both models' sizes on disk."""
    teacher_source = (
        getattr(getattr(teacher, "config", None), "_name_or_path", None) if teacher is not None else None
    )
    if teacher_source is None and summary.get("teachers"):
        teacher_source = summary["teachers"][0]
    sizes = {"student": size_on_disk(output_dir)}
    if sizes["student"] is None:
        logger.warning(
            "No saved weights in %s yet: the card gives the size the measurement saved to a temporary directory. Call "
            "trainer.save_model() first to report the size on disk.",
            output_dir,
        )
    sizes["teacher"] = (
        size_on_disk(teacher_source) if teacher_source and os.path.isdir(teacher_source) else None
    )
    return teacher_source, sizes


def create_distillation_model_card(
    trainer: Any,
    output_dir: str | os.PathLike | None = None,
    teacher_metrics: dict[str, float] | None = None,
    student_metrics: dict[str, float] | None = None,
    measure: bool = True,
    dataset_name: str | list[str] | None = None,
    license: str | None = None,
    *,
    model_name: str | None = None,
    repo_id: str | None = None,
    teacher_name: str | None = None,
    base_model: str | None = None,
    language: str | list[str] | None = None,
    tags: str | list[str] | None = None,
    pipeline_tag: str | None = None,
    latency_batch_sizes: tuple[int, ...] = (1, 32),
    latency_seq_len: int = 128,
    teacher_model: Any = None,
) -> ModelCard:
    """Write the distillation model card of `trainer`'s student into `output_dir` and return it.

    Args:
        trainer: a `DistillationTrainer` after training (its student is saved in `output_dir`, or will be).
        output_dir: where README.md, the loss plot and `hf_kd_card.json` go (default: `trainer.args.output_dir`).
        teacher_metrics / student_metrics: evaluation results (`eval_`-prefixed or not). When not given, the
            student is evaluated with `trainer.evaluate()` and the teacher with a plain `transformers.Trainer` on
            the same eval_dataset and compute_metrics. With several processes the card is written on process
            zero alone, so only already-logged student metrics are used and the teacher is not evaluated.
        measure: measure parameters, size and CPU latency of both models with `hf_kd.compression.measure_model`.
        dataset_name: Hub dataset id(s) or a description of the training data, for the metadata.
        license: license of the student (for example "apache-2.0"; the teacher's license still applies).
        model_name / repo_id: the card's title and the repository id of the usage snippet.
        teacher_name / base_model: override the names read from the models' configs.
        latency_batch_sizes / latency_seq_len: shapes of the latency measurement.
        teacher_model: the teacher, for a run that read cached teacher outputs (its trainer holds no teacher):
            it is then named, measured and, without `teacher_metrics`, evaluated like a live one.
    """
    output_dir = str(output_dir if output_dir is not None else trainer.args.output_dir)
    os.makedirs(output_dir, exist_ok=True)
    summary = trainer.distillation_summary()
    student = trainer.accelerator.unwrap_model(trainer.model)
    if trainer.teacher is not None and teacher_model is not None and teacher_model is not trainer.teacher:
        raise ValueError(
            "teacher_model names the teacher of a run on cached teacher outputs; this trainer has its own teacher: "
            "leave teacher_model out"
        )
    teacher = trainer.teacher if trainer.teacher is not None else teacher_model
    teacher = getattr(teacher, "module", teacher)
    teacher_metrics, student_metrics = _card_metrics(trainer, teacher, teacher_metrics, student_metrics)
    measurements, latency_seq_len = _card_measurements(
        student, teacher, measure, tuple(latency_batch_sizes), latency_seq_len
    )
    teacher_source, sizes = _card_sizes(teacher, summary, output_dir)

    config = getattr(student, "config", None)
    if base_model is None:
        base_model = _hub_id(getattr(config, "hf_kd_teacher", None)) or _hub_id(
            getattr(config, "_name_or_path", None)
        )
    task = summary.get("task", "generic")
    default_pipeline, auto_class = TASK_PIPELINES.get(task, TASK_PIPELINES["generic"])
    if isinstance(tags, str):
        tags = [tags]
    context = {
        "format": 1,
        "model_name": model_name or Path(output_dir).resolve().name,
        "repo_id": repo_id or trainer.args.hub_model_id or model_name or Path(output_dir).resolve().name,
        "teacher_name": teacher_name or _display_name(teacher_source, "the teacher"),
        "teacher_hub_id": _hub_id(teacher_source),
        "base_model": base_model,
        "dataset_name": dataset_name,
        "license": license,
        "language": language,
        "tags": list(tags or []),
        "pipeline_tag": pipeline_tag or default_pipeline,
        "auto_class": auto_class,
        # Teachers loaded from local folders appear by folder name: the card and its JSON are published.
        "recipe": {**summary, "teachers": [_display_name(t, "teacher") for t in summary.get("teachers", [])]},
        "teacher_metrics": dict(teacher_metrics),
        "student_metrics": dict(student_metrics),
        "measurements": measurements,
        "sizes_on_disk": sizes,
        "latency_batch_sizes": list(latency_batch_sizes),
        "latency_seq_len": latency_seq_len,
        "hyperparameters": _hyperparameters(trainer),
        "curves": loss_curves(trainer.state.log_history),
        "versions": _versions(),
    }
    return render_card_from_context(context, output_dir)


def _fmt_int(n: float | None) -> str:
    return "n/a" if n is None else f"{int(n):,}"


def _fmt_size(n: float | None) -> str:
    return "n/a" if n is None else f"{n / 1e6:.2f} MB ({int(n):,} bytes)"


def _fmt_ms(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f} ms"


def _fmt_metric(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def _ratio(student: float | None, teacher: float | None) -> str:
    if student is None or teacher is None or teacher == 0:
        return "n/a"
    return f"{student / teacher:.1%}"


def comparison_rows(context: dict[str, Any]) -> tuple[list[dict[str, str]], list[str]]:
    """The teacher-versus-student table: one row per measured quantity, with the student/teacher ratio."""
    m = context.get("measurements", {})
    teacher, student = m.get("teacher", {}), m.get("student", {})
    rows: list[dict[str, str]] = []
    notes: list[str] = []

    def add(label: str, t: float | None, s: float | None, fmt: Any) -> None:
        rows.append({"label": label, "teacher": fmt(t), "student": fmt(s), "ratio": _ratio(s, t)})

    if teacher or student:
        add("Parameters", teacher.get("num_parameters"), student.get("num_parameters"), _fmt_int)
        add(
            "Parameters without embeddings",
            teacher.get("num_non_embedding_parameters"),
            student.get("num_non_embedding_parameters"),
            _fmt_int,
        )
    sizes = context.get("sizes_on_disk", {})
    t_size = sizes.get("teacher") if sizes.get("teacher") is not None else teacher.get("size_bytes")
    s_size = sizes.get("student") if sizes.get("student") is not None else student.get("size_bytes")
    if t_size is not None or s_size is not None:
        add("Size of the weights", t_size, s_size, _fmt_size)
        for role, on_disk in (("teacher", sizes.get("teacher")), ("student", sizes.get("student"))):
            if on_disk is None and m.get(role):
                notes.append(
                    f"The {role}'s size is that of its weights saved as safetensors by the measurement."
                )
            elif on_disk is not None:
                notes.append(f"The {role}'s size is the sum of its saved weight files on disk.")
    seq_len = (student or teacher).get("seq_len", context.get("latency_seq_len"))
    device = (student or teacher).get("device", "cpu")
    for bs in context.get("latency_batch_sizes", []):
        t = teacher.get("latency_ms", {}).get(bs, teacher.get("latency_ms", {}).get(str(bs)))
        s = student.get("latency_ms", {}).get(bs, student.get("latency_ms", {}).get(str(bs)))
        if t is not None or s is not None:
            add(f"Latency on {device}, batch size {bs}, sequence length {seq_len} (median)", t, s, _fmt_ms)
    if teacher.get("threads") or student.get("threads"):
        runs = (student or teacher).get("latency_runs", LATENCY_RUNS)
        both = " in alternating rounds of the two models" if teacher and student else ""
        notes.append(
            f"Latency is the median of {runs} timed forward passes{both} (after {LATENCY_WARMUP} warm-up passes) "
            f"with {(student or teacher).get('threads')} CPU threads, at each batch size shown; lower is better, "
            "so a ratio under 100% means the student is faster."
        )
    t_metrics, _ = split_metrics(context.get("teacher_metrics"))
    s_metrics, _ = split_metrics(context.get("student_metrics"))
    for name in sorted(set(t_metrics) | set(s_metrics)):
        add(
            f"{name} ({metrics_split(context.get('student_metrics'))})",
            t_metrics.get(name),
            s_metrics.get(name),
            _fmt_metric,
        )
    if t_metrics and s_metrics:
        notes.append("For evaluation metrics, student / teacher is the share of the teacher's score kept.")
    elif s_metrics:
        notes.append("The teacher was not evaluated in this run, so no share of its score is given.")
    return rows, notes


def metrics_split(metrics: dict[str, Any] | None) -> str:
    """The split the metrics were computed on, from their prefix: "test" when there are `test_*` keys (which
    `split_metrics` then keeps alone), else "eval"."""
    return "test" if any(k.startswith("test_") for k in metrics or {}) else "eval"


def _card_data(context: dict[str, Any]) -> ModelCardData:
    s_metrics, _ = split_metrics(context.get("student_metrics"))
    dataset = context.get("dataset_name")
    dataset_label = dataset if isinstance(dataset, str) else (dataset[0] if dataset else "custom")
    task_type = context.get("pipeline_tag") or "other"
    eval_results = [
        EvalResult(
            task_type=task_type,
            dataset_type=dataset_label,
            dataset_name=dataset_label,
            dataset_split=metrics_split(context.get("student_metrics")),
            metric_type=name,
            metric_name=name,
            metric_value=value,
        )
        for name, value in sorted(s_metrics.items())
    ]
    tags = list(dict.fromkeys([*context.get("tags", []), *CARD_TAGS]))
    extra = {"teacher_model": context.get("teacher_hub_id") or context.get("teacher_name")}
    return ModelCardData(
        model_name=context["model_name"],
        base_model=context.get("base_model"),
        datasets=[dataset] if isinstance(dataset, str) else dataset,
        language=context.get("language"),
        license=context.get("license"),
        library_name="transformers",
        pipeline_tag=context.get("pipeline_tag"),
        tags=tags,
        eval_results=eval_results or None,
        **extra,
    )


def render_card_from_context(
    context: dict[str, Any], output_dir: str | os.PathLike, repo_id: str | None = None
) -> ModelCard:
    """Render README.md (and the loss plot) in `output_dir` from a card context; save the context as
    `hf_kd_card.json` so the card can be rendered again without the trainer (for example by `hf-kd push`)."""
    output_dir = str(output_dir)
    context = dict(context)
    if repo_id is not None:
        context["repo_id"] = repo_id
    plot_file = (
        PLOT_FILE
        if plot_loss_curves(context.get("curves", {}), os.path.join(output_dir, PLOT_FILE))
        else None
    )
    rows, notes = comparison_rows(context)
    _, student_only = split_metrics(context.get("student_metrics"))
    recipe = context["recipe"]
    intermediate = [
        {
            "name": name,
            "weight": recipe.get(f"{name}_weight"),
            "distance": recipe.get("hidden_loss")
            if name in ("hidden", "embedding")
            else "MSE of attention maps",
        }
        for name in ("hidden", "attention", "embedding")
        if (recipe.get(f"{name}_weight") or 0) > 0
    ]
    layer_rows = [
        {
            **p,
            "projection": f"learned linear {p['student_size']} -> {p['teacher_size']}"
            if p["projected"]
            else "none",
        }
        for p in recipe.get("layer_pairs", [])
    ]
    attention_rows = [
        f"student {s} -> teacher {t}"
        for s, t in sorted((int(s), int(t)) for s, t in recipe.get("attention_layers", {}).items())
    ]
    m = context.get("measurements", {})
    compression: dict[str, str] = {}
    t_params = m.get("teacher", {}).get("num_parameters")
    s_params = m.get("student", {}).get("num_parameters")
    if t_params and s_params:
        compression["parameter_ratio"] = _ratio(s_params, t_params)
    # The headline speed-up is the smallest measured (with its batch size), not the most favourable one; the
    # table gives every batch size.
    speedups = {}
    for b in context.get("latency_batch_sizes") or []:
        t_lat = m.get("teacher", {}).get("latency_ms", {}).get(b)
        s_lat = m.get("student", {}).get("latency_ms", {}).get(b)
        if t_lat and s_lat:
            speedups[b] = t_lat / s_lat
    bs = min(speedups, key=speedups.get) if speedups else None
    if bs is not None:
        compression["speedup"] = f"{speedups[bs]:.1f}x"
    t_metrics, _ = split_metrics(context.get("teacher_metrics"))
    s_metrics, _ = split_metrics(context.get("student_metrics"))
    shared = [
        k
        for k in ("accuracy", "f1", "exact_match", "matthews_correlation")
        if k in t_metrics and k in s_metrics
    ]
    shared = shared or sorted(set(t_metrics) & set(s_metrics))
    if shared:
        compression["headline_metric"] = shared[0]
        compression["score_kept"] = _ratio(s_metrics[shared[0]], t_metrics[shared[0]])
    card = ModelCard.from_template(
        _card_data(context),
        template_path=str(template_path()),
        model_name=context["model_name"],
        repo_id=context["repo_id"],
        teacher_name=context["teacher_name"],
        base_model=context.get("base_model"),
        dataset_name=context.get("dataset_name"),
        compression=compression,
        latency_batch_size=bs,
        comparison_rows=rows,
        comparison_notes=notes,
        student_only_metrics=[{"label": k, "value": _fmt_metric(v)} for k, v in sorted(student_only.items())],
        task=recipe.get("task"),
        teacher_placement=recipe.get("teacher_placement"),
        recipe=recipe,
        intermediate_losses=intermediate,
        layer_rows=layer_rows,
        attention_rows=attention_rows,
        hyperparameters=context.get("hyperparameters", {}),
        plot_file=plot_file,
        auto_class=context.get("auto_class", "AutoModel"),
        versions=context.get("versions", {}),
    )
    os.makedirs(output_dir, exist_ok=True)
    write_file_no_follow(os.path.join(output_dir, CARD_FILE), str(card).encode("utf-8"))
    write_file_no_follow(
        os.path.join(output_dir, CARD_CONTEXT_FILE),
        json.dumps(context, indent=2, default=str).encode("utf-8"),
    )
    if context.get("deployment_table"):  # written by hf-kd export; a re-rendered card keeps it
        _write_deployment_section(os.path.join(output_dir, CARD_FILE), context["deployment_table"])
    return card


# ---- deployment (hf-kd export) -----------------------------------------------------------------------------

DEPLOYMENT_START = "<!-- hf-kd deployment -->"
DEPLOYMENT_END = "<!-- /hf-kd deployment -->"


def _write_deployment_section(card_path: str, table: str) -> None:
    """Put the deployment section into the card at `card_path`, replacing an earlier one, else at the end."""
    section = (
        f"{DEPLOYMENT_START}\n## Deployment\n\nExported with `hf-kd export` (ONNX Runtime on CPU; int8 is dynamic "
        f"quantization of the weights). Parity is measured against this model in PyTorch.\n\n{table}\n"
        f"{DEPLOYMENT_END}\n"
    )
    text = ""
    if os.path.isfile(card_path):
        with open(card_path, encoding="utf-8") as f:
            text = f.read()
    if DEPLOYMENT_START in text and DEPLOYMENT_END in text:
        before, rest = text.split(DEPLOYMENT_START, 1)
        after = rest.split(DEPLOYMENT_END, 1)[1].lstrip("\n")
        text = before + section + after
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + section
    write_file_no_follow(card_path, text.encode("utf-8"))


def add_deployment_section(output_dir: str | os.PathLike, deployment: dict[str, Any], table: str) -> str:
    """Write the deployment table (formats, sizes, batch-1 latency, parity) into `output_dir`'s README.md, and
    into its hf_kd_card.json when there is one, so that `hf-kd push` re-rendering the card keeps it. Returns the
    card's path."""
    output_dir = str(output_dir)
    context_path = os.path.join(output_dir, CARD_CONTEXT_FILE)
    if os.path.isfile(context_path):
        with open(context_path, encoding="utf-8") as f:
            context = json.load(f)
        context["deployment"], context["deployment_table"] = deployment, table
        write_file_no_follow(context_path, json.dumps(context, indent=2, default=str).encode("utf-8"))
    card_path = os.path.join(output_dir, CARD_FILE)
    _write_deployment_section(card_path, table)
    return card_path


def load_card_context(output_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The context saved by `create_distillation_model_card`, with latency keys back to ints; None if absent."""
    path = os.path.join(output_dir, CARD_CONTEXT_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        context = json.load(f)
    for measurement in context.get("measurements", {}).values():
        measurement["latency_ms"] = {int(k): v for k, v in measurement.get("latency_ms", {}).items()}
    return context
