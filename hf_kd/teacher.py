"""The teacher: freezing, placement through the Trainer's Accelerator, and the names of cached outputs.

Placement decision (see `teacher_placement`):
- DeepSpeed ZeRO-3: the teacher is sharded for inference with `deepspeed.initialize` (each rank holds 1/N of
  its weights; a forward gathers layer by layer). Memory: parameters / N per rank, plus one layer's gathered
  weights at a time.
- FSDP: the teacher is sharded for inference with the run's FSDP plugin settings (FSDP2: each transformer
  block, then the root; FSDP1: the plugin's auto-wrap policy), like the student but without gradients or
  optimizer state. Memory: parameters / N per rank plus one block's gathered weights.
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


def _deepspeed_inference_config(accelerator, teacher: nn.Module | None = None) -> dict:
    """The training DeepSpeed config turned into one for a ZeRO-3 inference engine holding the teacher.

    Optimizer, scheduler and the batch-size bookkeeping go (the engine takes no optimizer step). "auto" values
    are resolved the way transformers resolves them for the student: precision from the Accelerator's mixed
    precision, the ZeRO-3 bucket sizes from the teacher's hidden size; any other "auto" left is dropped so
    DeepSpeed uses its default (DeepSpeed rejects the string "auto").
    """
    import copy

    config = copy.deepcopy(accelerator.state.deepspeed_plugin.deepspeed_config)
    for key in (
        "optimizer",
        "scheduler",
        "train_batch_size",
        "gradient_accumulation_steps",
        "gradient_clipping",
    ):
        config.pop(key, None)
    if config.get("train_micro_batch_size_per_gpu", "auto") == "auto":
        config["train_micro_batch_size_per_gpu"] = 1
    zero = config.setdefault("zero_optimization", {})
    zero["stage"] = 3
    zero.pop("offload_optimizer", None)
    hidden = getattr(getattr(teacher, "config", None), "hidden_size", None)
    if hidden:
        sizes = {
            "reduce_bucket_size": hidden * hidden,
            "stage3_prefetch_bucket_size": int(0.9 * hidden * hidden),
            "stage3_param_persistence_threshold": 10 * hidden,
        }
        for key, value in sizes.items():
            if zero.get(key) == "auto":
                zero[key] = value
    mixed = str(getattr(accelerator, "mixed_precision", "no"))
    for key, mode in (("fp16", "fp16"), ("bf16", "bf16")):
        if isinstance(config.get(key), dict) and config[key].get("enabled") == "auto":
            config[key]["enabled"] = mixed == mode
    return _drop_auto(config)


def _drop_auto(config: dict) -> dict:
    out = {}
    for key, value in config.items():
        if value == "auto":
            logger.info(
                "DeepSpeed teacher config: %r is 'auto' with nothing to resolve it from; dropped.", key
            )
            continue
        out[key] = _drop_auto(value) if isinstance(value, dict) else value
    return out


def _shard_with_fsdp(teacher: nn.Module, accelerator) -> nn.Module:
    """Shard the frozen teacher with the training run's FSDP settings, for forward passes only.

    `accelerator.prepare_model(teacher, evaluation_mode=True)` would only move it to the device (evaluation mode
    skips every wrapper), leaving a full copy on each rank; a mix of FSDP2 DTensors (student) and plain tensors
    (teacher) also breaks collectives. So wrap it explicitly: FSDP2 shards each transformer block
    (`_no_split_modules`) and then the root, FSDP1 uses the plugin's auto-wrap policy.
    """
    plugin = accelerator.state.fsdp_plugin
    if getattr(plugin, "fsdp_version", 1) == 2:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        options = {
            "reshard_after_forward": plugin.reshard_after_forward,
            "offload_policy": plugin.cpu_offload,
            "mp_policy": plugin.mixed_precision_policy or MixedPrecisionPolicy(),
        }
        block_names = set(getattr(teacher, "_no_split_modules", None) or ())
        for module in list(teacher.modules())[1:]:
            if type(module).__name__ in block_names:
                fully_shard(module, **options)
        fully_shard(teacher, **options)
        return teacher.eval()
    from torch.distributed.fsdp import FullyShardedDataParallel

    plugin.set_auto_wrap_policy(teacher)
    wrapped = FullyShardedDataParallel(
        teacher,
        sharding_strategy=plugin.sharding_strategy,
        cpu_offload=plugin.cpu_offload,
        auto_wrap_policy=plugin.auto_wrap_policy,
        mixed_precision=plugin.mixed_precision_policy,
        use_orig_params=plugin.use_orig_params,
        device_id=accelerator.device,
    )
    return wrapped.eval()


def place_teacher(teacher: nn.Module, accelerator, teacher_dtype: str = "auto") -> tuple[nn.Module, str]:
    """Freeze, cast and place the teacher for this run; returns (teacher, placement)."""
    freeze(teacher)
    if teacher_dtype != "auto":
        teacher.to(DTYPES[teacher_dtype])
    placement = teacher_placement(accelerator)
    if placement == "deepspeed_zero3":
        try:
            import deepspeed  # only present where DeepSpeed is installed
        except ImportError as err:
            raise ImportError(
                "the Accelerator runs DeepSpeed ZeRO-3, so the teacher is to be sharded with DeepSpeed, but "
                "deepspeed is not importable: pip install deepspeed (on the GPU machine), or launch without the "
                "DeepSpeed config to replicate the teacher"
            ) from err
        config = _deepspeed_inference_config(accelerator, teacher)
        engine, *_ = deepspeed.initialize(model=teacher, config=config)
        engine.module.eval()
        return engine, placement
    if placement == "fsdp":
        return _shard_with_fsdp(teacher.to(accelerator.device), accelerator), placement
    return teacher.to(accelerator.device), placement


def forward_argument_names(model: nn.Module) -> set[str] | None:
    """Names a model's forward accepts, or None when it takes **kwargs (then anything may be passed)."""
    target = getattr(model, "module", model)
    params = inspect.signature(target.forward).parameters
    if any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return set(params)
