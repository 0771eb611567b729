"""Step cost: seconds per training step of hf-kd against a hand-written PyTorch loop (the floor) and TextBrewer,
and the end-to-end wall time of a 3-epoch distillation with each of hf-kd's speed levers on its own.

    python bench/step_cost.py            # fine-tuned MiniLM-L6 teacher, 2-layer student, BBC News, batch 32, len 128
    python bench/step_cost.py --quick    # tiny sizes: checks every path in a few minutes (figures meaningless)

Per-step methods (all on the same fixed batches, the same teacher-initialised student, the same loss
`alpha * T^2 * KL + (1 - alpha) * CE`, the same fused AdamW that `Trainer` builds, gradient clipping at 1.0):
  floor (live)    hand-written loop: teacher forward under no_grad, student forward + backward, AdamW step
  floor (cached)  the same loop reading precomputed teacher logits (no teacher forward)
  floor (none)    the same loop without a teacher, CE only (the floor of plain fine-tuning)
  hf-kd live      DistillationTrainer, live teacher, logits only
  hf-kd hidden    DistillationTrainer, live teacher, logits + hidden-state MSE (student layers 1, 2 <- teacher 3, 6)
  hf-kd cached    DistillationTrainer on cached teacher logits (hf_kd.cache_teacher_outputs)
  Trainer         plain transformers.Trainer fine-tuning the student alone
  TextBrewer      TextBrewer 0.2.1.post1 BasicDistiller, in its own virtual environment (bench/textbrewer_setup.sh),
                  kd_loss_weight = alpha * T^2 (its soft loss has no T^2 factor), hard_label_weight = 1 - alpha,
                  device "cpu" (its default is CUDA)

Timing: a step is forward + backward + optimizer step. Trainer steps are timed by a TrainerCallback
(on_step_begin -> on_step_end, so batch fetching is outside the window for every method); the floor loop times
the same span with time.perf_counter; TextBrewer is timed from a forward pre-hook on its teacher to a post-hook on
its optimizer's step. Methods run in short bursts, interleaved and rotated over several rounds, so that a change in
the machine's load hits all alike; the first step of each burst (allocations) is dropped; the median is reported.
TextBrewer runs in a worker process of its own environment that stays up across rounds, so it interleaves too.
End to end, each hf-kd lever runs on its own, then the teacher levers together; two further jobs add bfloat16
autocast for the student (`bf16=True`), which changes the student's own arithmetic rather than the teacher's cost,
so they are reported apart, with the test accuracy every job reaches. TextBrewer runs with its live teacher first
and again last (the mean of the two is what hf-kd's jobs are compared with; their difference is the machine's
drift), and once with its own logit cache (`is_caching_logits=True`), so the cache lever is also compared with
TextBrewer's.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bench.common import (  # noqa: E402
    BBC_TEACHER_RECIPE,
    BENCH_DIR,
    QUICK_TEACHER_RECIPE,
    RESULTS_DIR,
    TaskSpec,
    base_args,
    finetuned_teacher,
    load_task,
    machine_info,
    machine_line,
    markdown_table,
    median,
    quiet_trainer,
    quiet_transformers,
    save_json,
    step_timer_callback,
    teacher_path,
    test_accuracy,
)

TEXTBREWER_PYTHON = os.path.join(BENCH_DIR, ".venv-textbrewer", "bin", "python")
TEMPERATURE, ALPHA, HIDDEN_WEIGHT, LEARNING_RATE, MAX_GRAD_NORM = 2.0, 0.5, 1.0, 5e-4, 1.0
# The teacher the quality benchmark fine-tunes for seed 0 (same task, same recipe): one fine-tuning serves both.
TEACHER_SEED = 0

METHODS = {
    "floor_live": "hand-written loop, live teacher (the floor)",
    "floor_cached": "hand-written loop, cached teacher logits",
    "floor_none": "hand-written loop, no teacher (CE only)",
    "hfkd_live": "DistillationTrainer, live teacher, logits",
    "hfkd_hidden": "DistillationTrainer, live teacher, logits + hidden states",
    "hfkd_cached": "DistillationTrainer, cached teacher logits",
    "trainer": "plain Trainer, student alone",
    "textbrewer": "TextBrewer 0.2.1.post1, live teacher, logits",
}


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """alpha * T^2 * KL(p_t || p_s) + (1 - alpha) * CE, written out: the hand-written loop's loss."""
    t = TEMPERATURE
    kl = F.kl_div(
        F.log_softmax(student_logits / t, -1),
        F.log_softmax(teacher_logits / t, -1),
        reduction="batchmean",
        log_target=True,
    )  # mean over the batch of sum over classes
    return ALPHA * t * t * kl + (1 - ALPHA) * F.cross_entropy(student_logits, labels)


