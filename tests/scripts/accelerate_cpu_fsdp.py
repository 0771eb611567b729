"""Make Accelerate build an FSDP state on CPU processes, so that a CPU test machine can run FSDP for real.

Why this exists: Accelerate 1.15's `AcceleratorState.__init__` only switches the distributed type to FSDP for
accelerator devices (MULTI_GPU, MULTI_NPU, ...). On CPU processes it stays MULTI_CPU, so a Trainer given an FSDP
plugin silently trains as plain DDP (FSDP2), or fails with "no available devices found" (FSDP1 with
sync_module_states). torch's FSDP1 and FSDP2 themselves run on CPU over gloo. This patch sets the distributed
type to FSDP after Accelerate's own set-up and copies it into `PartialState._shared_state`, as Accelerate itself
does, because a later `AcceleratorState()` reads it from there and would otherwise revert it. It also sets the
device to plain `cpu`: Accelerate gives CPU processes `cpu:0`, which FSDP1 refuses as a `device_id` ("Inconsistent
compute device and `device_id`: cpu vs cpu:0", since torch's CPU current device is `cpu`).

It is test-only code: the library never patches Accelerate. `apply()` records what Accelerate decided on its own
(`NATIVE["distributed_type"]`), so a test fails loudly once a newer Accelerate shards on CPU by itself (the
patch is then unnecessary) or no longer shards with it (the patch is broken).
"""

from __future__ import annotations

import os

NATIVE: dict[str, str | None] = {"distributed_type": None}


def apply() -> None:
    """Patch `AcceleratorState.__init__` in this process; call it before the Trainer builds its Accelerator."""
    import torch
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    original = AcceleratorState.__init__
    if getattr(original, "_hf_kd_cpu_fsdp", False):
        return

    def patched(self, *args, fsdp_plugin=None, **kwargs):
        original(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        wants_fsdp = (
            fsdp_plugin is not None or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
        )
        if NATIVE["distributed_type"] is None:
            NATIVE["distributed_type"] = str(self.distributed_type)
        if wants_fsdp and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            if fsdp_plugin is not None:
                self.fsdp_plugin = fsdp_plugin
            self.device = torch.device("cpu")
            PartialState._shared_state["distributed_type"] = self.distributed_type
            PartialState._shared_state["device"] = self.device

    patched._hf_kd_cpu_fsdp = True
    AcceleratorState.__init__ = patched
