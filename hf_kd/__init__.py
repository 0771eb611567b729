"""hf-kd: knowledge distillation for Hugging Face Transformers.

The public API, re-exported once here. Heavy modules load on first use, so `import hf_kd` stays quick.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "DistillationConfig": "config",
    "parse_layer_map": "config",
    "DistillationTrainer": "trainer",
    "DistillationObjective": "objective",
    "LossOutput": "objective",
    "TeacherTargets": "objective",
    "infer_head": "heads",
    "prepare_dataset": "cross_tokenizer",
    "NonFiniteLossError": "nonfinite",
    "DistillationConfigError": "validation",
    "soft_target_loss": "losses",
    "hard_loss": "losses",
    "hidden_state_loss": "losses",
    "attention_loss": "losses",
    "ensemble_log_probs": "losses",
    "topk_soft_target_loss": "losses",
    "resolve_layer_map": "layer_map",
    "HiddenProjections": "layer_map",
    "scheduled_value": "schedules",
    "make_student": "student",
    "cache_teacher_outputs": "cache",
    "teacher_fingerprint": "cache",
    "measure_model": "compression",
    "compare_models": "compression",
    "quantize_dynamic_int8": "compression",
    "prune_heads": "pruning",
    "export_onnx": "export",
    "quantize_onnx_int8": "export",
    "tune_distillation": "tuning",
    "create_distillation_model_card": "model_card",
    "push_distilled_model": "hub",
    "shutdown_distributed": "distributed",
    "make_peft_student": "peft_utils",
    "save_merged": "peft_utils",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'hf_kd' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
