"""The teacher: freezing, placement through the Trainer's Accelerator, and the names of cached outputs.

Placement decision (see `teacher_placement`):
- DeepSpeed ZeRO-3: the teacher is sharded for inference with `deepspeed.initialize` (each rank holds 1/N of
  its weights; a forward gathers layer by layer). Memory: parameters / N per rank, plus one layer's gathered
  weights at a time.
- FSDP: the teacher is wrapped by the Accelerator for inference (`prepare_model(evaluation_mode=True)`),
  sharded like the student. Memory: parameters / N per rank plus one unit's gathered weights.
- Otherwise (one process, DDP, CPU): the teacher is replicated, moved to each process's device, never wrapped
  in DDP since it is never trained. Memory: the full teacher on every rank (in `teacher_dtype`).
"""

from __future__ import annotations

import inspect
import logging

import torch
from torch import nn

logger = logging.getLogger(__name__)

# Dataset columns that carry cached teacher outputs (see hf_kd.cache).
TEACHER_LOGITS = "teacher_logits"  # (C,) per example, or (L, C) per example for token-level heads
TEACHER_START_LOGITS = "teacher_start_logits"  # (L,) extractive QA
TEACHER_END_LOGITS = "teacher_end_logits"  # (L,)
TEACHER_TOPK_LOG_PROBS = "teacher_topk_log_probs"  # (..., k): log softmax(teacher / T) at the top-k classes
TEACHER_TOPK_INDICES = "teacher_topk_indices"  # (..., k)
TEACHER_COLUMNS = (
    TEACHER_LOGITS,
    TEACHER_START_LOGITS,
    TEACHER_END_LOGITS,
    TEACHER_TOPK_LOG_PROBS,
    TEACHER_TOPK_INDICES,
)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def teacher_placement(accelerator) -> str:
    """Which way the teacher is placed for this Accelerator: 'deepspeed_zero3', 'fsdp' or 'replicate'."""
    from accelerate.utils import DistributedType

    dist = accelerator.distributed_type
    if dist == DistributedType.DEEPSPEED:
        plugin = accelerator.state.deepspeed_plugin
        stage = plugin.deepspeed_config.get("zero_optimization", {}).get("stage", 0) if plugin else 0
        return "deepspeed_zero3" if stage == 3 else "replicate"
    if dist == DistributedType.FSDP:
        return "fsdp"
    return "replicate"


def freeze(teacher: nn.Module) -> nn.Module:
    """Eval mode, no gradients: the teacher is a fixed function during distillation."""
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def _deepspeed_inference_config(accelerator) -> dict:
    """The training DeepSpeed config minus optimizer and scheduler, ZeRO-3 kept, for an inference engine."""
    import copy

    config = copy.deepcopy(accelerator.state.deepspeed_plugin.deepspeed_config)
    for key in ("optimizer", "scheduler"):
        config.pop(key, None)
    config["zero_optimization"]["stage"] = 3
    # An inference engine takes no optimizer steps; these "auto" fields need concrete values.
    config["train_micro_batch_size_per_gpu"] = config.get("train_micro_batch_size_per_gpu", 1)
    if config["train_micro_batch_size_per_gpu"] == "auto":
        config["train_micro_batch_size_per_gpu"] = 1
    config.pop("train_batch_size", None)
    config.pop("gradient_accumulation_steps", None)
    return config


def place_teacher(teacher: nn.Module, accelerator, teacher_dtype: str = "auto") -> tuple[nn.Module, str]:
    """Freeze, cast and place the teacher for this run; returns (teacher, placement)."""
    freeze(teacher)
    if teacher_dtype != "auto":
        teacher.to(DTYPES[teacher_dtype])
    placement = teacher_placement(accelerator)
    if placement == "deepspeed_zero3":
        import deepspeed  # only present where DeepSpeed is installed

        engine, *_ = deepspeed.initialize(model=teacher, config=_deepspeed_inference_config(accelerator))
        engine.module.eval()
        return engine, placement
    if placement == "fsdp":
        return accelerator.prepare_model(teacher, evaluation_mode=True), placement
    return teacher.to(accelerator.device), placement


def forward_argument_names(model: nn.Module) -> set[str] | None:
    """Names a model's forward accepts, or None when it takes **kwargs (then anything may be passed)."""
    target = getattr(model, "module", model)
    params = inspect.signature(target.forward).parameters
    if any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return set(params)
