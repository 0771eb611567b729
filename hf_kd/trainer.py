"""`DistillationTrainer`: `transformers.Trainer` with a teacher.

Change `Trainer(...)` to `DistillationTrainer(..., teacher_model=teacher)` and pass a `DistillationConfig` (a
`TrainingArguments` subclass; plain `TrainingArguments` are upgraded with default distillation settings).
Everything else -- datasets, collators, callbacks, checkpoints, evaluation, mixed precision, DDP -- is Trainer's.

Where we meet Trainer we override its hooks (`compute_loss`, `get_batch_samples`, `evaluation_loop`, `log`,
`_save`, `save_model`, `_load_from_checkpoint`) and call `super()`; we never copy its loops.

Gradient accumulation and several processes: each loss term is a sum over its items (examples, labelled tokens,
non-padding tokens) divided by the number of such items in the whole optimizer step, counted over every
micro-batch of the step and every process (`get_batch_samples`). The update for batch 8 x accumulation 1 is then
the update for batch 4 x accumulation 2, for sequence- and token-level heads alike, and on 1 or N processes.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from dataclasses import fields
from typing import Any

import torch
from torch import nn
from transformers import Trainer, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .config import DistillationConfig
from .layer_map import (
    PROJECTIONS_ATTR,
    PROJECTIONS_FILE,
    HiddenProjections,
    LayerPair,
    format_layer_table,
    resolve_layer_map,
)
from .losses import (
    attention_loss,
    ensemble_log_probs,
    hard_loss,
    hidden_state_loss,
    soft_target_loss,
    topk_soft_target_loss,
)
from .schedules import scheduled_value
from .teacher import (
    TEACHER_COLUMNS,
    TEACHER_END_LOGITS,
    TEACHER_LOGITS,
    TEACHER_START_LOGITS,
    TEACHER_TOPK_INDICES,
    TEACHER_TOPK_LOG_PROBS,
    forward_argument_names,
    place_teacher,
)
from .validation import (
    TOKEN_LEVEL_TASKS,
    DistillationConfigError,
    check_label_spaces,
    check_labels_present,
    check_setup,
    check_teacher_is_separate,
    check_vocabularies,
    dataset_columns,
    infer_task,
)

logger = logging.getLogger(__name__)

PROJECTED_KEY = "hf_kd_projected_hidden_states"
TARGET_KEYS = ("labels", "start_positions", "end_positions")
COMPONENTS = ("kd", "ce", "hidden", "attention", "embedding")
# Positions of the per-batch item counts in the count vector.
N_EXAMPLES, N_LABELLED, N_KD, N_TOKENS = range(4)


class NonFiniteLossError(FloatingPointError):
    """NaN or inf in the teacher's or the student's logits, or in the loss."""


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


def _num_layers(model: nn.Module) -> int:
    config = model.config
    for name in ("num_hidden_layers", "n_layers", "num_layers"):
        if getattr(config, name, None) is not None:
            return int(getattr(config, name))
    raise DistillationConfigError(
        f"cannot tell how many layers {type(model).__name__} has (no num_hidden_layers in its config): "
        "pass an explicit layer_map"
    )


def _hidden_size(model: nn.Module) -> int:
    """Width of every hidden_states entry, layer 0 included: ALBERT and ELECTRA factorise their embeddings, but
    project them to hidden_size before layer 1, and hidden_states[0] is that projected output."""
    return int(model.config.hidden_size)


def _nonfinite(*tensors: torch.Tensor | None) -> torch.Tensor:
    """True where any tensor holds NaN or +inf (-inf is a legitimate masked logit)."""
    flags = [torch.isnan(t).any() | torch.isposinf(t).any() for t in tensors if t is not None]
    return torch.stack(flags).any()


def _with_projected(output: Any, projected: tuple[torch.Tensor, ...]) -> Any:
    """`output` plus the projected hidden states under PROJECTED_KEY, as a real field of its ModelOutput type.

    DDP flattens a forward's output to a pytree and rebuilds it with `type(output)(**fields)`; a key merely set
    on a ModelOutput is not a dataclass field, so the rebuild raises TypeError. A subclass with the extra field
    survives the round trip (and is still an instance of the original output class).
    """
    from transformers.utils import ModelOutput

    if not isinstance(output, ModelOutput):
        output[PROJECTED_KEY] = projected
        return output
    return _output_type_with_projected(type(output))(**output, **{PROJECTED_KEY: projected})


@functools.cache
def _output_type_with_projected(cls: type) -> type:
    extended = dataclasses.make_dataclass(cls.__name__, [(PROJECTED_KEY, Any, None)], bases=(cls,))
    extended.__module__ = cls.__module__
    return extended


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
        peft_config: a `peft` config (e.g. `LoraConfig`) that turns the student into a PEFT model, or `True` for
            LoRA r=8, alpha=16 on peft's default layers for the architecture (`hf_kd.peft_utils`). Only the
            adapter (plus the head for classification tasks, and any projections) trains.
        All other arguments are `transformers.Trainer`'s, unchanged.

    The loss is `alpha * T^2 * KL(p_teacher || p_student) + (1 - alpha) * CE(student, labels)`, with
    `p = softmax(logits / T)`, plus `hidden_weight * loss_hidden + attention_weight * loss_attention +
    embedding_weight * loss_embedding`. Components are logged as `loss_kd`, `loss_ce`, `loss_hidden`,
    `loss_attention`, `loss_embedding` (with an `eval_` prefix in evaluation, plus `eval_teacher_agreement`).
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
        **trainer_kwargs: Any,
    ) -> None:
        args = _as_distillation_config(args)
        if peft_config is not None and peft_config is not False and model is not None:
            from .peft_utils import make_peft_student

            model = make_peft_student(model, peft_config)  # before Trainer sees it: only the adapter trains
        self._distillation_ready = False
        self.teacher_tokenizer = (
            teacher_tokenizer  # spot-checked against processing_class in _setup_distillation
        )
        super().__init__(model, args, *trainer_args, **trainer_kwargs)
        self.args: DistillationConfig
        self._setup_distillation(teacher_model, teacher_weights)

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
        train_columns = dataset_columns(self.train_dataset) or []
        eval_columns = dataset_columns(self.eval_dataset) or []
        self.uses_cache = any(c in train_columns for c in TEACHER_COLUMNS)
        if not teachers and not self.uses_cache:
            raise DistillationConfigError(
                "teacher_model is missing: pass teacher_model=<a trained model> (or a list of teachers), or a "
                "train_dataset carrying cached teacher logits from hf_kd.cache_teacher_outputs"
            )
        if args.uses_intermediate_layers and not teachers:
            raise DistillationConfigError(
                "hidden_weight/attention_weight/embedding_weight > 0 need a live teacher (cached logits hold "
                "no hidden states or attentions): pass teacher_model=..., or set those weights to 0 to distil "
                "from the cached logits alone"
            )
        if args.uses_intermediate_layers and len(teachers) > 1:
            raise DistillationConfigError(
                f"intermediate-layer losses match one teacher's layers, but {len(teachers)} teachers were "
                "given: distil logits from the ensemble (hidden/attention/embedding weights 0), or pass one"
            )
        if teacher_weights is not None and len(teacher_weights) != len(teachers):
            raise DistillationConfigError(
                f"teacher_weights has {len(teacher_weights)} entries for {len(teachers)} teachers: give one "
                "weight per teacher"
            )
        for i, teacher in enumerate(teachers):
            name = "teacher" if len(teachers) == 1 else f"teacher {i}"
            check_teacher_is_separate(self.model, teacher)
            check_label_spaces(self.model, teacher, name)
            check_vocabularies(self.model, teacher, self.task)
        alpha_min = min(args.alpha, args.alpha_final if args.alpha_schedule != "constant" else args.alpha)
        check_labels_present(self.train_dataset, args.alpha, self.label_names, alpha_min)
        check_setup(
            self.model,
            teachers,
            args,
            self.train_dataset,
            self.task,
            self.processing_class,
            self.teacher_tokenizer,
            self.optimizer,
        )

        if self.uses_cache and len(teachers) > 1:
            # compute_loss takes cached logits over a live forward, so the ensemble would be silently ignored.
            raise DistillationConfigError(
                f"train_dataset carries cached teacher outputs (from one teacher), but {len(teachers)} teachers "
                "were given and the cache would replace the ensemble: remove the teacher columns "
                "(dataset.remove_columns([...])) to distil from the live ensemble, or pass a single teacher_model"
            )
        if self.uses_cache and teachers and args.teacher_cache_check:
            from .cache import read_cache_metadata, teacher_fingerprint

            meta = read_cache_metadata(self.train_dataset)
            if meta and meta.get("teacher_fingerprint") not in (None, teacher_fingerprint(teachers[0])):
                raise DistillationConfigError(
                    "the cached teacher logits in train_dataset were made by a different teacher (weights "
                    f"fingerprint {meta.get('teacher_fingerprint')} != {teacher_fingerprint(teachers[0])}): "
                    "recompute them with hf_kd.cache_teacher_outputs(teacher, dataset), or pass "
                    "teacher_cache_check=False if the difference is intended"
                )
        if self.uses_cache or any(c in eval_columns for c in TEACHER_COLUMNS):
            from .cache import TeacherCacheCollator, check_cache_fits

            check_cache_fits(self.train_dataset, self.model, args.temperature, args.temperature_schedule)
            if not isinstance(self.data_collator, TeacherCacheCollator):
                self.data_collator = TeacherCacheCollator(self.data_collator)

        self.teacher_weights = teacher_weights
        self.layer_pairs: list[LayerPair] = []
        self.attention_layers: dict[int, int] = {}
        self.layer_table = ""
        self._projection_hook = None
        if teachers:
            self._setup_layers(self.model, teachers[0])
        self.teacher_placement = "cached"
        placed = []
        for teacher in teachers:
            teacher, self.teacher_placement = place_teacher(teacher, self.accelerator, args.teacher_dtype)
            placed.append(teacher)
        self.teachers = placed
        self._teacher_args = forward_argument_names(placed[0]) if placed else None

        self._train_sums: dict[str, torch.Tensor] = {}
        self._schedule_sums: list[float] = [0.0, 0.0, 0]
        self._last_component_log_step = 0
        self._step_counts: torch.Tensor | None = None
        self._eval_stats: dict[str, list[torch.Tensor]] | None = None
        self._micro_batch = 0
        self.nonfinite_skipped = 0
        self._distillation_ready = True

    @property
    def teacher(self) -> nn.Module | None:
        """The (first) teacher, placed and frozen."""
        return self.teachers[0] if self.teachers else None

    def _setup_layers(self, student: nn.Module, teacher: nn.Module) -> None:
        """Resolve the layer map, switch attention implementations, build projections, attach the hook."""
        args = self.args
        self.layer_pairs, self.attention_layers = [], {}
        if not args.uses_intermediate_layers:
            return
        s_vocab = getattr(student.config, "vocab_size", None)
        t_vocab = getattr(teacher.config, "vocab_size", None)
        if s_vocab is not None and t_vocab is not None and s_vocab != t_vocab:
            raise DistillationConfigError(
                f"intermediate-layer losses compare teacher and student position by position, but their "
                f"vocabularies differ ({s_vocab} vs {t_vocab} tokens), so they cannot share one tokenization: "
                "use a student with the teacher's tokenizer (hf_kd.make_student), or distil logits only"
            )
        mapping = resolve_layer_map(args.layer_map, _num_layers(student), _num_layers(teacher))
        pairs = []
        if args.hidden_weight > 0:
            pairs += [
                LayerPair(s, t, _hidden_size(student), _hidden_size(teacher), "hidden")
                for s, t in mapping.items()
                if s > 0
            ]
        if args.embedding_weight > 0:
            t0 = mapping.get(0, 0)
            pairs.insert(0, LayerPair(0, t0, _hidden_size(student), _hidden_size(teacher), "embedding"))
        self.layer_pairs = pairs
        if args.attention_weight > 0:
            self.attention_layers = {s: t for s, t in mapping.items() if s > 0 and t > 0}
            if not self.attention_layers:
                raise DistillationConfigError(
                    f"attention_weight={args.attention_weight} but layer_map {args.layer_map!r} maps no "
                    "transformer layer (layer 0 is the embedding output, which has no attention map)"
                )
            for role, model in (("student", student), ("teacher", teacher)):
                base = model.get_base_model() if hasattr(model, "get_base_model") else model
                impl = getattr(base.config, "_attn_implementation", None)
                if impl != "eager":
                    if not hasattr(base, "set_attn_implementation"):
                        raise DistillationConfigError(
                            f"the {role} ({type(base).__name__}) cannot return attention maps: "
                            "set attention_weight=0"
                        )
                    logger.warning(
                        "Switching the %s from attn_implementation=%r to 'eager' so that it returns attention "
                        "maps for attention_weight=%g (SDPA and flash kernels do not return them).",
                        role,
                        impl,
                        args.attention_weight,
                    )
                    base.set_attn_implementation("eager")
        weights = {
            "hidden": args.hidden_weight,
            "embedding": args.embedding_weight,
            "attention": args.attention_weight,
        }
        self.layer_table = format_layer_table(self.layer_pairs, self.attention_layers, weights)
        logger.info("hf-kd layer mapping:\n%s", self.layer_table)
        self._attach_projections(student)

    def _attach_projections(self, student: nn.Module) -> None:
        """Projections live on the student so the optimizer, DDP and checkpoints see them; a forward hook
        applies them inside the student's forward, so under DDP they are part of the synchronised graph."""
        if any(p.projected for p in self.layer_pairs):
            param = next(student.parameters())
            projections = HiddenProjections(self.layer_pairs, init=self.args.projection_init)
            student.add_module(PROJECTIONS_ATTR, projections.to(device=param.device, dtype=torch.float32))
        if self.layer_pairs and self._projection_hook is None:
            pairs = self.layer_pairs

            def project(module: nn.Module, _args: Any, _kwargs: Any, output: Any) -> Any:
                hidden = output.get("hidden_states") if isinstance(output, dict) else None
                if hidden is None:
                    return output
                projections = getattr(module, PROJECTIONS_ATTR, None)
                projected = tuple(
                    projections(p.student_layer, hidden[p.student_layer])
                    if projections is not None
                    else hidden[p.student_layer]
                    for p in pairs
                )
                return _with_projected(output, projected)

            self._projection_hook = student.register_forward_hook(project, with_kwargs=True)

    @property
    def projections(self) -> HiddenProjections | None:
        model = self.accelerator.unwrap_model(self.model) if hasattr(self, "accelerator") else self.model
        return getattr(model, PROJECTIONS_ATTR, None)

    def call_model_init(self, trial: Any = None) -> nn.Module:
        """A fresh student per hyperparameter trial gets its own projections and hook."""
        model = super().call_model_init(trial)
        if getattr(self, "_distillation_ready", False) and self.teachers:
            self._projection_hook = None
            self._setup_layers(model, self.teachers[0])
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
            if self._projection_hook is not None:
                self._projection_hook.remove()
            self._projection_hook = None
            if hasattr(self.model, PROJECTIONS_ATTR):
                delattr(self.model, PROJECTIONS_ATTR)
            self._setup_layers(self.model, self.teachers[0])

    def _set_signature_columns_if_needed(self) -> None:
        # Keep cached teacher outputs through remove_unused_columns; compute_loss pops them before forward.
        super()._set_signature_columns_if_needed()
        self._signature_columns += [c for c in TEACHER_COLUMNS if c not in self._signature_columns]

    # ---- schedules ----------------------------------------------------------------------------------

    @property
    def current_alpha(self) -> float:
        a = self.args
        return scheduled_value(
            a.alpha, a.alpha_final, a.alpha_schedule, self.state.global_step, self.state.max_steps
        )

    @property
    def current_temperature(self) -> float:
        a = self.args
        return scheduled_value(
            a.temperature,
            a.temperature_final,
            a.temperature_schedule,
            self.state.global_step,
            self.state.max_steps,
        )

    # ---- item counts for exact normalisation ----------------------------------------------------------

    def _kd_mask(
        self, inputs: dict[str, Any], targets: dict[str, Any], logits: torch.Tensor
    ) -> torch.Tensor | None:
        """Which items enter the KD term: None (all examples) for sequence-level heads, else (B, L) bool."""
        if logits.dim() < 3 or self.task == "qa":
            return None
        attention = inputs.get("attention_mask")
        labels = targets.get("labels")
        if self.args.kd_positions == "labelled" and labels is not None and self.task != "causal":
            return labels.ne(-100)
        if attention is not None:
            return attention.bool()
        return torch.ones(logits.shape[:2], dtype=torch.bool, device=logits.device)

    def _item_counts(self, batch: dict[str, Any]) -> torch.Tensor:
        """(examples, labelled items, KD items, non-padding tokens) of one micro-batch, from its inputs alone."""
        ids = batch.get("input_ids")
        if ids is None:
            ids = next(v for v in batch.values() if torch.is_tensor(v))
        batch_size = ids.shape[0]
        attention = batch.get("attention_mask")
        tokens = (
            attention.sum()
            if attention is not None
            else torch.tensor(ids[..., :].numel() if ids.dim() > 1 else batch_size)
        )
        labels = batch.get("labels")
        token_level = self.task in TOKEN_LEVEL_TASKS or (labels is not None and labels.dim() >= 2)
        if self.task == "qa":
            labelled = kd = torch.tensor(batch_size)
        elif token_level:
            if labels is not None:
                counted = labels[..., 1:] if self.task == "causal" else labels
                labelled = counted.ne(-100).sum()
            else:
                labelled = torch.tensor(0)
            use_labels = self.args.kd_positions == "labelled" and labels is not None and self.task != "causal"
            kd = labels.ne(-100).sum() if use_labels else tokens
        else:
            labelled = labels.ne(-100).sum() if labels is not None else torch.tensor(batch_size)
            kd = torch.tensor(batch_size)
        return torch.stack(
            [
                torch.as_tensor(v).reshape(()).to(torch.float64).cpu()
                for v in (batch_size, labelled, kd, tokens)
            ]
        )

    def get_batch_samples(
        self, epoch_iterator: Any, num_batches: int, device: torch.device
    ) -> tuple[list, Any]:
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        if batch_samples:
            counts = torch.stack([self._item_counts(b) for b in batch_samples]).sum(0)
            if self.args.world_size > 1:
                counts = self.accelerator.reduce(counts.to(self.accelerator.device), reduction="sum").cpu()
            self._step_counts = counts
        return batch_samples, num_items_in_batch

    # ---- the loss ------------------------------------------------------------------------------------

    def _teacher_forward(self, inputs: dict[str, Any], forward_kwargs: dict[str, Any]) -> list[Any]:
        if not self.teachers:
            # teacher_model=None is allowed for cached training data; a batch without cached logits (e.g. an
            # eval_dataset that was not cached) has nothing to distil from.
            raise DistillationConfigError(
                "this batch carries no cached teacher logits and no teacher_model was given: cache this dataset "
                "too with hf_kd.cache_teacher_outputs(teacher, dataset), or pass teacher_model=..."
            )
        if self._teacher_args is not None:
            inputs = {k: v for k, v in inputs.items() if k in self._teacher_args}
        with torch.no_grad(), self.accelerator.autocast():
            return [teacher(**inputs, **forward_kwargs) for teacher in self.teachers]

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        inputs = dict(inputs)
        cached = {k: inputs.pop(k) for k in TEACHER_COLUMNS if k in inputs}
        targets = {k: inputs.pop(k) for k in TARGET_KEYS if k in inputs}
        args = self.args
        alpha, temperature = self.current_alpha, self.current_temperature
        training = model.training

        forward_kwargs: dict[str, Any] = {}
        if self.layer_pairs:
            forward_kwargs["output_hidden_states"] = True
        if self.attention_layers:
            forward_kwargs["output_attentions"] = True
        outputs = model(**inputs, **forward_kwargs)

        need_live_teacher = bool(forward_kwargs) or not cached
        teacher_outputs = self._teacher_forward(inputs, forward_kwargs) if need_live_teacher else None

        # Normalisers: counts over the whole optimizer step and all processes while training (set by
        # get_batch_samples), else this micro-batch's own counts (evaluation).
        local_counts = self._item_counts({**inputs, **targets})
        if training and self._step_counts is not None:
            counts, scale = self._step_counts, float(self.args.world_size)
        else:
            counts, scale = local_counts, 1.0
            if training:
                # Called outside Trainer's loop (no step counts): a per-micro-batch mean, scaled as Trainer would.
                scale = 1.0 / getattr(
                    self, "current_gradient_accumulation_steps", self.args.gradient_accumulation_steps
                )
        counts = counts.clamp_min(1.0).float()  # exact counts, but no float64 promotion of the loss

        components: dict[str, torch.Tensor] = {}
        attention_mask = inputs.get("attention_mask")
        student_logits, teacher_logits, teacher_log_probs = self._logits_for_kd(
            outputs, teacher_outputs, cached, temperature, attention_mask
        )
        mask = self._kd_mask(inputs, targets, student_logits[0])
        kd_sum = 0.0
        for i, s_logits in enumerate(student_logits):
            if self.task == "qa":
                s_logits = self._mask_padding(s_logits, attention_mask)
            if TEACHER_TOPK_LOG_PROBS in cached and teacher_outputs is None:
                kd_sum = kd_sum + topk_soft_target_loss(
                    s_logits,
                    cached[TEACHER_TOPK_LOG_PROBS],
                    cached[TEACHER_TOPK_INDICES],
                    temperature,
                    mask,
                    "sum",
                )
            elif teacher_log_probs is not None:
                kd_sum = kd_sum + soft_target_loss(
                    s_logits,
                    temperature=temperature,
                    mask=mask,
                    reduction="sum",
                    teacher_log_probs=teacher_log_probs[i],
                )
            else:
                t_logits = teacher_logits[i].to(s_logits.device)
                if self.task == "qa":
                    t_logits = self._mask_padding(t_logits, attention_mask)
                kd_sum = kd_sum + soft_target_loss(s_logits, t_logits, temperature, mask, "sum")
        components["kd"] = kd_sum / len(student_logits) / counts[N_KD]

        if alpha < 1.0 or (args.alpha_schedule != "constant" and args.alpha_final < 1.0):
            ce = self._hard_loss(outputs, targets)
            if ce is not None:
                components["ce"] = ce / counts[N_EXAMPLES if self.task == "qa" else N_LABELLED]
            elif alpha < 1.0 and training:
                raise DistillationConfigError(
                    f"alpha={alpha} weighs the hard cross-entropy, but this batch has no labels: set alpha=1.0 "
                    "or include labels in the data"
                )

        if teacher_outputs is not None and (self.layer_pairs or self.attention_layers):
            components.update(
                self._intermediate_losses(outputs, teacher_outputs[0], inputs, counts[N_TOKENS])
            )

        total = alpha * components["kd"] + (1.0 - alpha) * components.get("ce", 0.0)
        for name, weight in (
            ("hidden", args.hidden_weight),
            ("attention", args.attention_weight),
            ("embedding", args.embedding_weight),
        ):
            if name in components:
                total = total + weight * components[name]
        total = total * scale

        checked = [*student_logits, total]
        if teacher_logits is not None:
            checked += list(teacher_logits)
        if _nonfinite(*checked).item():
            total = self._handle_nonfinite(model, student_logits, teacher_logits, training)

        self._record(components, scale, training, outputs, teacher_outputs, cached, mask, local_counts, alpha)
        if training:
            self._micro_batch += 1
        if return_outputs:
            drop = {"hidden_states", "attentions", PROJECTED_KEY} if forward_kwargs else set()
            if drop and isinstance(outputs, dict):
                outputs = type(outputs)(**{k: v for k, v in outputs.items() if k not in drop})
            return total, outputs
        return total

    def _logits_for_kd(
        self,
        outputs: Any,
        teacher_outputs: list[Any] | None,
        cached: dict[str, torch.Tensor],
        temperature: float,
        attention_mask: torch.Tensor | None,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor] | None, list[torch.Tensor] | None]:
        """Student logits, teacher logits (or ensemble log-probabilities), as lists of heads (QA has two)."""
        if self.task == "qa":
            student = [outputs["start_logits"], outputs["end_logits"]]
            keys = ("start_logits", "end_logits")
            cached_keys = (TEACHER_START_LOGITS, TEACHER_END_LOGITS)
        else:
            student = [outputs["logits"]]
            keys, cached_keys = ("logits",), (TEACHER_LOGITS,)
        if teacher_outputs is None:
            if TEACHER_TOPK_LOG_PROBS in cached:
                return student, None, None
            return student, [cached[k] for k in cached_keys], None
        if len(teacher_outputs) == 1:
            return student, [teacher_outputs[0][k] for k in keys], None
        log_probs = []
        for k in keys:
            members = [t[k] for t in teacher_outputs]
            if self.task == "qa":
                members = [self._mask_padding(m, attention_mask) for m in members]
            log_probs.append(ensemble_log_probs(members, temperature, self.teacher_weights))
        return student, None, log_probs

    @staticmethod
    def _mask_padding(logits: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """QA span logits at padding positions get -inf, so neither distribution puts mass there."""
        if attention_mask is None:
            return logits
        return logits.float().masked_fill(~attention_mask.bool(), float("-inf"))

    def _hard_loss(self, outputs: Any, targets: dict[str, Any]) -> torch.Tensor | None:
        """Sum of the hard cross-entropy over labelled items (divided by the step's count by the caller)."""
        if self.task == "qa":
            if "start_positions" not in targets:
                return None
            total = 0.0
            for key, pos in (("start_logits", "start_positions"), ("end_logits", "end_positions")):
                logits = outputs[key]  # (B, L)
                positions = targets[pos].long().clone()
                positions[(positions < 0) | (positions >= logits.shape[-1])] = -100  # out of span: ignored
                total = total + hard_loss(logits, positions, "sum")
            return total / 2
        labels = targets.get("labels")
        if labels is None:
            return None
        logits = outputs["logits"]
        if self.task == "causal":
            logits, labels = logits[:, :-1], labels[:, 1:]
        return hard_loss(logits, labels, "sum")

    def _intermediate_losses(
        self, outputs: Any, teacher_output: Any, inputs: dict[str, Any], n_tokens: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        attention_mask = inputs.get("attention_mask")
        result: dict[str, torch.Tensor] = {}
        projected = outputs.get(PROJECTED_KEY)
        hidden_terms, embedding_term = [], None
        for pair, student_states in zip(self.layer_pairs, projected or ()):
            teacher_states = teacher_output["hidden_states"][pair.teacher_layer]
            term = hidden_state_loss(
                student_states, teacher_states, attention_mask, self.args.hidden_loss, "sum"
            )
            if pair.loss == "embedding":
                embedding_term = term / n_tokens
            else:
                hidden_terms.append(term / n_tokens)
        if hidden_terms:
            result["hidden"] = torch.stack(hidden_terms).mean()
        if embedding_term is not None:
            result["embedding"] = embedding_term
        if self.attention_layers:
            terms = [
                attention_loss(
                    outputs["attentions"][s - 1], teacher_output["attentions"][t - 1], attention_mask, "sum"
                )
                / n_tokens
                for s, t in self.attention_layers.items()
            ]
            result["attention"] = torch.stack(terms).mean()
        return result

    def _handle_nonfinite(
        self,
        model: nn.Module,
        student_logits: list[torch.Tensor],
        teacher_logits: list[torch.Tensor] | None,
        training: bool,
    ) -> torch.Tensor:
        where = []
        if teacher_logits is not None and _nonfinite(*teacher_logits).item():
            where.append("teacher logits")
        if _nonfinite(*student_logits).item():
            where.append("student logits")
        what = (
            " and ".join(where)
            or "the distillation loss (logits finite, e.g. -inf where the teacher has mass)"
        )
        location = f"global step {self.state.global_step}, micro-batch {self._micro_batch}"
        if self.args.nonfinite_policy == "skip" and training:
            self.nonfinite_skipped += 1
            self._skip_optimizer_step = True
            logger.warning("Non-finite values in %s at %s: skipping this optimizer step.", what, location)
            # A zero that still reaches every trainable parameter keeps DDP's gradient hooks in step.
            return sum((p.sum() * 0.0 for p in model.parameters() if p.requires_grad), torch.tensor(0.0))
        raise NonFiniteLossError(
            f"NaN or inf in {what} at {location}: check the inputs of this batch, lower the learning rate, "
            "or train in bf16 instead of fp16; nonfinite_policy='skip' drops such micro-batches instead"
        )

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        optimizer = super().create_optimizer(model)
        if self.args.nonfinite_policy == "skip" and not getattr(optimizer, "_hf_kd_guarded", False):
            self._guard_optimizer_step(optimizer)
        return optimizer

    def _guard_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """nonfinite_policy='skip': an optimizer step that saw a non-finite micro-batch is not taken at all, on
        any process. A zero gradient alone is not enough: Adam's moments would still move the weights."""
        step = optimizer.step

        def guarded_step(*args: Any, **kwargs: Any) -> Any:
            flag = torch.tensor(float(self._skip_optimizer_step), device=self.args.device)
            if self.args.world_size > 1:
                flag = self.accelerator.reduce(flag, reduction="sum")
            self._skip_optimizer_step = False
            if flag.item() > 0:
                return None
            return step(*args, **kwargs)

        optimizer.step = guarded_step
        optimizer._hf_kd_guarded = True

    _skip_optimizer_step = False

    # ---- logging and evaluation ------------------------------------------------------------------------

    def _record(
        self,
        components: dict[str, torch.Tensor],
        scale: float,
        training: bool,
        outputs: Any,
        teacher_outputs: list[Any] | None,
        cached: dict[str, torch.Tensor],
        mask: torch.Tensor | None,
        local_counts: torch.Tensor,
        alpha: float,
    ) -> None:
        if training:
            for name, value in components.items():
                value = value.detach().float() * scale
                self._train_sums[name] = self._train_sums.get(name, 0.0) + value
            # The values this micro-batch actually used, averaged over the logging window.
            self._schedule_sums[0] += alpha
            self._schedule_sums[1] += self.current_temperature
            self._schedule_sums[2] += 1
            return
        if self._eval_stats is None:
            return
        n_for = {
            "kd": local_counts[N_KD],
            "ce": local_counts[N_LABELLED],
            "hidden": local_counts[N_TOKENS],
            "attention": local_counts[N_TOKENS],
            "embedding": local_counts[N_TOKENS],
        }
        if self.task == "qa":
            n_for["ce"] = local_counts[N_EXAMPLES]
        for name, value in components.items():
            n = n_for[name].to(torch.float64)
            self._accumulate_eval(f"loss_{name}", value.detach().double().cpu() * n, n)
        agree, total = self._teacher_agreement(outputs, teacher_outputs, cached, mask)
        if total is not None:
            self._accumulate_eval("teacher_agreement", agree, total)

    def _accumulate_eval(self, name: str, value: torch.Tensor, count: torch.Tensor) -> None:
        entry = self._eval_stats.setdefault(name, [torch.zeros((), dtype=torch.float64)] * 2)
        entry[0] = entry[0] + value.double().cpu()
        entry[1] = entry[1] + torch.as_tensor(count).double().cpu()

    def _teacher_agreement(
        self, outputs: Any, teacher_outputs: list[Any] | None, cached: dict[str, torch.Tensor], mask: Any
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Count of items where the student's argmax equals the teacher's (ensemble: averaged distribution)."""
        keys = ("start_logits", "end_logits") if self.task == "qa" else ("logits",)
        cached_keys = (TEACHER_START_LOGITS, TEACHER_END_LOGITS) if self.task == "qa" else (TEACHER_LOGITS,)
        agree = torch.zeros((), dtype=torch.float64)
        total = torch.zeros((), dtype=torch.float64)
        for key, cached_key in zip(keys, cached_keys):
            student_pred = outputs[key].argmax(-1)
            if teacher_outputs is not None:
                weights = self.teacher_weights or [1.0] * len(teacher_outputs)  # the ensemble's own weights
                probs = sum(w * torch.softmax(t[key].float(), -1) for w, t in zip(weights, teacher_outputs))
                teacher_pred = probs.argmax(-1)
            elif cached_key in cached:
                teacher_pred = cached[cached_key].argmax(-1)
            elif TEACHER_TOPK_INDICES in cached:
                teacher_pred = cached[TEACHER_TOPK_INDICES][..., 0]
            else:
                return agree, None
            same = student_pred.eq(teacher_pred.to(student_pred.device))
            if mask is not None:
                same = same[mask]
            agree += same.sum().double().cpu()
            total += same.numel()
        return agree, total

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
                # Every process must reduce the same names in the same order.
                names = sorted(set().union(*self._gather_objects(names)))
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

    def _gather_objects(self, obj: Any) -> list[Any]:
        from accelerate.utils import gather_object

        return gather_object([obj])

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._train_sums:
            steps = max(self.state.global_step - self._last_component_log_step, 1)
            names = sorted(self._train_sums)
            values = torch.stack([torch.as_tensor(self._train_sums[n]).float().reshape(()) for n in names])
            if self.args.world_size > 1:
                values = self.accelerator.reduce(values.to(self.accelerator.device), "mean").cpu()
            for name, value in zip(names, values.tolist()):
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
            state_dict = {k: v for k, v in state_dict.items() if PROJECTIONS_ATTR not in k}
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
        return {
            "teachers": teacher_names,
            "teacher_placement": self.teacher_placement,
            "task": self.task,
            "temperature": a.temperature,
            "alpha": a.alpha,
            "alpha_schedule": a.alpha_schedule,
            "alpha_final": a.alpha_final,
            "temperature_schedule": a.temperature_schedule,
            "temperature_final": a.temperature_final,
            "hidden_weight": a.hidden_weight,
            "hidden_loss": a.hidden_loss,
            "attention_weight": a.attention_weight,
            "embedding_weight": a.embedding_weight,
            "layer_pairs": [
                {
                    "student_layer": p.student_layer,
                    "teacher_layer": p.teacher_layer,
                    "student_size": p.student_size,
                    "teacher_size": p.teacher_size,
                    "projected": p.projected,
                    "loss": p.loss,
                }
                for p in self.layer_pairs
            ],
            "attention_layers": dict(self.attention_layers),
            "uses_cached_teacher_outputs": self.uses_cache,
            "kd_positions": a.kd_positions,
        }
