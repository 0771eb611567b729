"""Step cost: seconds per training step of hf-kd against a hand-written PyTorch loop (the floor) and TextBrewer,
and the end-to-end wall time of a 3-epoch distillation with each of hf-kd's speed levers on its own.

    python -m bench.step_cost            # fine-tuned MiniLM-L6 teacher, 2-layer student, BBC News, batch 32, len 128
    python -m bench.step_cost --quick    # tiny sizes: checks every path in a few minutes (figures meaningless)
    python -m bench.step_cost --precision   # teacher_dtype="auto" only: its decision and live step vs Trainer

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
its optimizer's step. Every method keeps one training run alive for the whole measurement (a real
`Trainer.train()`, or TextBrewer's own loop, in a thread of its own that a `StepGate` lets through one step at a
time), and the methods take single steps in turn, round after round, the order rotating. A change in the machine's
speed therefore hits every method within seconds of the others, not minutes; the first steps of each run
(allocations) are dropped and the median is reported.

The teacher levers (inference mode, bfloat16 weights, length-grouped batches) are measured one by one where they
act: the teacher's forward passes over one whole epoch. End to end (a 3-epoch distillation over the training
split, wall time and the student's test accuracy): TextBrewer with its live teacher; hf-kd with its default live
teacher (`teacher_dtype="auto"`); with the cache on its own; with the teacher levers together; and with those plus bfloat16 autocast for the student (`bf16=True`), which
changes the student's own arithmetic rather than the teacher's cost, so it is reported apart (its per-step cost is
a row of the step table). The student fine-tuned alone by plain `Trainer` for the same epochs is timed too, as
the floor under any job whose student trains in float32.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

import torch
import torch.nn.functional as F

from bench.common import (
    BBC_TEACHER_RECIPE,
    BENCH_DIR,
    QUICK_TEACHER_RECIPE,
    REPO_DIR,
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
    split_accuracy,
    teacher_path,
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
    "hfkd_cached_bf16": "DistillationTrainer, cached teacher logits, bf16 autocast student",
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

    # ---- per-step runs ------------------------------------------------------------------------------------

    def trainer_stepper(self, method: str, steps: int) -> GatedStepper:
        """A real `Trainer.train()` of `steps` steps, running in its own thread, one gated step at a time."""
        from transformers import Trainer, TrainerCallback, TrainingArguments

        from hf_kd import DistillationConfig, DistillationTrainer

        gate = StepGate()

        class Gate(TrainerCallback):
            def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                gate.begin()

            def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                gate.end()

        common = base_args(
            os.path.join(RESULTS_DIR, "tmp", "step_cost", method),
            0,
            max_steps=steps,
            per_device_train_batch_size=self.batch_size,
            learning_rate=LEARNING_RATE,
            max_grad_norm=MAX_GRAD_NORM,
            train_sampling_strategy="sequential",
            bf16=method == "hfkd_cached_bf16",
        )
        student = self.student()
        if method == "trainer":
            trainer = Trainer(
                model=student,
                args=TrainingArguments(**common),
                train_dataset=self.burst_dataset,
                processing_class=self.tokenizer,
                callbacks=[Gate()],
            )
        else:
            teacher, extra = self.teacher, {"teacher_dtype": "float32"}
            if method == "hfkd_live_auto":
                # The trainer's own teacher_dtype="auto" (its check on the first batch), on a copy: the cast
                # happens in place and the float32 methods share self.teacher.
                extra = {"teacher_dtype": "auto"}
                teacher = copy.deepcopy(self.teacher)
            args = DistillationConfig(
                **common,
                temperature=TEMPERATURE,
                alpha=ALPHA,
                hidden_weight=HIDDEN_WEIGHT if method == "hfkd_hidden" else 0.0,
                **extra,
            )
            cached = method.startswith("hfkd_cached")
            trainer = DistillationTrainer(
                model=student,
                args=args,
                teacher_model=None if cached else teacher,
                train_dataset=self.cached_burst if cached else self.burst_dataset,
                processing_class=self.tokenizer,
                callbacks=[Gate()],
            )
        return GatedStepper(gate, quiet_trainer(trainer).train)


class GateClosed(Exception):
    """Raised inside a gated training loop to end it once the coordinator has no more steps for it."""


class StepGate:
    """Lets a training loop that runs in a thread of its own take exactly one step per `step()` call.

    The loop calls `begin()` where a step's timed span starts and `end()` where it ends; both park the loop until
    the coordinating thread says go, so the batch fetch between two steps also waits its turn and nothing of
    one method runs while another's step is timed."""

    def __init__(self) -> None:
        self._go = threading.Semaphore(0)
        self._done = threading.Semaphore(0)
        self._first = True
        self._start = 0.0
        self.times: list[float] = []
        self.error: BaseException | None = None
        self.closed = False

    # the loop's side
    def begin(self) -> None:
        if self._first:  # parked before the first step: set up, not yet timed
            self._first = False
            self._park()
        self._start = time.perf_counter()

    def end(self) -> None:
        self.times.append(time.perf_counter() - self._start)
        self._park()

    def _park(self) -> None:
        self._done.release()
        self._go.acquire()
        if self.closed:  # the measurement is over (or failed elsewhere): end the loop where it stands
            raise GateClosed

    def fail(self, error: BaseException) -> None:
        self.error = error
        self._done.release()

    # the coordinator's side
    def wait(self, timeout: float = 900.0) -> None:
        if not self._done.acquire(timeout=timeout):
            raise RuntimeError(f"a gated training loop took no step within {timeout:.0f} s")
        if self.error is not None:
            raise RuntimeError(f"a gated training loop failed: {self.error!r}") from self.error

    def step(self) -> float:
        self._go.release()
        self.wait()
        return self.times[-1]

    def finish(self) -> None:
        self.closed = True
        self._go.release()  # the parked loop wakes up and ends with GateClosed


