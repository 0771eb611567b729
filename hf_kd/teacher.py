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

import copy
import inspect
import logging
from dataclasses import dataclass
from typing import Any

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


# ---- teacher precision by measurement ------------------------------------------------------------------

# teacher_dtype="auto" keeps a bfloat16 teacher only if, on a first batch, it agrees with the float32 teacher:
BF16_MIN_AGREEMENT = 0.995  # share of items (examples, or real tokens) with the same argmax class
# Mean KL(p_float32 || p_bfloat16) per item at T=1, in nats. bfloat16 keeps 8 bits of mantissa, so logits move by
# about 0.4% of their size; for a trained classifier that gives KL of order 1e-5..1e-4. 1e-3 nats is far below the
# KD term's own size at the temperatures people use (0.01..1) yet above bfloat16's rounding alone.
BF16_MAX_KL = 1e-3


@dataclass
class TeacherPrecision:
    """The teacher's forward dtype, and why: the outcome of `resolve_teacher_dtype`.

    `agreement` (argmax agreement with float32) and `kl` (mean KL(p_float32 || p_bfloat16) per item) are None when
    no comparison ran (a forced dtype, or a device without fast bfloat16).
    """

    dtype: torch.dtype
    agreement: float | None
    kl: float | None
    reason: str

    def as_dict(self) -> dict[str, Any]:
        """Plain values for logs, `distillation_summary()` and the model card."""
        return {
            "teacher_dtype": str(self.dtype).removeprefix("torch."),
            "bf16_argmax_agreement": self.agreement,
            "bf16_kl": self.kl,
            "bf16_min_agreement": BF16_MIN_AGREEMENT,
            "bf16_max_kl": BF16_MAX_KL,
            "reason": self.reason,
        }


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def bf16_is_fast(device: str | torch.device) -> tuple[bool, str]:
    """Whether `device` runs bfloat16 matrix products natively (faster than float32), and what says so.

    CUDA: `torch.cuda.is_bf16_supported()` (Ampere and later). CPU: AMX (`amx_bf16`) or AVX512-BF16
    (`avx512_bf16`) in /proc/cpuinfo; without them, oneDNN emulates bfloat16 through float32 and gains nothing.
    """
    device = torch.device(device)
    if device.type == "cuda":
        ok = torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
        return ok, f"CUDA device {'supports' if ok else 'has no native'} bfloat16"
    if device.type == "cpu":
        found = sorted(_cpu_flags() & {"amx_bf16", "avx512_bf16"})
        capability = torch.backends.cpu.get_cpu_capability()
        if found:
            return True, f"CPU has {' and '.join(found)} (torch CPU capability {capability})"
        return False, f"CPU has neither amx_bf16 nor avx512_bf16 (torch CPU capability {capability})"
    return False, f"no bfloat16 speed check for device type {device.type!r}"


def warn_if_autocast_is_emulated(args: Any) -> bool:
    """Log a warning when `args` (TrainingArguments) asks for bfloat16 autocast (`bf16=True`) on a CPU without
    native bfloat16: there oneDNN emulates every bfloat16 product, and training runs many times slower than in
    float32 (an MPNet training step of 16 x 128 tokens took 468 s against 12 s on 2 AVX2 cores). Returns whether
    it warned."""
    if not getattr(args, "bf16", False) or args.device.type != "cpu":
        return False
    fast, why = bf16_is_fast("cpu")
    if fast:
        return False
    logger.warning(
        "bf16=True on this CPU: %s, so bfloat16 autocast is emulated and training runs many times slower than in "
        "float32. Train in float32 here (drop bf16 / --bf16); the teacher can still use teacher_dtype='auto'.",
        why,
    )
    return True


def _comparable_logits(outputs: Any, batch: dict[str, Any]) -> torch.Tensor:
    """The teacher's class scores as (N, C) float32 rows, one per item: examples, or the real tokens of
    token-level heads (attention_mask 1); QA gives its start and end logits as two 'classes' lists per example."""
    logits = outputs.get("logits") if hasattr(outputs, "get") else None
    if logits is None and hasattr(outputs, "get") and outputs.get("start_logits") is not None:
        logits = torch.stack([outputs["start_logits"], outputs["end_logits"]], dim=1)  # (B, 2, L)
        return logits.float().reshape(-1, logits.shape[-1])
    if logits is None:
        raise ValueError(
            "the teacher returns no logits: a precision check needs a classification, QA or LM head"
        )
    logits = logits.float()
    if logits.dim() == 3:  # (B, L, C): keep real tokens only
        mask = batch.get("attention_mask")
        keep = mask.bool() if mask is not None else torch.ones(logits.shape[:2], dtype=torch.bool)
        return logits[keep.to(logits.device)]  # (N, C)
    return logits.reshape(-1, logits.shape[-1])


def _bfloat16_copy(teacher: nn.Module) -> nn.Module:
    return copy.deepcopy(teacher).to(torch.bfloat16)


