"""PEFT students: turn the student into a `peft` model, and save the result merged into a full model.

`DistillationTrainer(..., peft_config=...)` calls `make_peft_student`. Only the adapter (and, for
classification heads, the head that peft's task type marks as `modules_to_save`) trains, plus any hf-kd
hidden-size projections; the teacher is never wrapped. `trainer.save_model(dir)` then writes the adapter (what
`PeftModel.from_pretrained(base, dir)` loads); `save_merged(trainer, dir)` writes a full student with the adapter
merged into its weights (what `AutoModelFor....from_pretrained(dir)` loads).
"""

from __future__ import annotations

import copy
import logging
import os
from typing import Any

from torch import nn

from .validation import DistillationConfigError, infer_task

logger = logging.getLogger(__name__)

# hf-kd head type -> peft TaskType name (peft then adds the head to modules_to_save where it applies).
TASK_TYPES = {
    "sequence": "SEQ_CLS",
    "token": "TOKEN_CLS",
    "qa": "QUESTION_ANS",
    "causal": "CAUSAL_LM",
}
DEFAULT_LORA = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0}


def default_lora_config(model: nn.Module) -> Any:
    """LoRA with r=8, alpha=16, no dropout, on the layers peft targets by default for this architecture, with
    the task type of the student's head (so a freshly initialised classifier head trains in full)."""
    from peft import LoraConfig

    task = TASK_TYPES.get(infer_task(model))
    return LoraConfig(task_type=task, **DEFAULT_LORA)


def make_peft_student(model: nn.Module, peft_config: Any) -> nn.Module:
    """`peft.get_peft_model(model, config)`; `peft_config=True` means `default_lora_config(model)`."""
    from peft import PeftModel, get_peft_model

    if isinstance(model, PeftModel):
        raise DistillationConfigError(
            f"model is already a peft model ({type(model).__name__}) and peft_config was given too: pass the "
            "plain student with peft_config, or the peft model without it"
        )
    config = default_lora_config(model) if peft_config is True else peft_config
    try:
        student = get_peft_model(model, config)
    except ValueError as err:
        raise DistillationConfigError(
            f"peft could not apply {type(config).__name__} to {type(model).__name__}: {err}. Pass a "
            "peft_config with target_modules naming the student's linear layers, e.g. "
            "LoraConfig(target_modules=['query', 'value'])"
        ) from err
    trainable, total = student.get_nb_trainable_parameters()
    logger.info(
        "PEFT student: %d of %d parameters train (%.2f%%).", trainable, total, 100 * trainable / total
    )
    return student


def save_merged(trainer: Any, output_dir: str) -> nn.Module:
    """Save the trained PEFT student with its adapter merged into the base weights, as a full model.

    The merge runs on a copy, so the trainer's model keeps its adapter (training or saving the adapter can go
    on). hf-kd's projections live on the peft wrapper, not in the merged model, so they are not saved. Returns
    the merged model; writes only on the process that saves (`args.should_save`).
    """
    from peft import PeftModel

    model = trainer.accelerator.unwrap_model(trainer.model)
    if not isinstance(model, PeftModel):
        raise DistillationConfigError(
            f"save_merged needs a peft student, but the model is {type(model).__name__}: use "
            "trainer.save_model(output_dir) for a full student"
        )
    merged = copy.deepcopy(model).merge_and_unload()
    if trainer.args.should_save:
        os.makedirs(output_dir, exist_ok=True)
        merged.save_pretrained(output_dir)
        if trainer.processing_class is not None:
            trainer.processing_class.save_pretrained(output_dir)
    return merged