def trainer_optimizer(params: Any) -> torch.optim.Optimizer:
    """The optimizer `Trainer` builds by default (its class and keyword arguments, e.g. fused AdamW)."""
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(**base_args("/tmp/hf-kd-bench-unused", 0, learning_rate=LEARNING_RATE))
    cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args)
    return cls(params, weight_decay=args.weight_decay, **kwargs)


# ---- the setting ------------------------------------------------------------------------------------------


class Setting:
    """Teacher, tokenizer, tokenized data, fixed batches and cached logits, shared by every method."""

    def __init__(self, quick: bool, batch_size: int, max_length: int, log: Any = print) -> None:
        from transformers import DataCollatorWithPadding

        from hf_kd import cache_teacher_outputs

        self.quick = quick
        self.spec = TaskSpec(
            "bbc_news",
            max_length=32 if quick else max_length,
            train_size=96 if quick else None,
            test_size=32 if quick else None,
        )
        self.batch_size = 8 if quick else batch_size
        self.teacher_recipe = QUICK_TEACHER_RECIPE if quick else BBC_TEACHER_RECIPE
        self.raw, self.tokenized, self.tokenizer = load_task(self.spec)
        self.teacher, _ = finetuned_teacher(self.spec, TEACHER_SEED, self.teacher_recipe, log=log)
        self.teacher.eval()
        self.teacher_dir = self.teacher.name_or_path
        self.train = self.tokenized["train"]
        n_batches = 4 if quick else 12
        collate = DataCollatorWithPadding(self.tokenizer)
        self.burst_dataset = self.train.select(range(n_batches * self.batch_size))
        self.batches = [
            collate([self.burst_dataset[i] for i in range(b * self.batch_size, (b + 1) * self.batch_size)])
            for b in range(n_batches)
        ]  # each: input_ids, token_type_ids, attention_mask (B, L), labels (B,)
        self.cached_burst = cache_teacher_outputs(
            self.teacher, self.burst_dataset, batch_size=64, tokenizer=self.tokenizer, device="cpu"
        )
        with torch.inference_mode():
            self.batch_teacher_logits = [self.teacher(**self._inputs(b)).logits.clone() for b in self.batches]

    @staticmethod
    def _inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v for k, v in batch.items() if k != "labels"}

    def student(self) -> Any:
        from hf_kd import make_student

        torch.manual_seed(0)
        return make_student(self.teacher, num_layers=2).train()

    # ---- per-step bursts ----------------------------------------------------------------------------------

    def floor_burst(self, mode: str, steps: int) -> list[float]:
        student = self.student()
        optimizer = trainer_optimizer(student.parameters())
        times = []
        for i in range(steps):
            b = i % len(self.batches)
            batch = self.batches[b]
            inputs, labels = self._inputs(batch), batch["labels"]
            start = time.perf_counter()
            if mode == "live":
                with torch.no_grad():
                    teacher_logits = self.teacher(**inputs).logits  # (B, C)
            logits = student(**inputs).logits  # (B, C)
            if mode == "none":
                loss = F.cross_entropy(logits, labels)
            else:
                loss = kd_loss(
                    logits, teacher_logits if mode == "live" else self.batch_teacher_logits[b], labels
                )
            loss.backward()
            torch.nn.utils.clip_grad_norm_(student.parameters(), MAX_GRAD_NORM)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - start)
        return times[1:]

    def trainer_burst(self, method: str, steps: int, **extra: Any) -> list[float]:
        from transformers import Trainer, TrainingArguments

        from hf_kd import DistillationConfig, DistillationTrainer

        timer = step_timer_callback()
        common = base_args(
            os.path.join(RESULTS_DIR, "tmp", "step_cost"),
            0,
            max_steps=steps,
            per_device_train_batch_size=self.batch_size,
            learning_rate=LEARNING_RATE,
            max_grad_norm=MAX_GRAD_NORM,
            train_sampling_strategy="sequential",
        )
        common.update(extra)
        student = self.student()
        if method == "trainer":
            trainer = Trainer(
                model=student,
                args=TrainingArguments(**common),
                train_dataset=self.burst_dataset,
                processing_class=self.tokenizer,
                callbacks=[timer],
            )
        else:
            args = DistillationConfig(
                **common,
                temperature=TEMPERATURE,
                alpha=ALPHA,
                hidden_weight=HIDDEN_WEIGHT if method == "hfkd_hidden" else 0.0,
            )
            cached = method == "hfkd_cached"
            trainer = DistillationTrainer(
                model=student,
                args=args,
                teacher_model=None if cached else self.teacher,
                train_dataset=self.cached_burst if cached else self.burst_dataset,
                processing_class=self.tokenizer,
                callbacks=[timer],
            )
        quiet_trainer(trainer).train()
        return timer.times[1:]