def resolve_teacher_dtype(
    teacher: nn.Module,
    sample_batch: dict[str, Any],
    device: str | torch.device | None = None,
    requested: str = "auto",
) -> TeacherPrecision:
    """Pick the teacher's forward dtype by measurement.

    Args:
        teacher: the float32 teacher (left unchanged: the check runs a bfloat16 copy).
        sample_batch: a collated batch of model inputs (for example the first training batch); label columns are
            ignored.
        device: where the teacher will run; default the teacher's device.
        requested: `auto`, or a forced `float32`, `bfloat16` or `float16` (returned as is, without a check).

    `auto` keeps a teacher loaded in another dtype than float32 as it is. For a float32 teacher it gives
    bfloat16 when the device runs it natively (`bf16_is_fast`) and a bfloat16 copy of the teacher
    agrees with the float32 teacher on `sample_batch`: argmax agreement >= `BF16_MIN_AGREEMENT` and mean KL per
    item <= `BF16_MAX_KL`. Otherwise float32. Either way the figures and the reason are logged and returned. The
    copy costs half the teacher's float32 memory for the duration of the check.
    """
    forced = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if requested in forced:
        return TeacherPrecision(forced[requested], None, None, f"teacher_dtype={requested!r} was asked for")
    if requested != "auto":
        raise ValueError(
            f"teacher_dtype={requested!r} is not one of ['auto', {', '.join(map(repr, forced))}]"
        )
    param = next(teacher.parameters(), None)
    if param is not None and param.dtype != torch.float32:
        # The user chose the teacher's precision when loading it (torch_dtype=...): auto leaves it alone.
        dtype = param.dtype
        precision = TeacherPrecision(
            dtype, None, None, f"{str(dtype).removeprefix('torch.')}: the teacher was loaded in it"
        )
        logger.info("Teacher precision: %s.", precision.reason)
        return precision
    device = torch.device(device) if device is not None else (param.device if param is not None else "cpu")
    fast, why = bf16_is_fast(device)
    if not fast:
        precision = TeacherPrecision(torch.float32, None, None, f"float32: {why}")
        logger.info("Teacher precision: %s.", precision.reason)
        return precision

    from .heads import TARGET_COLUMNS

    batch = {
        k: v.to(device) for k, v in sample_batch.items() if torch.is_tensor(v) and k not in TARGET_COLUMNS
    }
    names = forward_argument_names(teacher)
    if names is not None:
        batch = {k: v for k, v in batch.items() if k in names}
    was_training = teacher.training
    teacher.eval()
    try:
        with torch.inference_mode():
            reference = _comparable_logits(teacher.to(device)(**batch), batch)  # (N, C) float32
            half = _bfloat16_copy(teacher)
            candidate = _comparable_logits(half(**batch), batch)
            del half
    finally:
        teacher.train(was_training)
    agreement = (reference.argmax(-1) == candidate.argmax(-1)).float().mean().item()
    log_p, log_q = reference.log_softmax(-1), candidate.log_softmax(-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1).clamp_min(0).mean().item()
    figures = f"argmax agreement {agreement:.4f} (needs >= {BF16_MIN_AGREEMENT}), KL {kl:.2e} (needs <= {BF16_MAX_KL:g})"
    if agreement >= BF16_MIN_AGREEMENT and kl <= BF16_MAX_KL:
        precision = TeacherPrecision(torch.bfloat16, agreement, kl, f"bfloat16: {why}; {figures}")
        logger.info("Teacher precision: %s over %d items.", precision.reason, len(reference))
    else:
        precision = TeacherPrecision(
            torch.float32,
            agreement,
            kl,
            f"float32: bfloat16 disagrees with float32 on the first batch; {figures}",
        )
        logger.warning(
            "Teacher precision: %s over %d items; keeping float32.", precision.reason, len(reference)
        )
    return precision


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


def place_teacher(
    teacher: nn.Module,
    accelerator,
    teacher_dtype: str = "auto",
    precision: TeacherPrecision | None = None,
) -> tuple[nn.Module, str]:
    """Freeze, cast and place the teacher for this run; returns (teacher, placement).

    The dtype: `precision.dtype` when given (the outcome of `resolve_teacher_dtype`), else `teacher_dtype` when
    it names one; `auto` without a measurement keeps the teacher as loaded.
    """
    freeze(teacher)
    if precision is not None:
        teacher.to(precision.dtype)
    elif teacher_dtype != "auto":
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
    """The inputs a model's forward names explicitly, or None when it names none (then anything may be passed).

    transformers 5 models also take **kwargs, which swallow any other key silently, so the explicit parameters
    are the ones that matter: the trainer, the cache and the precision check all pass a teacher only these."""
    target = getattr(model, "module", model)
    params = inspect.signature(target.forward).parameters
    named = {n for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    return named or None
