"""`DistillationTrainer`: `transformers.Trainer` with a teacher.

Change `Trainer(...)` to `DistillationTrainer(..., teacher_model=teacher)` and pass a `DistillationConfig` (a
`TrainingArguments` subclass; plain `TrainingArguments` are upgraded with default distillation settings).
Everything else -- datasets, collators, callbacks, checkpoints, evaluation, mixed precision, DDP -- is Trainer's.

The loss itself is `hf_kd.DistillationObjective` (`self.distillation_objective`); this class orchestrates: it
checks the set-up before training, places the teacher, counts items over each optimizer step, applies the non-
finite policy, logs the components, and saves and restores the projections. Where we meet Trainer we override
its hooks (`compute_loss`, `get_batch_samples`, `evaluation_loop`, `log`, `_save`, `save_model`,
`_load_from_checkpoint`) and call `super()`; we never copy its loops.

Gradient accumulation and several processes: each loss term is a sum over its items (examples, labelled tokens,
non-padding tokens) divided by the number of such items in the whole optimizer step, counted over every
micro-batch of the step and every process (`get_batch_samples`). The update for batch 8 x accumulation 1 is then
the update for batch 4 x accumulation 2, for sequence- and token-level heads alike, and on 1 or N processes.
"""

from __future__ import annotations

import itertools
import logging
import os
from dataclasses import fields
from typing import Any

import datasets
import torch
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .augment import make_augmenter
from .checkpoints import CheckpointManifestCallback, check_resumable
from .config import DistillationConfig
from .cross_tokenizer import TEACHER_INPUT_COLUMNS, CrossTokenizerCollator, has_teacher_inputs
from .layer_map import PROJECTIONS_FILE, HiddenProjections, strip_projections
from .nonfinite import NonFiniteGuard, NonFiniteLossError, nonfinite  # noqa: F401  (NonFiniteLossError: public)
from .objective import PROJECTED_KEY, DistillationObjective, LossOutput, split_batch
from .schedules import scheduled_value
from .teacher import TEACHER_COLUMNS, TeacherPrecision, place_teacher, resolve_teacher_dtype
from .transfer import attach_transfer_set
from .validation import check_trainer_setup, dataset_columns, infer_task

logger = logging.getLogger(__name__)

# The settings a model card reports as the recipe.
RECIPE_FIELDS = (
    "temperature", "alpha", "alpha_schedule", "alpha_final", "temperature_schedule", "temperature_final",
    "hidden_weight", "hidden_loss", "attention_weight", "embedding_weight", "pooled_weight", "kd_positions",
)  # fmt: skip


def _as_distillation_config(args: TrainingArguments | None) -> DistillationConfig:
    if isinstance(args, DistillationConfig):
        return args
    if args is None:
        return DistillationConfig(output_dir="trainer_output")
    logger.info("Upgrading TrainingArguments to DistillationConfig with default distillation settings.")
    values = {
        f.name: getattr(args, f.name) for f in fields(TrainingArguments) if f.init and hasattr(args, f.name)
    }
    return DistillationConfig(**values)


class _TrainStart(TrainerCallback):
    """Component averages divide by the optimizer steps since the last log; after a resume that interval starts
    at the resumed step, not at 0."""

    def __init__(self, trainer: DistillationTrainer) -> None:
        self.trainer = trainer

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.trainer._last_component_log_step = state.global_step
        self.trainer._train_sums = {}