class GatedStepper:
    """Runs `loop` (a training loop calling the gate's begin/end) in a daemon thread; `step()` takes one step."""

    def __init__(self, gate: StepGate, loop: Any) -> None:
        self.gate = gate

        def target() -> None:
            try:
                loop()
            except GateClosed:
                return
            except BaseException as err:  # handed to the coordinator, which raises it
                gate.fail(err)
                return
            # A loop ends through GateClosed once the coordinator is done with it; returning on its own means
            # it ran out of steps first, and a coordinator waiting for its next step must not wait forever.
            gate.fail(RuntimeError("the training loop ended before the measurement asked for its last step"))

        self.thread = threading.Thread(target=target, daemon=True)
        self.thread.start()
        gate.wait()  # set up and parked before its first step

    def step(self) -> float:
        return self.gate.step()

    def close(self) -> None:
        self.gate.finish()
        self.thread.join(timeout=120)


class FloorStepper:
    """The hand-written loop, one step per call: teacher forward under no_grad (live), or precomputed teacher
    logits (cached), or no teacher at all (none); student forward, backward, clipping, the Trainer's AdamW."""

    def __init__(self, setting: Setting, mode: str) -> None:
        self.setting, self.mode, self.i = setting, mode, 0
        self.student = setting.student()
        self.optimizer = trainer_optimizer(self.student.parameters())

    def step(self) -> float:
        setting, student = self.setting, self.student
        b = self.i % len(setting.batches)
        self.i += 1
        batch = setting.batches[b]
        inputs, labels = Setting._inputs(batch), batch["labels"]
        start = time.perf_counter()
        if self.mode == "live":
            with torch.no_grad():
                teacher_logits = setting.teacher(**inputs).logits  # (B, C)
        logits = student(**inputs).logits  # (B, C)
        if self.mode == "none":
            loss = F.cross_entropy(logits, labels)
        else:
            loss = kd_loss(
                logits, teacher_logits if self.mode == "live" else setting.batch_teacher_logits[b], labels
            )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), MAX_GRAD_NORM)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    def close(self) -> None:
        pass


# ---- TextBrewer, in its own environment ---------------------------------------------------------------------


