"""`DistillationObjective`: the distillation loss as one module, usable from `DistillationTrainer` or any loop.

    objective = DistillationObjective(config, student, teacher)
    outputs = student(**inputs, **objective.forward_kwargs)
    result = objective(outputs, objective.teacher_outputs(inputs), batch)   # or cached teacher columns
    result.loss.backward()

The objective decides which losses apply (from the head table in `hf_kd.heads`), on which positions, and divided
by which item counts. It resolves the layer map and attaches the learned projections to the student, so that an
optimizer, DDP and FSDP built over the student see them. Student and teachers are referenced, not owned: move,
wrap and place them yourself (the trainer does this through its Accelerator).

Normalisation: every term is a sum over its items divided by an item count. By default the count is this
batch's own; a loop with gradient accumulation or several processes passes `counts` summed over the whole
optimizer step (see `DistillationObjective.counts`), so that batch 8 x accumulation 1 and batch 4 x
accumulation 2 give the same update.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn
from transformers import TrainingArguments

from .config import DistillationConfig
from .cross_tokenizer import TEACHER_INPUT_COLUMNS, has_teacher_inputs, teacher_inputs
from .heads import (
    N_EXAMPLES,
    N_KD,
    N_LABELLED,
    N_TOKENS,
    TARGET_KEYS,
    HeadSpec,
    infer_head,
    kd_mask_and_counts,
    mask_padding,
)
from .layer_map import (
    PROJECTIONS_ATTR,
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
    multi_label_hard_loss,
    regression_hard_loss,
    regression_kd_loss,
    sigmoid_kd_loss,
    soft_target_loss,
    topk_soft_target_loss,
)
from .teacher import TEACHER_COLUMNS, TEACHER_TOPK_INDICES, TEACHER_TOPK_LOG_PROBS, forward_argument_names
from .transfer import UNLABELED_KEY
from .validation import DistillationConfigError

logger = logging.getLogger(__name__)

PROJECTED_KEY = "hf_kd_projected_hidden_states"
TERMS = ("hidden", "attention", "embedding", "pooled")


@dataclass
class LossOutput:
    """`loss`: the weighted total. `components`: each term's per-item mean (kd, ce, hidden, attention,
    embedding), unweighted. `kd_mask` and `counts` (this batch's own item counts) and `teacher` (the targets
    used) are there for logging and metrics."""

    loss: torch.Tensor
    components: dict[str, torch.Tensor]
    kd_mask: torch.Tensor | None = None
    counts: torch.Tensor | None = None
    teacher: TeacherTargets | None = None


@dataclass
class TeacherTargets:
    """What the KD term learns from, whatever produced it: a live teacher, an ensemble, or a cache.

    Exactly one of `logits` (one tensor per logits key; span heads with padding at -inf), `log_probs` (an
    ensemble's mixed softmax at the run's temperature) or `topk_log_probs`/`topk_indices` (a top-k cache) is
    set. `predictions` are the teacher's own choices, for agreement metrics, worked out only when asked for
    (evaluation), not on every training step; `hidden_states` and `attentions` come from a single live teacher.
    """

    logits: list[torch.Tensor] | None = None
    log_probs: list[torch.Tensor] | None = None
    topk_log_probs: torch.Tensor | None = None
    topk_indices: torch.Tensor | None = None
    predict: Any = None  # () -> one prediction tensor per logits key
    hidden_states: Any = None
    attentions: Any = None
    live: bool = True

    @property
    def predictions(self) -> list[torch.Tensor | None] | None:
        return self.predict() if self.predict is not None else None


def _distillation_field_names() -> list[str]:
    base = {f.name for f in dataclasses.fields(TrainingArguments)}
    return [f.name for f in dataclasses.fields(DistillationConfig) if f.init and f.name not in base]


def distillation_settings(config: Any = None, **overrides: Any) -> Any:
    """The distillation fields of `config` (a `DistillationConfig`, a mapping, or None for the defaults) with
    `overrides`, checked like `DistillationConfig` checks them; TrainingArguments fields are not needed."""
    if isinstance(config, DistillationConfig) and not overrides:
        return config
    values = {}
    for f in dataclasses.fields(DistillationConfig):
        if f.name in _distillation_field_names():
            values[f.name] = (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            )
    if isinstance(config, Mapping):
        values.update(config)
    elif config is not None:
        values.update({n: getattr(config, n) for n in _distillation_field_names() if hasattr(config, n)})
    unknown = sorted(set(overrides) - set(values))
    if unknown:
        raise TypeError(f"unknown distillation settings {unknown}: known ones are {sorted(values)}")
    values.update(overrides)
    settings = DistillationSettings(**values)
    settings.validate_distillation()
    return settings


class DistillationSettings(SimpleNamespace):
    """The distillation fields alone, with `DistillationConfig`'s checks and properties (no TrainingArguments)."""

    def __getattr__(self, name: str) -> Any:
        attr = inspect.getattr_static(DistillationConfig, name, None)
        if isinstance(attr, property):
            return attr.fget(self)
        if isinstance(attr, (staticmethod, classmethod)):
            return attr.__get__(self, DistillationConfig)
        if callable(attr) and not name.startswith("__"):
            return attr.__get__(self)
        raise AttributeError(name)


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