class DistillationTrainer(Trainer):
    """A `Trainer` that distils `teacher_model` into `model` (the student).

    Args:
        model: the student, any `PreTrainedModel` (or `peft` model) with a `logits`-style output.
        args: a `DistillationConfig` (temperature, alpha, intermediate-layer weights, ...).
        teacher_model: the teacher, a list of teachers (an ensemble sharing the student's label space), or
            `None` when every batch carries cached teacher logits (see `hf_kd.cache_teacher_outputs`).
        teacher_weights: weights of the ensemble members (default: equal).
        teacher_tokenizer: the teacher's tokenizer, if it may differ from `processing_class` (the student's): both
            are run on a few fixed strings at construction, and different token ids are an error, since teacher
            and student read the same `input_ids`.
        unlabeled_dataset: a transfer set: tokenized examples without labels (or whose labels are ignored) that
            the teacher labels; `args.unlabeled_ratio` of them join each labelled example in a batch, and they
            take the KD term only (`hf_kd.transfer`).
        peft_config: a `peft` config (e.g. `LoraConfig`) that turns the student into a PEFT model, or `True` for
            LoRA r=8, alpha=16 on peft's default layers for the architecture (`hf_kd.peft_utils`). Only the
            adapter (plus the head for classification tasks, and any projections) trains.
        All other arguments are `transformers.Trainer`'s, unchanged.

    The loss is `alpha * T^2 * KL(p_teacher || p_student) + (1 - alpha) * CE(student, labels)`, with
    `p = softmax(logits / T)`, plus `hidden_weight * loss_hidden + attention_weight * loss_attention +
    embedding_weight * loss_embedding`; regression and multi-label heads use their own KD and hard terms (see
    `hf_kd.heads`). Components are logged as `loss_kd`, `loss_ce`, `loss_hidden`, `loss_attention`,
    `loss_embedding` (with an `eval_` prefix in evaluation, plus `eval_teacher_agreement`).
    """

    # compute_loss normalises by item counts over the whole accumulated step (see module docstring).
    loss_is_scaled_for_ga = True

    def __init__(
        self,
        model: nn.Module | None = None,
        args: TrainingArguments | None = None,
        *trainer_args: Any,
        teacher_model: nn.Module | list[nn.Module] | None = None,
        teacher_weights: list[float] | None = None,
        teacher_tokenizer: Any = None,
        peft_config: Any = None,
        unlabeled_dataset: Any = None,
        **trainer_kwargs: Any,
    ) -> None:
        args = _as_distillation_config(args)
        if peft_config is not None and peft_config is not False and model is not None:
            from .peft_utils import make_peft_student

            model = make_peft_student(model, peft_config)  # before Trainer sees it: only the adapter trains
        self._distillation_ready = False
        self.teacher_tokenizer = teacher_tokenizer  # spot-checked against processing_class at set-up
        super().__init__(model, args, *trainer_args, **trainer_kwargs)
        self.args: DistillationConfig
        self._setup_distillation(teacher_model, teacher_weights)
        self.unlabeled_dataset = None
        if unlabeled_dataset is not None:
            self.unlabeled_dataset = attach_transfer_set(self, unlabeled_dataset)
        self.augmenter = make_augmenter(self)
        self.add_callback(_TrainStart(self))
        # Writes each checkpoint's manifest (sizes and sha256) after Trainer has saved everything in it.
        self.add_callback(CheckpointManifestCallback())

    # ---- set-up -------------------------------------------------------------------------------------

    def _setup_distillation(self, teacher_model: Any, teacher_weights: list[float] | None) -> None:
        args = self.args
        if teacher_model is None:
            teachers: list[nn.Module] = []
        elif isinstance(teacher_model, (list, tuple, nn.ModuleList)):
            teachers = list(teacher_model)
        else:
            teachers = [teacher_model]
        self.task = infer_task(self.model)
        self.uses_cache = any(c in (dataset_columns(self.train_dataset) or []) for c in TEACHER_COLUMNS)
        check_trainer_setup(self, teachers)
        if self.uses_cache or any(c in (dataset_columns(self.eval_dataset) or []) for c in TEACHER_COLUMNS):
            from .cache import TeacherCacheCollator, check_cache_fits

            check_cache_fits(self.train_dataset, self.model, args.temperature, args.temperature_schedule)
            if not isinstance(self.data_collator, TeacherCacheCollator):
                self.data_collator = TeacherCacheCollator(self.data_collator)

        self.cross_tokenizer = has_teacher_inputs(dataset_columns(self.train_dataset))
        self.distillation_objective = DistillationObjective(
            args, self.model, teachers, teacher_weights, self.cross_tokenizer
        )
        if self.cross_tokenizer:
            if not isinstance(self.data_collator, CrossTokenizerCollator):
                self.data_collator = CrossTokenizerCollator(self.data_collator, self.teacher_tokenizer)
        if self.layer_table:
            logger.info("hf-kd layer mapping:\n%s", self.layer_table)
        self.teacher_weights = teacher_weights
        self.teacher_placement = "cached"
        # teacher_dtype="auto" is decided on the first training batch, collated once for every teacher.
        sample = self._first_batch() if teachers and args.teacher_dtype == "auto" else None
        self.teacher_precision = [self._teacher_precision(teacher, sample) for teacher in teachers]
        placed = []
        for teacher, precision in zip(teachers, self.teacher_precision):
            teacher, self.teacher_placement = place_teacher(
                teacher, self.accelerator, args.teacher_dtype, precision
            )
            placed.append(teacher)
        self.teachers = placed
        self.distillation_objective.set_teachers(placed)

        self._train_sums: dict[str, torch.Tensor] = {}
        self._schedule_sums: list[float] = [0.0, 0.0, 0]
        self._last_component_log_step = 0
        self._step_counts: torch.Tensor | None = None
        self._eval_stats: dict[str, list[torch.Tensor]] | None = None
        self._micro_batch = 0
        self.nonfinite_guard = NonFiniteGuard(args, self.accelerator)
        self._distillation_ready = True

    def _first_batch(self) -> dict[str, Any] | None:
        """The first `per_device_train_batch_size` training examples (else evaluation examples), collated as
        training collates them; None without data. Read by index, so no sampler and no random state is used."""
        dataset = self.train_dataset if self.train_dataset is not None else self.eval_dataset
        if isinstance(dataset, dict):
            dataset = next(iter(dataset.values()), None)
        if dataset is None:
            return None
        collator = self.data_collator
        if isinstance(dataset, datasets.Dataset):
            dataset = self._remove_unused_columns(dataset, description="training")
        else:
            collator = self._get_collator_with_removed_columns(collator, description="training")
        size = self.args.per_device_train_batch_size
        if isinstance(dataset, torch.utils.data.IterableDataset) or not hasattr(dataset, "__len__"):
            rows = list(itertools.islice(iter(dataset), size))
        else:
            rows = [dataset[i] for i in range(min(size, len(dataset)))]
        return collator(rows) if rows else None

    def _teacher_precision(self, teacher: nn.Module, batch: dict[str, Any] | None) -> TeacherPrecision | None:
        """`teacher_dtype` resolved for this teacher (`hf_kd.teacher.resolve_teacher_dtype`): `auto` is decided
        on `batch` (the first training batch), and every process keeps bfloat16 only if every process's check
        passed."""
        requested = self.args.teacher_dtype
        if requested != "auto":
            return resolve_teacher_dtype(teacher, {}, requested=requested)
        if batch is None:
            logger.info("Teacher precision: no data to check bfloat16 on; the teacher stays as loaded.")
            return None
        inputs = self.distillation_objective.inputs_for_teacher(batch)
        precision = resolve_teacher_dtype(teacher, inputs, self.accelerator.device)
        if self.accelerator.num_processes > 1:
            chose = torch.tensor([float(precision.dtype == torch.bfloat16)], device=self.accelerator.device)
            if self.accelerator.reduce(chose, reduction="sum").item() < self.accelerator.num_processes:
                if precision.dtype == torch.bfloat16:
                    precision = TeacherPrecision(
                        torch.float32,
                        precision.agreement,
                        precision.kl,
                        "float32: another process's bfloat16 check failed (every process must agree)",
                    )
                    logger.warning("Teacher precision: %s.", precision.reason)
        return precision

    @property
    def teacher(self) -> nn.Module | None:
        """The (first) teacher, placed and frozen."""
        return self.teachers[0] if self.teachers else None

    # The resolved layer map lives on the objective.
    layer_pairs = property(lambda self: self.distillation_objective.layer_pairs)
    attention_layers = property(lambda self: self.distillation_objective.attention_layers)
    layer_table = property(lambda self: self.distillation_objective.layer_table)

    @property
    def projections(self) -> HiddenProjections | None:
        from .layer_map import PROJECTIONS_ATTR

        model = self.accelerator.unwrap_model(self.model) if hasattr(self, "accelerator") else self.model
        return getattr(model, PROJECTIONS_ATTR, None)

    def call_model_init(self, trial: Any = None) -> nn.Module:
        """A fresh student per hyperparameter trial gets its own projections and hook."""
        model = super().call_model_init(trial)
        if getattr(self, "_distillation_ready", False) and self.teachers:
            self.distillation_objective._projection_hook = None  # the hook belonged to the previous student
            self.distillation_objective.setup_layers(model, self.teachers[0])
        return model

    def _hp_search_setup(self, trial: Any) -> None:
        """Trainer sets a trial's values (temperature, alpha, hidden_weight, ...) on `args` only here, after
        `call_model_init` built the student with the previous values: check them and rebuild layer pairs,
        projections and hook for this trial."""
        super()._hp_search_setup(trial)
        if trial is None or self.hp_search_backend is None or not getattr(self, "_distillation_ready", False):
            return
        self.args.validate_distillation()
        if self.teachers:
            self.distillation_objective.settings = self.args
            self.distillation_objective.setup_layers(self.model, self.teachers[0])

    def _set_signature_columns_if_needed(self) -> None:
        # Keep cached teacher outputs through remove_unused_columns; compute_loss pops them before forward.
        super()._set_signature_columns_if_needed()
        extra = (*TEACHER_COLUMNS, *TEACHER_INPUT_COLUMNS)
        self._signature_columns += [c for c in extra if c not in self._signature_columns]

    # ---- schedules ----------------------------------------------------------------------------------

    def _scheduled(self, name: str) -> float:
        a, state = self.args, self.state
        return scheduled_value(
            getattr(a, name),
            getattr(a, f"{name}_final"),
            getattr(a, f"{name}_schedule"),
            state.global_step,
            state.max_steps,
        )

    current_alpha = property(lambda self: self._scheduled("alpha"))
    current_temperature = property(lambda self: self._scheduled("temperature"))

    # ---- item counts for exact normalisation ----------------------------------------------------------

    def get_batch_samples(
        self, epoch_iterator: Any, num_batches: int, device: torch.device
    ) -> tuple[list, Any]:
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        if batch_samples:
            # Summed on the batches' device and kept there: no host synchronisation per step.
            counts = torch.stack(
                [self.distillation_objective.counts(b).to(device) for b in batch_samples]
            ).sum(0)
            if self.args.world_size > 1:
                counts = self.accelerator.reduce(counts.to(self.accelerator.device), reduction="sum")
            self._step_counts = counts
        return batch_samples, num_items_in_batch

    # ---- the loss ------------------------------------------------------------------------------------

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        objective, training = self.distillation_objective, model.training
        if self.augmenter is not None and model.training:  # one view for the student and the teacher alike
            inputs = self.augmenter(inputs, self.state.global_step)
        model_inputs, targets, cached = split_batch(inputs)
        outputs = model(**model_inputs, **objective.forward_kwargs)
        if objective.needs_live_teacher(cached):
            teacher = objective.teacher_outputs(inputs, self.accelerator.autocast())
        else:
            teacher = cached
        # Normalisers: counts over the whole optimizer step and all processes while training (from
        # get_batch_samples), else this micro-batch's own counts, scaled as Trainer scales a per-batch mean.
        counts, scale = None, 1.0
        if training and self._step_counts is not None:
            counts, scale = self._step_counts, float(self.args.world_size)
        elif training:
            scale = 1.0 / getattr(
                self, "current_gradient_accumulation_steps", self.args.gradient_accumulation_steps
            )
        objective.train(training)
        alpha, temperature = self.current_alpha, self.current_temperature
        result = objective(outputs, teacher, {**model_inputs, **targets}, counts, alpha, temperature)
        total = result.loss * scale
        flag = self._check_finite(outputs, result, total, training)
        self._record(result, scale, training, outputs, flag, alpha, temperature)
        if training:
            self._micro_batch += 1
        if return_outputs:
            drop = {"hidden_states", "attentions", PROJECTED_KEY} if objective.forward_kwargs else set()
            if drop and isinstance(outputs, dict):
                outputs = type(outputs)(**{k: v for k, v in outputs.items() if k not in drop})
            return total, outputs
        return total

    # ---- non-finite values (hf_kd.nonfinite): one host synchronisation per optimizer step ------------------

    def _check_finite(
        self, outputs: Any, result: LossOutput, total: torch.Tensor, training: bool
    ) -> torch.Tensor:
        """Flags (teacher logits, student logits, loss) of this micro-batch, on the device."""
        teacher_logits = result.teacher.logits if result.teacher.live else None
        flags = torch.stack(
            [
                nonfinite(*(teacher_logits or [])),
                nonfinite(*(outputs[k] for k in self.distillation_objective.head.logits_keys)),
                nonfinite(total),
            ]
        )
        location = f"global step {self.state.global_step}, micro-batch {self._micro_batch}"
        deferred = self.nonfinite_guard.active and not self.is_deepspeed_enabled
        self.nonfinite_guard.check(flags, location, training, deferred)
        return flags.any()

    @property
    def nonfinite_skipped(self) -> int:
        """Optimizer steps skipped under nonfinite_policy='skip'."""
        return self.nonfinite_guard.skipped

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        optimizer = super().create_optimizer(model)
        if not hasattr(optimizer, "step"):
            # DeepSpeed with an optimizer in its config: Trainer hands back a placeholder without `step`
            # (Accelerate's DummyOptim) that the DeepSpeed engine replaces and steps itself.
            logger.warning(
                "The optimizer comes from the DeepSpeed config (%s): hf-kd's non-finite check at the optimizer "
                "step does not apply to it; DeepSpeed's own overflow handling does.",
                type(optimizer).__name__,
            )
        elif not getattr(optimizer, "_hf_kd_guarded", False):
            self.nonfinite_guard.wrap(optimizer, lambda: self.state.max_steps)
        return optimizer

    # ---- logging and evaluation ------------------------------------------------------------------------

    def _record(
        self,
        result: LossOutput,
        scale: float,
        training: bool,
        outputs: Any,
        nonfinite: torch.Tensor,
        alpha: float,
        temperature: float,
    ) -> None:
        if training:
            for name, value in result.components.items():
                value = value.detach().float() * scale
                value = torch.where(nonfinite, torch.zeros_like(value), value)  # a skipped batch adds nothing
                self._train_sums[name] = self._train_sums.get(name, 0.0) + value
            # The values this micro-batch actually used, averaged over the logging window.
            self._schedule_sums[0] += alpha
            self._schedule_sums[1] += temperature
            self._schedule_sums[2] += 1
            return
        if self._eval_stats is None:
            return
        counts = result.counts.cpu()
        for name, value in result.components.items():
            n = counts[self.distillation_objective.count_index(name)].double()
            self._accumulate_eval(f"loss_{name}", value.detach().double().cpu() * n, n)
        agreement = self.distillation_objective.teacher_agreement(outputs, result.teacher, result.kd_mask)
        if agreement is not None:
            self._accumulate_eval("teacher_agreement", *agreement)

    def _accumulate_eval(self, name: str, value: torch.Tensor, count: torch.Tensor) -> None:
        entry = self._eval_stats.setdefault(name, [torch.zeros((), dtype=torch.float64)] * 2)
        entry[0] = entry[0] + value.double().cpu()
        entry[1] = entry[1] + torch.as_tensor(count).double().cpu()

    def evaluation_loop(
        self,
        dataloader: Any,
        description: str,
        prediction_loss_only: bool | None = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> Any:
        self._eval_stats = {}
        try:
            output = super().evaluation_loop(
                dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix
            )
            names = sorted(self._eval_stats)
            if self.args.world_size > 1:
                from accelerate.utils import gather_object

                # Every process must reduce the same names in the same order.
                names = sorted(set().union(*gather_object([names])))
            for name in names:
                value, count = self._eval_stats.get(name, [torch.zeros(()), torch.zeros(())])
                pair = torch.stack([value.double(), count.double()])
                if self.args.world_size > 1:
                    pair = self.accelerator.reduce(pair.to(self.accelerator.device), "sum").cpu()
                if pair[1] > 0:
                    output.metrics[f"{metric_key_prefix}_{name}"] = (pair[0] / pair[1]).item()
        finally:
            self._eval_stats = None
        return output

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._train_sums:
            steps = max(self.state.global_step - self._last_component_log_step, 1)
            names = sorted(self._train_sums)
            values = torch.stack([torch.as_tensor(self._train_sums[n]).float().reshape(()) for n in names])
            if self.args.world_size > 1:
                values = self.accelerator.reduce(values.to(self.accelerator.device), "mean")
            for name, value in zip(names, values.cpu().tolist()):
                logs[f"loss_{name}"] = value / steps
            alpha_sum, temperature_sum, n = self._schedule_sums
            if self.args.alpha_schedule != "constant" and n:
                logs["alpha"] = alpha_sum / n
            if self.args.temperature_schedule != "constant" and n:
                logs["temperature"] = temperature_sum / n
            self._schedule_sums = [0.0, 0.0, 0]
            if self.nonfinite_skipped:
                logs["nonfinite_skipped"] = self.nonfinite_skipped
            self._train_sums = {}
            self._last_component_log_step = self.state.global_step
        super().log(logs, start_time)

    # ---- saving: the student alone, projections only in checkpoints ----------------------------------------

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        if self.projections is not None:
            if state_dict is None:
                state_dict = self.accelerator.unwrap_model(self.model).state_dict()
            state_dict = strip_projections(state_dict)
        super()._save(output_dir, state_dict=state_dict)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        super().save_model(output_dir, _internal_call)
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        in_checkpoint = os.path.basename(os.path.normpath(output_dir)).startswith(PREFIX_CHECKPOINT_DIR)
        if self.projections is not None and in_checkpoint and self.args.should_save:
            from safetensors.torch import save_file

            state = {k: v.detach().contiguous().cpu() for k, v in self.projections.state_dict().items()}
            save_file(state, os.path.join(output_dir, PROJECTIONS_FILE))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        projections = self.projections
        if projections is None:
            return
        path = os.path.join(resume_from_checkpoint, PROJECTIONS_FILE)
        if not os.path.isfile(path):
            logger.warning(
                "Checkpoint %s holds no %s: the hidden-size projections start from their initial values.",
                resume_from_checkpoint,
                PROJECTIONS_FILE,
            )
            return
        from safetensors.torch import load_file

        projections.load_state_dict(load_file(path, device="cpu"))
        logger.info("Loaded the hidden-size projections from %s.", path)

    def _issue_warnings_after_load(self, load_result: Any) -> None:
        # The saved weights leave the projections out on purpose (they have their own file, loaded next): they
        # are not "missing keys".
        missing = list(strip_projections(dict.fromkeys(load_result.missing_keys)))
        super()._issue_warnings_after_load(load_result._replace(missing_keys=missing))

    def save_merged_student(self, output_dir: str) -> nn.Module:
        """A PEFT student saved with its adapter merged in, as a full model (see `hf_kd.peft_utils.save_merged`)."""
        from .peft_utils import save_merged

        return save_merged(self, output_dir)

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any) -> Any:
        if self.layer_table:
            logger.info("hf-kd layer mapping:\n%s", self.layer_table)
        if resume_from_checkpoint is True:
            # Trainer would take the highest checkpoint-N even if a kill left it half written.
            from .checkpoints import last_complete_checkpoint

            found = last_complete_checkpoint(
                self.args.output_dir, require_projections=self.projections is not None
            )
            if found is None:
                raise ValueError(
                    f"No complete checkpoint found in output directory ({self.args.output_dir}): start without "
                    "resume_from_checkpoint, or pass the path of a checkpoint directory"
                )
            resume_from_checkpoint = found
        elif isinstance(resume_from_checkpoint, (str, os.PathLike)):
            # An explicit path to a checkpoint with a missing or bad file is an error naming the file.
            check_resumable(str(resume_from_checkpoint), require_projections=self.projections is not None)
        self.nonfinite_guard.reset()
        return super().train(resume_from_checkpoint, *args, **kwargs)

    # ---- model card and Hub: the student alone, with a distillation card (hf_kd.model_card, hf_kd.hub) ----

    def create_model_card(
        self,
        language: str | None = None,
        license: str | None = None,
        tags: str | list[str] | None = None,
        model_name: str | None = None,
        finetuned_from: str | None = None,
        tasks: str | list[str] | None = None,
        dataset_tags: str | list[str] | None = None,
        dataset: str | list[str] | None = None,
        dataset_args: str | list[str] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Write the distillation card (teacher vs student, recipe, loss plot) into `args.output_dir`; see
        `hf_kd.create_distillation_model_card` for `kwargs`. Trainer's arguments keep their meaning."""
        if not self.is_world_process_zero():
            return None
        from .model_card import create_distillation_model_card

        return create_distillation_model_card(
            self,
            language=language,
            license=license,
            tags=tags,
            model_name=model_name,
            base_model=kwargs.pop("base_model", finetuned_from),
            pipeline_tag=kwargs.pop("pipeline_tag", tasks if isinstance(tasks, str) else None),
            dataset_name=kwargs.pop("dataset_name", dataset or dataset_tags),
            **kwargs,
        )

    def push_to_hub(
        self,
        commit_message: str | None = "End of training",
        blocking: bool = True,
        token: str | None = None,
        revision: str | None = None,
        private: bool | None = None,
        **kwargs: Any,
    ) -> Any:
        """Publish the student (never the teacher or the projections) with its distillation card; `kwargs` go
        to `create_model_card`. A failed request raises `hf_kd.hub.HubPushError`; the output dir stays complete."""
        from .hub import push_trainer_to_hub

        return push_trainer_to_hub(self, commit_message, blocking, token, revision, private, **kwargs)

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        from .hub import push_checkpoint

        push_checkpoint(self, checkpoint_folder, super()._push_from_checkpoint)

    # ---- description for model cards ------------------------------------------------------------------

    def distillation_summary(self) -> dict[str, Any]:
        """The recipe of this run, for model cards and reports."""
        a = self.args
        teacher_names = [
            getattr(getattr(t, "config", None), "_name_or_path", None) or type(t).__name__
            for t in (getattr(t, "module", t) for t in self.teachers)
        ]
        resolved = self.distillation_objective.summary()
        return {
            "teachers": teacher_names,
            "teacher_placement": self.teacher_placement,
            "task": self.task,
            "head": resolved["head"],
            **{name: getattr(a, name) for name in RECIPE_FIELDS},
            "layer_pairs": resolved["layer_pairs"],
            "attention_layers": resolved["attention_layers"],
            "uses_cached_teacher_outputs": self.uses_cache,
            "cross_tokenizer": self.cross_tokenizer,
            "unlabeled_examples": len(self.unlabeled_dataset) if self.unlabeled_dataset is not None else 0,
            "unlabeled_ratio": a.unlabeled_ratio if self.unlabeled_dataset is not None else None,
            # What teacher_dtype resolved to, with the bfloat16 check's figures (None: kept as loaded).
            "teacher_precision": [p.as_dict() if p is not None else None for p in self.teacher_precision],
        }