class TextBrewerWorker:
    """A long-lived process in bench/.venv-textbrewer that runs TextBrewer steps and jobs on request."""

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
            [TEXTBREWER_PYTHON, "-m", "bench.step_cost", "--textbrewer-worker", json.dumps(config)],
            cwd=REPO_DIR,
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

    def distiller_for(student: Any) -> Any:
        train_config = TrainingConfig(
            device="cpu", output_dir=config["output_dir"], log_dir=None, ckpt_steps=10**9
        )
        distill_config = DistillationConfig(
            temperature=TEMPERATURE,
            kd_loss_type="ce",
            kd_loss_weight=ALPHA * TEMPERATURE**2,
            hard_label_weight=1 - ALPHA,
        )
        return BasicDistiller(train_config, distill_config, teacher, student, adaptor, adaptor)

    def fresh_student() -> Any:
        torch.manual_seed(0)
        return make_student(teacher, num_layers=2)

    def send(obj: Any) -> None:
        print("@@" + json.dumps(obj), flush=True)

    send({"ready": textbrewer.__version__})
    stepper, hooks = None, []
    for line in sys.stdin:
        request = json.loads(line)
        if request["command"] == "quit":
            return
        if request["command"] == "step":
            send({"seconds": stepper.step()})
            continue
        if request["command"] == "stepper_close":
            stepper.close()
            for hook in hooks:
                hook.remove()  # the teacher serves the end-to-end job next
            send({"closed": True})
            continue
        student = fresh_student()
        optimizer = trainer_optimizer(student.parameters())
        distiller = distiller_for(student)
        if request["command"] == "stepper":
            # TextBrewer's own loop in a thread, let through one step per "step" request: the step's span runs
            # from the teacher's forward (the first thing of a step) to the end of the optimizer step.
            gate = StepGate()
            hooks = [
                teacher.register_forward_pre_hook(lambda *_, g=gate: g.begin()),
                optimizer.register_step_post_hook(lambda *_, g=gate: g.end()),
            ]

            def loop(d: Any = distiller, o: Any = optimizer, n: int = int(request["value"])) -> None:
                with d:
                    d.train(o, batches, num_steps=n, max_grad_norm=MAX_GRAD_NORM)

            stepper = GatedStepper(gate, loop)
            send({"ready": True})
        elif request["command"] == "job":
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
            with distiller:
                distiller.train(
                    optimizer, loader, num_epochs=int(request["value"]), max_grad_norm=MAX_GRAD_NORM
                )
            seconds = time.perf_counter() - started
            accuracy = split_accuracy(student, tokenized["test"], tokenizer)  # outside the timed window
            send({"seconds": seconds, "load_seconds": load_seconds, "accuracy": accuracy})


# ---- end to end -----------------------------------------------------------------------------------------------

LEVERS = {
    "live_auto": "hf-kd, live teacher, teacher_dtype='auto' (the default: bfloat16 where it is fast and agrees)",
    "cache": "hf-kd, cached teacher logits (teacher run once, its time included)",
    "all": "hf-kd, teacher levers together: bf16 teacher makes the cache, length-grouped batches",
    "all_bf16_student": "hf-kd, teacher levers together + bfloat16 autocast for the student (bf16=True)",
}
# Not distillation: the student alone under plain Trainer for the same epochs, the floor any float32-student job
# stands on (reported, never counted as an hf-kd job).
REFERENCE_JOBS = {"trainer_alone": "plain Trainer, student alone, no teacher (reference, not distillation)"}
# Levers that change how the student itself trains (its matmuls run in bfloat16), not what the teacher costs:
# reported on their own, with the test accuracy each job reaches, so that speed bought with precision shows.
STUDENT_PRECISION_LEVERS = ("all_bf16_student",)


def whole_split_args(setting: Setting, folder: str, seed: int, epochs: float) -> dict[str, Any]:
    """TrainingArguments fields of a run over the whole training split with this benchmark's recipe."""
    return base_args(
        os.path.join(RESULTS_DIR, "tmp", folder),
        seed,
        num_train_epochs=epochs,
        per_device_train_batch_size=setting.batch_size,
        learning_rate=LEARNING_RATE,
        max_grad_norm=MAX_GRAD_NORM,
    )