# ---- TextBrewer, in its own environment ---------------------------------------------------------------------


class TextBrewerWorker:
    """A long-lived process in bench/.venv-textbrewer that runs TextBrewer bursts and jobs on request."""

    def __init__(self, setting: Setting) -> None:
        path = os.path.join(RESULTS_DIR, "tmp", "textbrewer_batches.pt")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        torch.save([dict(b) for b in setting.batches], path)  # plain dicts of tensors
        config = {
            "teacher_dir": setting.teacher_dir,
            "batches": path,
            "spec": setting.spec.__dict__,
            "batch_size": setting.batch_size,
            "output_dir": os.path.join(RESULTS_DIR, "tmp", "textbrewer"),
        }
        self.proc = subprocess.Popen(
            [TEXTBREWER_PYTHON, os.path.abspath(__file__), "--textbrewer-worker", json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self._read()  # "ready"

    def _read(self) -> Any:
        for line in self.proc.stdout:
            if line.startswith("@@"):
                return json.loads(line[2:])
        raise RuntimeError(f"the TextBrewer worker exited with code {self.proc.wait()}; see its stderr above")

    def ask(self, command: str, value: float) -> Any:
        self.proc.stdin.write(json.dumps({"command": command, "value": value}) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write(json.dumps({"command": "quit"}) + "\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=60)


def textbrewer_worker(config_json: str) -> None:
    """Runs inside bench/.venv-textbrewer: TextBrewer distils the same student with the same loss and optimizer."""
    import textbrewer
    from textbrewer import BasicDistiller, DistillationConfig, TrainingConfig
    from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding

    from hf_kd import make_student

    quiet_transformers()
    config = json.loads(config_json)
    teacher = AutoModelForSequenceClassification.from_pretrained(config["teacher_dir"]).eval()
    batches = torch.load(config["batches"])
    os.makedirs(config["output_dir"], exist_ok=True)

    def adaptor(batch: Any, outputs: Any) -> dict[str, Any]:
        return {"logits": [outputs.logits], "losses": [outputs.loss]}  # losses: the model's own CE on labels

    def distiller_for(student: Any, caching: bool = False) -> Any:
        train_config = TrainingConfig(
            device="cpu", output_dir=config["output_dir"], log_dir=None, ckpt_steps=10**9
        )
        distill_config = DistillationConfig(
            temperature=TEMPERATURE,
            kd_loss_type="ce",
            kd_loss_weight=ALPHA * TEMPERATURE**2,
            hard_label_weight=1 - ALPHA,
            is_caching_logits=caching,  # TextBrewer's own cache: one teacher pass, batches kept in memory
        )
        return BasicDistiller(train_config, distill_config, teacher, student, adaptor, adaptor)

    def fresh_student() -> Any:
        torch.manual_seed(0)
        return make_student(teacher, num_layers=2)

    def send(obj: Any) -> None:
        print("@@" + json.dumps(obj), flush=True)

    send({"ready": textbrewer.__version__})
    for line in sys.stdin:
        request = json.loads(line)
        if request["command"] == "quit":
            return
        student = fresh_student()
        optimizer = trainer_optimizer(student.parameters())
        distiller = distiller_for(student)
        if request["command"] == "burst":
            times, start = [], [0.0]
            pre = teacher.register_forward_pre_hook(lambda *_, s=start: s.__setitem__(0, time.perf_counter()))
            post = optimizer.register_step_post_hook(
                lambda *_, s=start, t=times: t.append(time.perf_counter() - s[0])
            )
            with distiller:
                distiller.train(
                    optimizer, batches, num_steps=int(request["value"]), max_grad_norm=MAX_GRAD_NORM
                )
            pre.remove()
            post.remove()
            send({"times": times[1:]})
        elif request["command"] in ("job", "job_cached"):
            # The end-to-end job: `value` epochs over the whole training split, shuffled, dynamic padding.
            from bench.common import TaskSpec

            started = time.perf_counter()
            _, tokenized, tokenizer = load_task(TaskSpec(**config["spec"]))
            train = tokenized["train"]
            collate = DataCollatorWithPadding(tokenizer)
            loader = torch.utils.data.DataLoader(
                train,
                batch_size=config["batch_size"],
                shuffle=True,
                # TextBrewer calls model(**batch) only when type(batch) is dict; a BatchEncoding is not.
                collate_fn=lambda features, c=collate: dict(c(features)),
                generator=torch.Generator().manual_seed(0),
            )
            load_seconds = time.perf_counter() - started
            started = time.perf_counter()
            if request["command"] == "job_cached":
                distiller = distiller_for(student, caching=True)
            with distiller:
                distiller.train(
                    optimizer, loader, num_epochs=int(request["value"]), max_grad_norm=MAX_GRAD_NORM
                )
            seconds = time.perf_counter() - started
            accuracy = test_accuracy(student, tokenized["test"], tokenizer)  # outside the timed window
            send({"seconds": seconds, "load_seconds": load_seconds, "accuracy": accuracy})


# ---- end to end -----------------------------------------------------------------------------------------------

LEVERS = {
    "none": "hf-kd, live teacher, no lever",
    "cache": "+ cached teacher logits (teacher run once, time included)",
    "group_by_length": "+ length-grouped batches (train_sampling_strategy='group_by_length')",
    "bf16_teacher": "+ bfloat16 teacher (teacher_dtype='bfloat16')",
    "all": "teacher levers together: bf16 teacher makes the cache, length-grouped batches",
    "bf16_student": "+ bfloat16 autocast for the student (bf16=True; weights and optimizer stay float32)",
    "all_bf16_student": "teacher levers together + bfloat16 autocast for the student",
}
# Levers that change how the student itself trains (its matmuls run in bfloat16), not what the teacher costs:
# reported on their own, with the test accuracy each job reaches, so that speed bought with precision shows.
STUDENT_PRECISION_LEVERS = ("bf16_student", "all_bf16_student")


def hfkd_job(setting: Setting, lever: str, epochs: int) -> tuple[float, float]:
    """Wall seconds of an `epochs`-epoch distillation over the whole training split with one lever (or several),
    and the trained student's test accuracy (measured after the clock stops)."""
    from hf_kd import DistillationConfig, DistillationTrainer, cache_teacher_outputs

    started = time.perf_counter()
    bf16_cache = lever in ("all", "all_bf16_student")
    teacher = copy.deepcopy(setting.teacher) if lever == "bf16_teacher" or bf16_cache else setting.teacher
    train = setting.train
    extra: dict[str, Any] = {}
    if lever in ("group_by_length", "all", "all_bf16_student"):
        extra["train_sampling_strategy"] = "group_by_length"
    if lever == "bf16_teacher":
        extra["teacher_dtype"] = "bfloat16"
    if lever in STUDENT_PRECISION_LEVERS:
        extra["bf16"] = True
    if lever == "cache" or bf16_cache:
        if bf16_cache:
            teacher = teacher.to(torch.bfloat16)
        train = cache_teacher_outputs(
            teacher, train, batch_size=64, tokenizer=setting.tokenizer, device="cpu"
        )
        teacher = None
    args = DistillationConfig(
        **base_args(
            os.path.join(RESULTS_DIR, "tmp", "job"),
            0,
            num_train_epochs=epochs,
            per_device_train_batch_size=setting.batch_size,
            learning_rate=LEARNING_RATE,
            max_grad_norm=MAX_GRAD_NORM,
        ),
        temperature=TEMPERATURE,
        alpha=ALPHA,
        **extra,
    )
    trainer = DistillationTrainer(
        model=setting.student(),
        args=args,
        teacher_model=teacher,
        train_dataset=train,
        processing_class=setting.tokenizer,
    )
    quiet_trainer(trainer).train()
    seconds = time.perf_counter() - started
    return seconds, test_accuracy(trainer.model, setting.tokenized["test"], setting.tokenizer)


def teacher_forward_levers(setting: Setting, rounds: int) -> dict[str, float]:
    """Median seconds of one teacher forward on a training batch: no_grad (what the trainer does),
    inference_mode, and bfloat16 weights; interleaved."""
    bf16 = copy.deepcopy(setting.teacher).to(torch.bfloat16)
    inputs = Setting._inputs(setting.batches[0])
    runs: dict[str, list[float]] = {"no_grad": [], "inference_mode": [], "bf16_no_grad": []}
    for _ in range(rounds):
        for name, model, context in (
            ("no_grad", setting.teacher, torch.no_grad),
            ("inference_mode", setting.teacher, torch.inference_mode),
            ("bf16_no_grad", bf16, torch.no_grad),
        ):
            with context():
                model(**inputs)  # warm-up
                start = time.perf_counter()
                model(**inputs)
                runs[name].append(time.perf_counter() - start)
    return {name: median(values) for name, values in runs.items()}


# ---- the benchmark ------------------------------------------------------------------------------------------


def run(
    quick: bool = False,
    rounds: int | None = None,
    burst: int | None = None,
    epochs: int | None = None,
    batch_size: int = 32,
    max_length: int = 128,
    log: Any = print,
) -> dict[str, Any]:
    quiet_transformers()
    rounds = rounds or (2 if quick else 5)
    burst = burst or (3 if quick else 7)
    epochs = epochs or (1 if quick else 3)
    info = machine_info()
    setting = Setting(quick, batch_size, max_length, log=log)
    runners = {
        "floor_live": lambda: setting.floor_burst("live", burst),
        "floor_cached": lambda: setting.floor_burst("cached", burst),
        "floor_none": lambda: setting.floor_burst("none", burst),
        "hfkd_live": lambda: setting.trainer_burst("hfkd_live", burst),
        "hfkd_hidden": lambda: setting.trainer_burst("hfkd_hidden", burst),
        "hfkd_cached": lambda: setting.trainer_burst("hfkd_cached", burst),
        "trainer": lambda: setting.trainer_burst("trainer", burst),
    }
    worker = None
    textbrewer_error = None
    if os.path.isfile(TEXTBREWER_PYTHON):
        try:
            worker = TextBrewerWorker(setting)
            runners["textbrewer"] = lambda: worker.ask("burst", burst)["times"]
        except Exception as err:  # reported on the page instead of the row
            textbrewer_error = f"TextBrewer worker failed: {err}"
    else:
        textbrewer_error = "TextBrewer not set up: run `bash bench/textbrewer_setup.sh`"
    times: dict[str, list[float]] = {name: [] for name in runners}
    names = list(runners)
    try:
        for r in range(rounds):
            order = names[r % len(names) :] + names[: r % len(names)]  # rotate who goes first
            for name in order:
                times[name] += runners[name]()
            log(f"step cost: round {r + 1}/{rounds} done")
        levers = teacher_forward_levers(setting, rounds=3 if quick else 7)
        jobs: dict[str, float] = {}
        accuracy: dict[str, float] = {}
        # One job each (a job is minutes), TextBrewer's live job first and again last: the two bracket the
        # hf-kd jobs, so their difference shows how much the machine drifted while the others ran.
        schedule: list[tuple[str, Any]] = [(lever, None) for lever in LEVERS]
        if worker is not None:
            schedule = [
                ("textbrewer", "job"),
                schedule[0],
                ("textbrewer_cached", "job_cached"),
                *schedule[1:],
                ("textbrewer_again", "job"),
            ]
        for name, command in schedule:
            if command is None:
                jobs[name], accuracy[name] = hfkd_job(setting, name, epochs)
            elif textbrewer_error is None:
                try:
                    answer = worker.ask(command, epochs)
                except RuntimeError as err:
                    textbrewer_error = f"TextBrewer end-to-end job failed: {err}"
                    continue
                jobs[name], accuracy[name] = answer["seconds"], answer["accuracy"]
            else:
                continue
            log(f"end to end: {name} {jobs[name]:.1f} s, test accuracy {accuracy[name]:.4f}")
    finally:
        if worker is not None:
            worker.close()
    return {
        "machine": info,
        "quick": quick,
        "settings": {
            "batch_size": setting.batch_size,
            "max_length": setting.spec.max_length,
            "rounds": rounds,
            "burst": burst,
            "epochs": epochs,
            "temperature": TEMPERATURE,
            "alpha": ALPHA,
            "hidden_weight": HIDDEN_WEIGHT,
            "train_examples": len(setting.train),
            "teacher": str(teacher_path()),
        },
        "step_seconds": {name: median(values) for name, values in times.items()},
        "step_samples": times,
        "teacher_forward_seconds": levers,
        "job_seconds": jobs,
        "job_accuracy": accuracy,
        "textbrewer_error": textbrewer_error,
    }


def per_round_medians(samples: list[float], rounds: int) -> list[float]:
    """The median of each round's burst (samples are stored round after round, equal bursts)."""
    size = max(1, len(samples) // rounds)
    return [median(samples[i : i + size]) for i in range(0, size * rounds, size)]


def paired_round_ratios(samples: dict[str, list[float]], name: str, base: str, rounds: int) -> list[float]:
    """Per round, `name`'s median step over `base`'s median step in the same round."""
    return [
        a / b
        for a, b in zip(per_round_medians(samples[name], rounds), per_round_medians(samples[base], rounds))
    ]


def report(data: dict[str, Any]) -> str:
    s = data["settings"]
    steps = data["step_seconds"]
    floor = steps["floor_live"]
    rows = []
    for name, label in METHODS.items():
        if name not in steps:
            rows.append([label, "not run", "", "", "", ""])
            continue
        samples = data["step_samples"][name]
        rounds = per_round_medians(samples, s["rounds"])
        paired = paired_round_ratios(data["step_samples"], name, "floor_live", s["rounds"])
        rows.append(
            [
                label,
                f"{steps[name]:.3f}",
                f"{min(rounds):.2f}-{max(rounds):.2f}",
                f"{steps[name] / floor:.2f}",
                f"{median(paired):.2f} ({min(paired):.2f}-{max(paired):.2f})",
                len(samples),
            ]
        )
    parts = [
        f"Batch {s['batch_size']}, max length {s['max_length']}, 2-layer student, T = {s['temperature']:g}, "
        f"alpha = {s['alpha']:g}; {s['rounds']} interleaved rounds of {s['burst']}-step bursts, first step of each "
        "burst dropped; median seconds per step. The spread columns show how much the machine's speed moved "
        "between rounds: the range of each round's median, and the ratio to the floor taken within each round "
        "(median over rounds, with its range).\n",
        markdown_table(
            [
                "method",
                "s / step",
                "round medians",
                "ratio to floor (live)",
                "ratio to floor within a round",
                "steps measured",
            ],
            rows,
        ),
    ]
    checks = []
    if "hfkd_live" in steps:
        r = steps["hfkd_live"] / floor
        checks.append(
            f"- hf-kd live teacher / floor: {r:.3f} (goal <= 1.05: {'met' if r <= 1.05 else 'NOT met'})"
        )
    if "hfkd_cached" in steps and "trainer" in steps:
        r = steps["hfkd_cached"] / steps["trainer"]
        checks.append(
            f"- hf-kd cached / plain Trainer: {r:.3f} (goal <= 1.05: {'met' if r <= 1.05 else 'NOT met'})"
        )
    if "hfkd_cached" in steps:
        checks.append(f"- hf-kd cached / floor (cached): {steps['hfkd_cached'] / steps['floor_cached']:.3f}")
    if "trainer" in steps:
        checks.append(f"- plain Trainer / floor (no teacher): {steps['trainer'] / steps['floor_none']:.3f}")
    if "textbrewer" in steps:
        checks.append(
            f"- TextBrewer / floor: {steps['textbrewer'] / floor:.3f}; "
            f"hf-kd live / TextBrewer: {steps['hfkd_live'] / steps['textbrewer']:.3f}"
        )
    if data.get("textbrewer_error"):
        checks.append(f"- {data['textbrewer_error']}")
    parts.append("\n" + "\n".join(checks) + "\n")

    lev = data["teacher_forward_seconds"]
    parts.append(
        "Teacher forward alone (one training batch, median, interleaved):\n\n"
        + markdown_table(
            ["teacher forward", "s", "ratio to no_grad"],
            [
                ["float32, torch.no_grad (hf-kd's trainer)", f"{lev['no_grad']:.4f}", "1.00"],
                [
                    "float32, torch.inference_mode",
                    f"{lev['inference_mode']:.4f}",
                    f"{lev['inference_mode'] / lev['no_grad']:.2f}",
                ],
                [
                    "bfloat16 weights, torch.no_grad",
                    f"{lev['bf16_no_grad']:.4f}",
                    f"{lev['bf16_no_grad'] / lev['no_grad']:.2f}",
                ],
            ],
        )
        + "\n"
    )
    jobs = data["job_seconds"]
    accuracy = data.get("job_accuracy", {})
    live_runs = [jobs[k] for k in ("textbrewer", "textbrewer_again") if k in jobs]
    base = sum(live_runs) / len(live_runs) if live_runs else None

    def row(label: str, name: str) -> list[str]:
        ratio = f"{jobs[name] / base:.2f}" if base else "n/a"
        acc = f"{accuracy[name]:.4f}" if name in accuracy else "n/a"
        return [label, f"{jobs[name]:.1f}", ratio, acc]

    rows = []
    if "textbrewer" in jobs:
        rows.append(row("TextBrewer 0.2.1.post1, live teacher (first job)", "textbrewer"))
    if "textbrewer_cached" in jobs:
        rows.append(
            row("TextBrewer 0.2.1.post1, its own logit cache (is_caching_logits=True)", "textbrewer_cached")
        )
    for lever, label in LEVERS.items():
        if lever in jobs:
            rows.append(row(label, lever))
    if "textbrewer_again" in jobs:
        rows.append(row("TextBrewer 0.2.1.post1, live teacher, again (last job)", "textbrewer_again"))
    parts.append(
        f"End to end: {s['epochs']}-epoch distillation over the {s['train_examples']} training examples, "
        "wall seconds from models in memory to training done (caching included where used); test accuracy of "
        "the trained student, measured after the clock stops (float32, no autocast):\n\n"
        + markdown_table(["job", "wall s", "ratio to TextBrewer", "test accuracy"], rows)
    )
    if "textbrewer_cached" in jobs and live_runs and jobs["textbrewer_cached"] > min(live_runs):
        parts.append(
            "\nTextBrewer's cached job took longer than a live-teacher job of the same length, although caching "
            "only removes work (one teacher pass instead of three): the machine was slower while it ran, so the "
            "ratios to it below are flattering to hf-kd and should be read with that in mind."
        )
    if len(live_runs) == 2:
        parts.append(
            f"\nRatios are to the mean of TextBrewer's two live-teacher jobs ({base:.1f} s), run first and last; "
            f"they differ by {abs(live_runs[1] - live_runs[0]) / base:.1%}, which is how much the machine drifted "
            "while the other jobs ran."
        )
    if base:
        ours = {k: v for k, v in jobs.items() if k in LEVERS}
        fp32_student = {k: v for k, v in ours.items() if k not in STUDENT_PRECISION_LEVERS}
        lines = []
        for title, pool in (
            ("float32 student (teacher levers only)", fp32_student),
            ("any lever, bf16 autocast student included", ours),
        ):
            if not pool:
                continue
            best = min(pool, key=pool.get)
            r = pool[best] / base
            line = (
                f"- Best hf-kd job, {title}: `{best}`, {r:.2f} of TextBrewer "
                f"(goal <= 0.65: {'met' if r <= 0.65 else 'NOT met'})"
            )
            if "textbrewer_cached" in jobs:
                line += (
                    f"; {pool[best] / jobs['textbrewer_cached']:.2f} of TextBrewer with its own logit cache"
                )
            lines.append(line)
        parts.append("\n" + "\n".join(lines) + "\n")
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks every path")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 5; quick 2)")
    parser.add_argument("--burst", type=int, help="steps per burst, the first dropped (default 7; quick 3)")
    parser.add_argument("--epochs", type=int, help="epochs of the end-to-end jobs (default 3; quick 1)")
    parser.add_argument("--output", help="JSON file (default bench/results/step_cost[_quick].json)")
    parser.add_argument("--textbrewer-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.textbrewer_worker:
        textbrewer_worker(args.textbrewer_worker)
        return None
    data = run(args.quick, args.rounds, args.burst, args.epochs, log=lambda m: print(m, flush=True))
    save_json(
        data,
        args.output or os.path.join(RESULTS_DIR, "step_cost_quick.json" if args.quick else "step_cost.json"),
    )
    print(machine_line(data["machine"]))
    print(report(data))
    return data


if __name__ == "__main__":
    main()