def split_batch(batch: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(student inputs, targets and the teacher's own inputs, cached teacher columns) of a batch; only the first
    go into the student's forward (a v5 model would silently swallow any other key)."""
    inputs = dict(batch)
    cached = {k: inputs.pop(k) for k in TEACHER_COLUMNS if k in inputs}
    targets = {k: inputs.pop(k) for k in (*TARGET_KEYS, *TEACHER_INPUT_COLUMNS) if k in inputs}
    return inputs, targets, cached


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None, pooling: str) -> torch.Tensor:
    """One vector per example from (B, L, D) hidden states: the first token's, or the mean over real tokens."""
    if pooling == "cls":
        return hidden[:, 0]  # (B, D)
    if attention_mask is None:
        return hidden.mean(1)
    weights = attention_mask.to(hidden.dtype).unsqueeze(-1)  # (B, L, 1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)  # (B, D)


class DistillationObjective(nn.Module):
    """The distillation loss for one student and its teacher(s).

    Args:
        config: a `DistillationConfig`, a mapping of distillation fields, or None (defaults); `**settings`
            override single fields (`temperature=4.0`).
        student: the student model. Projections for mismatched hidden sizes are attached to it.
        teachers: a teacher, a list of teachers (an ensemble), or None when batches carry cached logits.
        teacher_weights: ensemble weights (default: equal).
        cross_tokenizer: the batches carry the teacher's own tokenization (`hf_kd.prepare_dataset`); refuses the
            terms that need a shared one. Detected from the batch too.

    Call it with the student's outputs, the teacher's outputs (a ModelOutput, a list of them, a dict of cached
    teacher columns, or `TeacherTargets`) and the batch (inputs and targets); it returns a `LossOutput`.
    """

    def __init__(
        self,
        config: Any = None,
        student: nn.Module | None = None,
        teachers: nn.Module | list[nn.Module] | None = None,
        teacher_weights: list[float] | None = None,
        cross_tokenizer: bool = False,
        **settings: Any,
    ) -> None:
        super().__init__()
        if student is None:
            raise DistillationConfigError("DistillationObjective needs the student model: pass student=...")
        self.settings = distillation_settings(config, **settings)
        if teachers is None:
            teachers = []
        elif not isinstance(teachers, (list, tuple, nn.ModuleList)):
            teachers = [teachers]
        # Referenced, not registered: the objective must not move, wrap or save the models.
        self.__dict__["student"] = student
        self.__dict__["teachers"] = list(teachers)
        if teacher_weights is not None and len(teacher_weights) != len(self.teachers):
            raise DistillationConfigError(
                f"teacher_weights has {len(teacher_weights)} entries for {len(self.teachers)} teachers: give one "
                "weight per teacher"
            )
        self.teacher_weights = teacher_weights
        self.head: HeadSpec = infer_head(student)
        self.layer_pairs: list[LayerPair] = []
        self.attention_layers: dict[int, int] = {}
        self.layer_table = ""
        self._projection_hook = None
        self.teacher_argument_names: set[str] | None = None
        if cross_tokenizer:
            self.check_cross_tokenizer()
        if self.teachers:
            self.setup_layers(student, self.teachers[0])
            self.teacher_argument_names = forward_argument_names(self.teachers[0])

    # ---- set-up -------------------------------------------------------------------------------------

    def set_teachers(self, teachers: list[nn.Module]) -> None:
        """Replace the referenced teachers (after the caller placed or wrapped them)."""
        self.__dict__["teachers"] = list(teachers)
        if teachers:
            self.teacher_argument_names = forward_argument_names(teachers[0])

    def setup_layers(self, student: nn.Module, teacher: nn.Module) -> None:
        """Resolve the layer map, switch attention implementations, build projections, attach the hook."""
        s = self.settings
        self.__dict__["student"] = student
        self.remove_projections(student)
        self.layer_pairs, self.attention_layers = [], {}
        if not s.uses_intermediate_layers:
            return
        s_vocab = getattr(student.config, "vocab_size", None)
        t_vocab = getattr(teacher.config, "vocab_size", None)
        if s.uses_token_layers and s_vocab is not None and t_vocab is not None and s_vocab != t_vocab:
            raise DistillationConfigError(
                f"intermediate-layer losses compare teacher and student position by position, but their "
                f"vocabularies differ ({s_vocab} vs {t_vocab} tokens), so they cannot share one tokenization: "
                "use a student with the teacher's tokenizer (hf_kd.make_student), or distil logits only"
            )
        n_student, n_teacher = _num_layers(student), _num_layers(teacher)
        mapping = resolve_layer_map(s.layer_map, n_student, n_teacher) if s.uses_token_layers else {}
        pairs = []
        if s.hidden_weight > 0:
            pairs += [
                LayerPair(m, t, _hidden_size(student), _hidden_size(teacher), "hidden")
                for m, t in mapping.items()
                if m > 0
            ]
            if not pairs:
                raise DistillationConfigError(
                    f"hidden_weight={s.hidden_weight} but layer_map {s.layer_map!r} maps no transformer layer "
                    "(layer 0 is the embedding output, matched by embedding_weight): map at least one student "
                    "layer >= 1, or set hidden_weight=0"
                )
        if s.embedding_weight > 0:
            pairs.insert(
                0, LayerPair(0, mapping.get(0, 0), _hidden_size(student), _hidden_size(teacher), "embedding")
            )
        if s.pooled_weight > 0:
            pairs.append(
                LayerPair(n_student, n_teacher, _hidden_size(student), _hidden_size(teacher), "pooled")
            )
        self.layer_pairs = pairs
        if s.attention_weight > 0:
            self.attention_layers = {m: t for m, t in mapping.items() if m > 0 and t > 0}
            if not self.attention_layers:
                raise DistillationConfigError(
                    f"attention_weight={s.attention_weight} but layer_map {s.layer_map!r} maps no "
                    "transformer layer (layer 0 is the embedding output, which has no attention map)"
                )
            for role, model in (("student", student), ("teacher", teacher)):
                _use_eager_attention(model, role, s.attention_weight)
        weights = {name: getattr(s, f"{name}_weight") for name in TERMS}
        self.layer_table = format_layer_table(self.layer_pairs, self.attention_layers, weights)
        self._attach_projections(student)

    def _attach_projections(self, student: nn.Module) -> None:
        """Projections live on the student so the optimizer, DDP and checkpoints see them; a forward hook
        applies them inside the student's forward, so under DDP they are part of the synchronised graph."""
        if any(p.projected for p in self.layer_pairs):
            param = next(student.parameters())
            projections = HiddenProjections(self.layer_pairs, init=self.settings.projection_init)
            student.add_module(PROJECTIONS_ATTR, projections.to(device=param.device, dtype=torch.float32))
        if not self.layer_pairs:
            return
        pairs, pooling = self.layer_pairs, self.settings.pooling

        def project(module: nn.Module, _args: Any, kwargs: Any, output: Any) -> Any:
            hidden = output.get("hidden_states") if isinstance(output, dict) else None
            if hidden is None:
                return output
            projections = getattr(module, PROJECTIONS_ATTR, None)
            projected = []
            for p in pairs:
                states = hidden[p.student_layer]  # (B, L, D_s)
                if p.loss == "pooled":
                    states = pool(states, kwargs.get("attention_mask"), pooling)  # (B, D_s)
                projected.append(projections(p.key, states) if projections is not None else states)
            return _with_projected(output, tuple(projected))

        self._projection_hook = student.register_forward_hook(project, with_kwargs=True)

    def remove_projections(self, student: nn.Module | None = None) -> None:
        """Detach the projection hook and module from the student (before rebuilding them)."""
        if self._projection_hook is not None:
            self._projection_hook.remove()
            self._projection_hook = None
        student = student if student is not None else self.student
        if hasattr(student, PROJECTIONS_ATTR):
            delattr(student, PROJECTIONS_ATTR)

    def check_cross_tokenizer(self) -> None:
        """Two tokenizations share no positions: only sequence-level heads and pooled matching make sense."""
        if self.head.token_level or self.head.name in ("qa", "generic"):
            raise DistillationConfigError(
                f"the data carries the teacher's own tokenization (teacher_input_ids), but a {self.head.name} "
                "head compares outputs position by position, and two tokenizations have no common positions: "
                "distil token-level heads with a teacher that shares the student's tokenizer"
            )
        if self.settings.uses_token_layers:
            raise DistillationConfigError(
                "hidden_weight/attention_weight/embedding_weight compare the two models token by token, but the "
                "data carries the teacher's own tokenization (teacher_input_ids), whose tokens do not line up "
                "with the student's: set those weights to 0 and use pooled_weight (one vector per example) instead"
            )

    @property
    def projections(self) -> HiddenProjections | None:
        return getattr(self.student, PROJECTIONS_ATTR, None)

    @property
    def forward_kwargs(self) -> dict[str, bool]:
        """The extra outputs the student's and the live teacher's forward passes must return."""
        kwargs: dict[str, bool] = {}
        if self.layer_pairs:
            kwargs["output_hidden_states"] = True
        if self.attention_layers:
            kwargs["output_attentions"] = True
        return kwargs

    def needs_live_teacher(self, cached: Mapping[str, Any]) -> bool:
        """Intermediate terms need the teacher's hidden states, which no cache holds."""
        return bool(self.forward_kwargs) or not cached

    # ---- item counts ----------------------------------------------------------------------------------

    def count_index(self, component: str) -> int:
        """Which item count divides a component: KD items, labelled items (examples for QA), or tokens."""
        if component == "kd":
            return N_KD
        if component == "ce":
            return N_EXAMPLES if self.head.name == "qa" else N_LABELLED
        return N_EXAMPLES if component == "pooled" else N_TOKENS

    def counts(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Item counts of one batch (examples, labelled items, KD items, non-padding tokens), int64. Sum them
        over the micro-batches of an optimizer step (and over processes) and pass the sum as `counts`."""
        return kd_mask_and_counts(self.head, batch, self.settings.kd_positions)[1]

    # ---- teacher targets -------------------------------------------------------------------------------

    def inputs_for_teacher(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """What a teacher reads from a batch: its own columns when the batch carries them (another tokenizer),
        else the model inputs; only the names its forward takes."""
        inputs = teacher_inputs(batch) if has_teacher_inputs(batch) else split_batch(batch)[0]
        if self.teacher_argument_names is not None:
            inputs = {k: v for k, v in inputs.items() if k in self.teacher_argument_names}
        return inputs

    def teacher_outputs(self, batch: Mapping[str, Any], autocast: Any = None) -> list[Any]:
        """Run every teacher on the batch's model inputs, without gradients; the student's extra outputs too."""
        if not self.teachers:
            # teacher_model=None is allowed for cached training data; a batch without cached logits (e.g. an
            # eval_dataset that was not cached) has nothing to distil from.
            raise DistillationConfigError(
                "this batch carries no cached teacher logits and no teacher_model was given: cache this dataset "
                "too with hf_kd.cache_teacher_outputs(teacher, dataset), or pass teacher_model=..."
            )
        if has_teacher_inputs(batch):
            self.check_cross_tokenizer()
        inputs = self.inputs_for_teacher(batch)
        with torch.no_grad(), autocast if autocast is not None else nullcontext():
            return [teacher(**inputs, **self.forward_kwargs) for teacher in self.teachers]

    def teacher_targets(self, teacher: Any, batch: Mapping[str, Any], temperature: float) -> TeacherTargets:
        """One `TeacherTargets` from live outputs, an ensemble's outputs, or cached columns."""
        if isinstance(teacher, TeacherTargets):
            return teacher
        head = self.head
        attention_mask = batch.get("attention_mask")
        if isinstance(teacher, Mapping) and any(k in teacher for k in TEACHER_COLUMNS):
            return self._cached_targets(teacher, attention_mask)
        outputs = list(teacher) if isinstance(teacher, (list, tuple)) else [teacher]
        raw = [[out[k] for k in head.logits_keys] for out in outputs]  # (member, key)
        weights = self.teacher_weights or [1.0] * len(outputs)
        first = outputs[0]
        targets = TeacherTargets(
            hidden_states=first.get("hidden_states") if len(outputs) == 1 else None,
            attentions=first.get("attentions") if len(outputs) == 1 else None,
        )
        targets.predict = lambda: [
            self._predict([m[i] for m in raw], weights) for i in range(len(head.logits_keys))
        ]
        if len(outputs) == 1:
            targets.logits = [self._mask(t, attention_mask) for t in raw[0]]
            return targets
        total = float(sum(weights))
        norm = [w / total for w in weights]
        for i in range(len(head.logits_keys)):
            members = [self._mask(m[i], attention_mask) for m in raw]
            if head.kd_loss == "softmax_kl":
                targets.log_probs = (targets.log_probs or []) + [
                    ensemble_log_probs(members, temperature, self.teacher_weights)
                ]
            elif head.kd_loss == "mse":  # the ensemble's prediction is the weighted mean of its outputs
                targets.logits = (targets.logits or []) + [sum(w * m.float() for w, m in zip(norm, members))]
            else:  # sigmoid_kl: the weighted mean of each label's probability, as a logit at temperature T
                p = sum(w * torch.sigmoid(m.float() / temperature) for w, m in zip(norm, members))
                p = p.clamp(1e-7, 1 - 1e-7)
                targets.logits = (targets.logits or []) + [temperature * (p.log() - (-p).log1p())]
        return targets

    def _cached_targets(
        self, cached: Mapping[str, Any], attention_mask: torch.Tensor | None
    ) -> TeacherTargets:
        if TEACHER_TOPK_LOG_PROBS in cached:
            if self.head.kd_loss != "softmax_kl":
                raise DistillationConfigError(
                    f"a top-k teacher cache holds softmax probabilities, but the {self.head.name} head's KD term "
                    "needs the teacher's full outputs: recompute the cache without top_k"
                )
            return TeacherTargets(
                topk_log_probs=cached[TEACHER_TOPK_LOG_PROBS],
                topk_indices=cached[TEACHER_TOPK_INDICES],
                predict=lambda: [cached[TEACHER_TOPK_INDICES][..., 0]],
                live=False,
            )
        missing = [c for c in self.head.cached_columns if c not in cached]
        if missing:
            raise DistillationConfigError(
                f"the batch's cached teacher columns {sorted(cached)} lack {missing}, which a {self.head.name} "
                "head needs: recompute the cache with hf_kd.cache_teacher_outputs(teacher, dataset)"
            )
        columns = [cached[c] for c in self.head.cached_columns]
        return TeacherTargets(
            logits=[self._mask(c, attention_mask) for c in columns],
            predict=lambda: [self._predict([c], [1.0]) for c in columns],
            live=False,
        )

    def _mask(self, logits: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        return mask_padding(logits, attention_mask) if self.head.mask_padding_logits else logits

    def _predict(self, members: list[torch.Tensor], weights: list[float]) -> torch.Tensor | None:
        """The teacher's choice: argmax of the weighted mean probability (per label above 1/2 for multi-label);
        None for regression, which has no choice to agree with."""
        if self.head.kd_loss == "mse":
            return None
        if self.head.kd_loss == "sigmoid_kl":
            total = float(sum(weights))
            return sum(w / total * torch.sigmoid(m.float()) for w, m in zip(weights, members)).gt(0.5)
        if len(members) == 1:
            return members[0].argmax(-1)
        return sum(w * torch.softmax(m.float(), -1) for w, m in zip(weights, members)).argmax(-1)

    # ---- the loss ------------------------------------------------------------------------------------

    def forward(
        self,
        student_outputs: Any,
        teacher: Any,
        batch: Mapping[str, Any],
        counts: torch.Tensor | None = None,
        alpha: float | None = None,
        temperature: float | None = None,
    ) -> LossOutput:
        """The loss of one batch. `counts`: item counts to divide by (default: this batch's own); `alpha` and
        `temperature` override the settings (a schedule's current values)."""
        s = self.settings
        alpha = s.alpha if alpha is None else alpha
        temperature = s.temperature if temperature is None else temperature
        mask, local_counts = kd_mask_and_counts(self.head, batch, s.kd_positions)
        n = (local_counts if counts is None else counts).to(local_counts.device).clamp_min(1).float()
        targets = self.teacher_targets(teacher, batch, temperature)

        kd_items = self._kd_items(student_outputs, targets, mask, temperature, batch)  # (B,) or (B, L)
        components = {"kd": kd_items.sum() / n[N_KD]}
        if alpha < 1.0 or (s.alpha_schedule != "constant" and s.alpha_final < 1.0):
            hard = self._hard_sum(student_outputs, batch)
            if hard is not None:
                components["ce"] = hard / n[self.count_index("ce")]
            elif alpha < 1.0 and self.training:
                raise DistillationConfigError(
                    f"alpha={alpha} weighs the hard loss, but this batch has no labels: set alpha=1.0 or include "
                    "labels in the data"
                )
        if targets.hidden_states is not None or targets.attentions is not None:
            components.update(self._intermediate(student_outputs, targets, batch, n[N_TOKENS], n[N_EXAMPLES]))

        total = alpha * components["kd"] + (1.0 - alpha) * components.get("ce", 0.0)
        unlabeled = batch.get(UNLABELED_KEY)
        if unlabeled is not None and alpha < 1.0:
            # Transfer-set rows have no label, so alpha counts as 1 for them: their KD weight is alpha + (1 - alpha).
            rows = unlabeled.to(kd_items.device).view(-1, *([1] * (kd_items.dim() - 1)))
            total = total + (1.0 - alpha) * (kd_items * rows).sum() / n[N_KD]
        for name in TERMS:
            if name in components:
                total = total + getattr(s, f"{name}_weight") * components[name]
        return LossOutput(total, components, mask, local_counts, targets)

    def _kd_items(
        self,
        outputs: Any,
        targets: TeacherTargets,
        mask: torch.Tensor | None,
        temperature: float,
        batch: Mapping[str, Any],
    ) -> torch.Tensor:
        """The KD term per item, (B,) or (B, L) with 0 at items outside `mask`, averaged over the head's logits
        keys (QA: start and end)."""
        head, attention_mask = self.head, batch.get("attention_mask")
        total = 0.0
        for i, key in enumerate(head.logits_keys):
            s_logits = self._mask(outputs[key], attention_mask)
            if targets.topk_log_probs is not None:
                term = topk_soft_target_loss(
                    s_logits, targets.topk_log_probs, targets.topk_indices, temperature, mask, "none"
                )
            elif targets.log_probs is not None:
                term = soft_target_loss(
                    s_logits,
                    temperature=temperature,
                    mask=mask,
                    reduction="none",
                    teacher_log_probs=targets.log_probs[i],
                )
            else:
                t_logits = targets.logits[i].to(s_logits.device)
                if head.kd_loss == "mse":
                    term = regression_kd_loss(s_logits, t_logits, "none")
                elif head.kd_loss == "sigmoid_kl":
                    term = sigmoid_kd_loss(s_logits, t_logits, temperature, "none")
                else:
                    term = soft_target_loss(s_logits, t_logits, temperature, mask, "none")
            total = total + term
        return total / len(head.logits_keys)

    def _hard_sum(self, outputs: Any, batch: Mapping[str, Any]) -> torch.Tensor | None:
        """Sum of the hard loss over labelled items, or None when the batch has no targets."""
        head = self.head
        if any(k not in batch for k in head.target_keys):
            return None
        if head.hard_loss == "span_ce":
            total = 0.0
            for key, target in zip(head.logits_keys, head.target_keys):
                logits = outputs[key]  # (B, L)
                positions = batch[target].long().clone()
                positions[(positions < 0) | (positions >= logits.shape[-1])] = -100  # out of span: ignored
                total = total + hard_loss(logits, positions, "sum")
            return total / len(head.logits_keys)
        logits, labels = outputs["logits"], batch["labels"]
        unlabeled = batch.get(UNLABELED_KEY)
        has_label = ~unlabeled.to(logits.device) if unlabeled is not None else None
        if head.hard_loss == "mse":
            return regression_hard_loss(logits, labels, "sum", has_label)
        if head.hard_loss == "bce":
            return multi_label_hard_loss(logits, labels, "sum", has_label)
        if head.causal_shift:
            logits, labels = logits[:, :-1], labels[:, 1:]
        return hard_loss(logits, labels, "sum")

    def _intermediate(
        self,
        outputs: Any,
        targets: TeacherTargets,
        batch: Mapping[str, Any],
        n_tokens: torch.Tensor,
        n_examples: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """Hidden-state, embedding and attention terms, each a per-token mean over the matched layers."""
        attention_mask = batch.get("attention_mask")
        result: dict[str, torch.Tensor] = {}
        hidden_terms = []
        for pair, student_states in zip(self.layer_pairs, outputs.get(PROJECTED_KEY) or ()):
            teacher_states = targets.hidden_states[pair.teacher_layer]
            if pair.loss == "pooled":  # (B, D): each model pools over its own tokens
                teacher_mask = batch.get("teacher_attention_mask", attention_mask)
                teacher_states = pool(teacher_states, teacher_mask, self.settings.pooling)
                term = hidden_state_loss(
                    student_states[:, None], teacher_states[:, None], None, self.settings.hidden_loss, "sum"
                )
                result["pooled"] = term / n_examples
                continue
            term = hidden_state_loss(
                student_states, teacher_states, attention_mask, self.settings.hidden_loss, "sum"
            )
            if pair.loss == "embedding":
                result["embedding"] = term / n_tokens
            else:
                hidden_terms.append(term / n_tokens)
        if hidden_terms:
            result["hidden"] = torch.stack(hidden_terms).mean()
        if self.attention_layers and targets.attentions is not None:
            terms = [
                attention_loss(outputs["attentions"][m - 1], targets.attentions[t - 1], attention_mask, "sum")
                / n_tokens
                for m, t in self.attention_layers.items()
            ]
            result["attention"] = torch.stack(terms).mean()
        return result

    # ---- metrics --------------------------------------------------------------------------------------

    def teacher_agreement(
        self, outputs: Any, targets: TeacherTargets, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(items where the student chooses as the teacher does, items), or None when the head has no choice."""
        predictions = targets.predictions
        if not predictions or any(p is None for p in predictions):
            return None
        agree = torch.zeros((), dtype=torch.long)
        total = torch.zeros((), dtype=torch.long)
        for key, teacher_pred in zip(self.head.logits_keys, predictions):
            logits = outputs[key]
            student_pred = logits.gt(0) if self.head.kd_loss == "sigmoid_kl" else logits.argmax(-1)
            same = student_pred.eq(teacher_pred.to(student_pred.device))
            if mask is not None:
                same = same[mask]
            agree += same.sum().cpu()
            total += same.numel()
        return agree, total

    def summary(self) -> dict[str, Any]:
        """The resolved objective, for model cards and reports."""
        return {
            "head": self.head.name,
            "kd_loss": self.head.kd_loss,
            "layer_pairs": [dataclasses.asdict(p) | {"projected": p.projected} for p in self.layer_pairs],
            "attention_layers": dict(self.attention_layers),
        }


def _use_eager_attention(model: nn.Module, role: str, weight: float) -> None:
    """Attention maps come only from the eager implementation (SDPA and flash kernels do not return them)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    impl = getattr(base.config, "_attn_implementation", None)
    if impl == "eager":
        return
    if not hasattr(base, "set_attn_implementation"):
        raise DistillationConfigError(
            f"the {role} ({type(base).__name__}) cannot return attention maps: set attention_weight=0"
        )
    logger.warning(
        "Switching the %s from attn_implementation=%r to 'eager' so that it returns attention maps for "
        "attention_weight=%g (SDPA and flash kernels do not return them).",
        role,
        impl,
        weight,
    )
    base.set_attn_implementation("eager")