def hfkd_job(setting: Setting, lever: str, epochs: int) -> tuple[float, float]:
    """Wall seconds of an `epochs`-epoch distillation over the whole training split with one lever (or several),
    and the trained student's test accuracy (measured after the clock stops)."""
    from transformers import Trainer, TrainingArguments

    from hf_kd import DistillationConfig, DistillationTrainer, cache_teacher_outputs

    common = whole_split_args(setting, "job", 0, epochs)
    started = time.perf_counter()
    if lever in ("trainer_alone", "live_auto"):
        if lever == "trainer_alone":
            trainer = Trainer(
                model=setting.student(),
                args=TrainingArguments(**common),
                train_dataset=setting.train,
                processing_class=setting.tokenizer,
            )
        else:  # a copy: the trainer casts its live teacher in place
            trainer = DistillationTrainer(
                model=setting.student(),
                args=DistillationConfig(**common, temperature=TEMPERATURE, alpha=ALPHA, teacher_dtype="auto"),
                teacher_model=copy.deepcopy(setting.teacher),
                train_dataset=setting.train,
                processing_class=setting.tokenizer,
            )
        quiet_trainer(trainer).train()
        seconds = time.perf_counter() - started
        return seconds, split_accuracy(trainer.model, setting.tokenized["test"], setting.tokenizer)
    teacher = setting.teacher
    extra: dict[str, Any] = {}
    if lever in ("all", "all_bf16_student"):
        extra["train_sampling_strategy"] = "group_by_length"
        teacher = copy.deepcopy(teacher).to(torch.bfloat16)  # what teacher_dtype='bfloat16' does
    if lever in STUDENT_PRECISION_LEVERS:
        extra["bf16"] = True
    train = cache_teacher_outputs(
        teacher, setting.train, batch_size=64, tokenizer=setting.tokenizer, device="cpu"
    )
    args = DistillationConfig(
        **common,
        temperature=TEMPERATURE,
        alpha=ALPHA,
        **extra,
    )
    trainer = DistillationTrainer(
        model=setting.student(),
        args=args,
        train_dataset=train,
        processing_class=setting.tokenizer,
    )
    quiet_trainer(trainer).train()
    seconds = time.perf_counter() - started
    return seconds, split_accuracy(trainer.model, setting.tokenized["test"], setting.tokenizer)


TEACHER_LEVERS = {
    "no_grad": "float32, torch.no_grad, shuffled batches (hf-kd's live teacher and its cache)",
    "inference_mode": "float32, torch.inference_mode, shuffled batches",
    "bf16": "bfloat16 weights (teacher_dtype='bfloat16'), torch.no_grad, shuffled batches",
    "group_by_length": "float32, torch.no_grad, length-grouped batches (train_sampling_strategy='group_by_length')",
    "all": "bfloat16 weights, torch.inference_mode, length-grouped batches",
    "compiled_bf16": "bfloat16 weights compiled with torch.compile, torch.no_grad, shuffled batches",
}


def teacher_epoch_levers(setting: Setting) -> dict[str, dict[str, float]]:
    """Each teacher lever on its own: seconds of the teacher's forward passes over one whole epoch of the training
    split (the batches a shuffled epoch or a length-grouped epoch of `Trainer` would form, dynamically padded), and
    the tokens those batches hold after padding."""
    from transformers import DataCollatorWithPadding
    from transformers.trainer_pt_utils import LengthGroupedSampler

    train, size = setting.train, setting.batch_size
    collate = DataCollatorWithPadding(setting.tokenizer)
    columns = [c for c in ("input_ids", "attention_mask", "token_type_ids") if c in train.column_names]
    rows = [dict(zip(columns, values)) for values in zip(*(train[c] for c in columns))]
    shuffled = torch.randperm(len(rows), generator=torch.Generator().manual_seed(0)).tolist()
    grouped = list(
        LengthGroupedSampler(
            size, lengths=[len(r["input_ids"]) for r in rows], generator=torch.Generator().manual_seed(0)
        )
    )

    def batches(order: list[int]) -> list[dict[str, torch.Tensor]]:
        return [dict(collate([rows[i] for i in order[b : b + size]])) for b in range(0, len(order), size)]

    orders = {"shuffled": batches(shuffled), "grouped": batches(grouped)}
    bf16 = copy.deepcopy(setting.teacher).to(torch.bfloat16)
    plan = {
        "no_grad": (setting.teacher, torch.no_grad, "shuffled"),
        "inference_mode": (setting.teacher, torch.inference_mode, "shuffled"),
        "bf16": (bf16, torch.no_grad, "shuffled"),
        "group_by_length": (setting.teacher, torch.no_grad, "grouped"),
        "all": (bf16, torch.inference_mode, "grouped"),
        "compiled_bf16": (torch.compile(bf16), torch.no_grad, "shuffled"),
    }
    out = {}
    for name, (model, context, order) in plan.items():
        with context():
            start = time.perf_counter()
            model(**orders[order][0])  # warm-up (and, compiled, the compilation), not in the epoch's time
            warmup = time.perf_counter() - start
            if name == "compiled_bf16":
                model(
                    **orders[order][-1]
                )  # the last, smaller batch compiles once more: also outside the time
                warmup = time.perf_counter() - start
            start = time.perf_counter()
            for batch in orders[order]:
                model(**batch)
            seconds = time.perf_counter() - start
        tokens = sum(int(batch["input_ids"].numel()) for batch in orders[order])
        out[name] = {
            "seconds": seconds,
            "padded_tokens": tokens,
            "batches": len(orders[order]),
            "warmup_seconds": warmup,
        }
    return out


class TextBrewerStepper:
    """TextBrewer's loop in the worker process, one step per `step()` (see the worker's "stepper" command)."""

    def __init__(self, worker: TextBrewerWorker, steps: int) -> None:
        self.worker = worker
        worker.ask("stepper", steps)

    def step(self) -> float:
        return self.worker.ask("step", 0)["seconds"]

    def close(self) -> None:
        self.worker.ask("stepper_close", 0)


# ---- the benchmark ------------------------------------------------------------------------------------------


def run(
    quick: bool = False,
    rounds: int | None = None,
    warmup: int | None = None,
    epochs: int | None = None,
    batch_size: int = 32,
    max_length: int = 128,
    log: Any = print,
) -> dict[str, Any]:
    quiet_transformers()
    rounds = rounds or (5 if quick else 22)
    warmup = warmup or (1 if quick else 2)
    epochs = epochs or (1 if quick else 3)
    info = machine_info()
    setting = Setting(quick, batch_size, max_length, log=log)
    steppers: dict[str, Any] = {}
    worker = None
    textbrewer_error = None
    try:
        for mode in ("live", "cached", "none"):
            steppers[f"floor_{mode}"] = FloorStepper(setting, mode)
        for method in ("hfkd_live", "hfkd_hidden", "hfkd_cached", "hfkd_cached_bf16", "trainer"):
            steppers[method] = setting.trainer_stepper(method, rounds)
        if os.path.isfile(TEXTBREWER_PYTHON):
            try:
                worker = TextBrewerWorker(setting)
                steppers["textbrewer"] = TextBrewerStepper(worker, rounds)
            except Exception as err:  # reported on the page instead of the row
                textbrewer_error = f"TextBrewer worker failed: {err}"
        else:
            textbrewer_error = "TextBrewer not set up: run `bash bench/textbrewer_setup.sh`"
        names = list(steppers)
        samples: dict[str, list[float]] = {name: [] for name in names}
        for r in range(rounds):
            order = names[r % len(names) :] + names[: r % len(names)]  # rotate who goes first
            for name in order:
                seconds = steppers[name].step()
                if r >= warmup:
                    samples[name].append(seconds)
            if (r + 1) % 5 == 0 or r + 1 == rounds:
                log(f"step cost: round {r + 1}/{rounds} done")
        for stepper in steppers.values():
            stepper.close()
        steppers.clear()
        log("step cost: teacher levers over one epoch")
        levers = teacher_epoch_levers(setting)
        jobs: dict[str, float] = {}
        accuracy: dict[str, float] = {}
        schedule = ([("textbrewer", "job")] if worker is not None else []) + [
            (lever, None) for lever in (*LEVERS, *REFERENCE_JOBS)
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
        for stepper in steppers.values():
            try:
                stepper.close()
            except Exception:  # already failing: the first error is the one to see
                pass
        if worker is not None:
            worker.close()
    return {
        "machine": info,
        "quick": quick,
        "settings": {
            "batch_size": setting.batch_size,
            "max_length": setting.spec.max_length,
            "rounds": rounds,
            "warmup": warmup,
            "epochs": epochs,
            "temperature": TEMPERATURE,
            "alpha": ALPHA,
            "hidden_weight": HIDDEN_WEIGHT,
            "train_examples": len(setting.train),
            "teacher": str(teacher_path()),
        },
        "step_seconds": {name: median(values) for name, values in samples.items()},
        "step_samples": samples,
        "teacher_epoch": levers,
        "job_seconds": jobs,
        "job_accuracy": accuracy,
        "textbrewer_error": textbrewer_error,
    }


def precision_run(
    quick: bool = False,
    rounds: int | None = None,
    warmup: int | None = None,
    batch_size: int = 32,
    max_length: int = 128,
    log: Any = print,
    seeds: bool = True,
) -> dict[str, Any]:
    """teacher_dtype="auto" on this machine: what `resolve_teacher_dtype` decides on the first training batch, the
    live-teacher KD step with that teacher against a plain fine-tuning step and against the float32 teacher
    (interleaved, one step per method per round, order rotating), and the teacher's test accuracy in both dtypes."""
    from hf_kd.teacher import resolve_teacher_dtype

    quiet_transformers()
    rounds = rounds or (5 if quick else 24)
    warmup = warmup or (1 if quick else 3)
    info = machine_info()
    setting = Setting(quick, batch_size, max_length, log=log)
    setting.auto_precision = resolve_teacher_dtype(setting.teacher, setting.batches[0], "cpu")
    log(f"teacher precision: {setting.auto_precision.reason}")
    half = copy.deepcopy(setting.teacher).to(setting.auto_precision.dtype)
    test = setting.tokenized["test"]
    with torch.inference_mode():
        accuracy = {
            "float32": split_accuracy(setting.teacher, test, setting.tokenizer),
            "auto": split_accuracy(half, test, setting.tokenizer),
        }
    del half
    student_accuracy = precision_accuracy(setting, [0] if quick else [0, 1, 2], log) if seeds else None
    steppers = {m: setting.trainer_stepper(m, rounds) for m in ("hfkd_live_auto", "hfkd_live", "trainer")}
    names = list(steppers)
    samples: dict[str, list[float]] = {name: [] for name in names}
    load_before = [round(x, 2) for x in os.getloadavg()]
    try:
        for r in range(rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                seconds = steppers[name].step()
                if r >= warmup:
                    samples[name].append(seconds)
            if (r + 1) % 5 == 0 or r + 1 == rounds:
                log(f"precision: round {r + 1}/{rounds} done")
    finally:
        for stepper in steppers.values():
            stepper.close()
    return {
        "machine": info,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "load_average_before": load_before,
        "settings": {
            "batch_size": setting.batch_size,
            "max_length": setting.spec.max_length,
            "rounds": rounds,
            "warmup": warmup,
            "test_examples": len(test),
        },  # fmt: skip
        "precision": setting.auto_precision.as_dict(),
        "teacher_test_accuracy": accuracy,
        "student_test_accuracy": student_accuracy,
        "step_seconds": {name: median(values) for name, values in samples.items()},
        "step_samples": samples,
    }


def precision_accuracy(setting: Any, seeds: list[int], log: Any = print) -> dict[str, Any]:
    """Test accuracy of the 2-layer student distilled for one epoch over the whole training split from the live
    teacher in float32 and with teacher_dtype="auto", per seed (float32 student, no autocast, so only the
    teacher's precision differs between the two runs of a seed)."""
    from hf_kd import DistillationConfig, DistillationTrainer

    results: dict[str, list[float]] = {"float32": [], "auto": []}
    for seed in seeds:
        for dtype in results:
            args = DistillationConfig(
                **whole_split_args(setting, "precision", seed, 1),
                temperature=TEMPERATURE,
                alpha=ALPHA,
                teacher_dtype=dtype,
            )
            trainer = DistillationTrainer(
                model=setting.student(),
                args=args,
                teacher_model=copy.deepcopy(setting.teacher),
                train_dataset=setting.train,
                processing_class=setting.tokenizer,
            )
            quiet_trainer(trainer).train()
            score = split_accuracy(trainer.model, setting.tokenized["test"], setting.tokenizer)
            results[dtype].append(score)
            log(f"precision accuracy: seed {seed}, teacher {dtype} -> {score:.4f}")
    return results


def precision_report(data: dict[str, Any]) -> str:
    p, s = data["precision"], data["settings"]
    samples = data["step_samples"]
    rows = []
    for name, label in (
        ("hfkd_live_auto", f"DistillationTrainer, live teacher, teacher_dtype=auto ({p['teacher_dtype']})"),
        ("hfkd_live", "DistillationTrainer, live teacher, float32"),
        ("trainer", "plain Trainer, student alone"),
    ):
        ratios = paired_ratios(samples, name, "trainer")
        low, high = _quartiles(ratios)
        rows.append(
            [label, f"{data['step_seconds'][name]:.3f}", f"{median(ratios):.3f} ({low:.3f}-{high:.3f})"]
        )
    lines = [
        f"Batch {s['batch_size']}, length {s['max_length']}; {s['rounds']} interleaved rounds, the first "
        f"{s['warmup']} dropped; load average {data['load_average_before']} before, "
        f"{data['load_average_after']} after.",
        "",
        markdown_table(["method", "median s/step", "x plain Trainer (paired median, quartiles)"], rows),
        "",
        f"- auto decided: **{p['teacher_dtype']}**. {p['reason']}.",
        f"- Teacher test accuracy over {s['test_examples']} examples: float32 "
        f"{data['teacher_test_accuracy']['float32']:.4f}, auto ({p['teacher_dtype']}) "
        f"{data['teacher_test_accuracy']['auto']:.4f}.",
    ]
    students = data.get("student_test_accuracy")
    if students:
        from hf_kd.demo import paired_difference

        mean, se = paired_difference(students["auto"], students["float32"])
        lines.append(
            f"- 2-layer student distilled for 1 epoch from the live teacher, test accuracy per seed: float32 "
            f"{', '.join(f'{x:.4f}' for x in students['float32'])} (mean {statistics.mean(students['float32']):.4f}); "
            f"auto {', '.join(f'{x:.4f}' for x in students['auto'])} (mean {statistics.mean(students['auto']):.4f}); "
            f"paired difference auto - float32 {mean:+.4f} +- {se:.4f} (s.e.)."
        )
    return "\n".join(lines)


# The measured rounds are cut into this many consecutive blocks to show how the machine's speed moved.
BLOCKS = 5


def block_medians(samples: list[float], blocks: int = BLOCKS) -> list[float]:
    """The median of each of `blocks` consecutive, equal blocks of samples (stored round after round)."""
    size = max(1, len(samples) // blocks)
    return [median(samples[i : i + size]) for i in range(0, size * min(blocks, len(samples)), size)]


def paired_ratios(samples: dict[str, list[float]], name: str, base: str) -> list[float]:
    """Round by round, `name`'s step over `base`'s step in the same round (seconds apart on the machine)."""
    return [a / b for a, b in zip(samples[name], samples[base])]


def _quartiles(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    return ordered[len(ordered) // 4], ordered[(3 * len(ordered)) // 4]


def report(data: dict[str, Any]) -> str:
    s = data["settings"]
    steps = data["step_seconds"]
    samples = data["step_samples"]
    floor = steps["floor_live"]
    rows = []
    for name, label in METHODS.items():
        if name not in steps:
            rows.append([label, "not run", "", "", "", ""])
            continue
        blocks = block_medians(samples[name])
        paired = paired_ratios(samples, name, "floor_live")
        low, high = _quartiles(paired)
        rows.append(
            [
                label,
                f"{steps[name]:.3f}",
                f"{min(blocks):.2f}-{max(blocks):.2f}",
                f"{steps[name] / floor:.2f}",
                f"{median(paired):.2f} ({low:.2f}-{high:.2f})",
                len(samples[name]),
            ]
        )
    parts = [
        f"Batch {s['batch_size']}, max length {s['max_length']}, 2-layer student, T = {s['temperature']:g}, "
        f"alpha = {s['alpha']:g}. Every method keeps one training run alive and the methods take one step each in "
        f"turn, for {s['rounds']} rounds (the order rotates each round); the first {s['warmup']} rounds are "
        "dropped; median seconds per step. The spread columns show the machine's noise: the range of the medians "
        f"of {BLOCKS} consecutive blocks of rounds, and the ratio to the floor's step of the same round (median "
        "over rounds, with the interquartile range).\n",
        markdown_table(
            [
                "method",
                "s / step",
                "block medians",
                "ratio to floor (live)",
                "ratio to the floor's step in the same round",
                "steps measured",
            ],
            rows,
        ),
    ]
    checks = []

    def paired_median(name: str, base: str) -> float:
        return median(paired_ratios(samples, name, base))

    if "hfkd_live" in steps:
        r = steps["hfkd_live"] / floor
        checks.append(
            f"- hf-kd live teacher / floor: {r:.3f}; paired round by round {paired_median('hfkd_live', 'floor_live'):.3f} "
            f"(goal <= 1.03: {'met' if r <= 1.03 else 'NOT met'})"
        )
    if "hfkd_cached" in steps and "trainer" in steps:
        r = steps["hfkd_cached"] / steps["trainer"]
        checks.append(
            f"- hf-kd cached / plain Trainer: {r:.3f}; paired round by round "
            f"{paired_median('hfkd_cached', 'trainer'):.3f} (goal <= 1.05: {'met' if r <= 1.05 else 'NOT met'})"
        )
    if "hfkd_cached" in steps:
        checks.append(f"- hf-kd cached / floor (cached): {steps['hfkd_cached'] / steps['floor_cached']:.3f}")
    if "hfkd_cached_bf16" in steps:
        checks.append(
            f"- bf16 autocast student / float32 (both cached): {steps['hfkd_cached_bf16'] / steps['hfkd_cached']:.3f}"
        )
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

    lev = data["teacher_epoch"]
    base = lev["no_grad"]["seconds"]
    parts.append(
        f"Teacher levers one by one: the teacher's forward passes over one epoch of the {s['train_examples']} training "
        f"examples ({lev['no_grad']['batches']} batches of {s['batch_size']}, dynamic padding), in one pass each:\n\n"
        + markdown_table(
            ["teacher forward over one epoch", "s", "ratio to no_grad", "tokens after padding", "warm-up s"],
            [
                [
                    label,
                    f"{lev[k]['seconds']:.1f}",
                    f"{lev[k]['seconds'] / base:.2f}",
                    lev[k]["padded_tokens"],
                    f"{lev[k]['warmup_seconds']:.1f}" if "warmup_seconds" in lev[k] else "n/a",
                ]
                for k, label in TEACHER_LEVERS.items()
                if k in lev
            ],
        )
        + "\n"
    )
    if (
        "group_by_length" in lev
        and lev["group_by_length"]["padded_tokens"] == lev["no_grad"]["padded_tokens"]
    ):
        parts.append(
            "Length grouping leaves the padded token count unchanged here (nearly every article fills the max "
            "length), so it cannot save anything on this data: its difference from no_grad is the machine's "
            "noise between two passes of the same work.\n"
        )
    jobs = data["job_seconds"]
    accuracy = data.get("job_accuracy", {})
    tb = jobs.get("textbrewer")

    def row(label: str, name: str) -> list[str]:
        ratio = f"{jobs[name] / tb:.2f}" if tb else "n/a"
        acc = f"{accuracy[name]:.4f}" if name in accuracy else "n/a"
        return [label, f"{jobs[name]:.1f}", ratio, acc]

    rows = [row("TextBrewer 0.2.1.post1, live teacher", "textbrewer")] if tb else []
    rows += [row(label, lever) for lever, label in {**LEVERS, **REFERENCE_JOBS}.items() if lever in jobs]
    parts.append(
        f"End to end: {s['epochs']}-epoch distillation over the {s['train_examples']} training examples, "
        "wall seconds from models in memory to training done (caching included where used); test accuracy of "
        "the trained student, measured after the clock stops (float32, no autocast):\n\n"
        + markdown_table(["job", "wall s", "ratio to TextBrewer", "test accuracy"], rows)
    )
    if tb:
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
            r = pool[best] / tb
            lines.append(
                f"- Best hf-kd job, {title}: `{best}`, {r:.2f} of TextBrewer "
                f"(goal <= 0.55: {'met' if r <= 0.55 else 'NOT met'})"
            )
        if "trainer_alone" in jobs:
            lines.append(
                f"- The student alone under plain Trainer, no teacher at all: {jobs['trainer_alone'] / tb:.2f} of "
                "TextBrewer (the floor of any float32-student job)"
            )
        parts.append("\n" + "\n".join(lines) + "\n")
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks every path")
    parser.add_argument("--rounds", type=int, help="rounds of one step per method (default 22; quick 5)")
    parser.add_argument("--warmup", type=int, help="first rounds dropped (default 2; quick 1)")
    parser.add_argument("--epochs", type=int, help="epochs of the end-to-end jobs (default 3; quick 1)")
    parser.add_argument("--output", help="JSON file (default bench/results/step_cost[_quick].json)")
    parser.add_argument("--textbrewer-worker", help=argparse.SUPPRESS)
    parser.add_argument(
        "--precision",
        action="store_true",
        help="only teacher_dtype=auto: its decision, and its live KD step against plain fine-tuning",
    )
    args = parser.parse_args(argv)
    if args.textbrewer_worker:
        textbrewer_worker(args.textbrewer_worker)
        return None
    if args.precision:
        data = precision_run(args.quick, args.rounds, args.warmup, log=lambda m: print(m, flush=True))
        name = "step_cost_precision_quick.json" if args.quick else "step_cost_precision.json"
        save_json(data, args.output or os.path.join(RESULTS_DIR, name))
        print(machine_line(data["machine"]))
        print(precision_report(data))
        return data
    data = run(args.quick, args.rounds, args.warmup, args.epochs, log=lambda m: print(m, flush=True))
    save_json(
        data,
        args.output or os.path.join(RESULTS_DIR, "step_cost_quick.json" if args.quick else "step_cost.json"),
    )
    print(machine_line(data["machine"]))
    print(report(data))
    return data


if __name__ == "__main__":
    main()
