"""Finding the newest checkpoint that was written completely.

A run killed while `Trainer._save_checkpoint` writes leaves a `checkpoint-N` directory with some files missing or
cut short. Trainer's own `get_last_checkpoint` picks the highest N regardless, and resuming from it fails (or,
worse, loads half a model). `last_complete_checkpoint` walks back from the newest to the first one that is whole.

What "whole" means here follows the order Trainer writes in: weights (and our projections, in `save_model`), then
optimizer, scheduler and RNG state, and `trainer_state.json` last. So a parseable `trainer_state.json` says the
writer got to the end; the weights are checked besides, since a file can be cut short by a full disk or a crash of
the file system after the state file landed.
"""

from __future__ import annotations

import json
import logging
import os
import re
import struct

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .layer_map import PROJECTIONS_FILE

logger = logging.getLogger(__name__)

TRAINER_STATE = "trainer_state.json"
SAFE_WEIGHTS = "model.safetensors"
SAFE_WEIGHTS_INDEX = "model.safetensors.index.json"
TORCH_WEIGHTS = "pytorch_model.bin"
ADAPTER_SAFE_WEIGHTS = "adapter_model.safetensors"
_CHECKPOINT_RE = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


def safetensors_is_complete(path: str) -> bool:
    """True when the file's header parses and the file is as long as the header says.

    A safetensors file is an 8-byte little-endian header length, a JSON header giving each tensor's byte range,
    then the data; a file cut short ends before the largest range does.
    """
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                return False
            (header_len,) = struct.unpack("<Q", raw)
            if header_len > size - 8:
                return False
            header = json.loads(f.read(header_len))
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    return size >= 8 + header_len + end


def checkpoint_problem(path: str, require_projections: bool = False) -> str | None:
    """Why a checkpoint directory cannot be resumed from, or None when it looks complete."""
    state = os.path.join(path, TRAINER_STATE)
    if not os.path.isfile(state):
        return f"{TRAINER_STATE} is missing (the save was interrupted)"
    try:
        with open(state, encoding="utf-8") as f:
            json.load(f)
    except (OSError, ValueError) as err:
        return f"{TRAINER_STATE} does not parse ({err})"
    safetensors = [os.path.join(path, n) for n in (SAFE_WEIGHTS, ADAPTER_SAFE_WEIGHTS)]
    index = os.path.join(path, SAFE_WEIGHTS_INDEX)
    if os.path.isfile(index):
        try:
            with open(index, encoding="utf-8") as f:
                shards = set(json.load(f)["weight_map"].values())
        except (OSError, ValueError, KeyError) as err:
            return f"{SAFE_WEIGHTS_INDEX} does not parse ({err})"
        safetensors += [os.path.join(path, s) for s in sorted(shards)]
        for shard in shards:
            if not os.path.isfile(os.path.join(path, shard)):
                return f"weight shard {shard} is missing"
    present = [p for p in safetensors if os.path.isfile(p)]
    if (
        not present
        and not os.path.isfile(os.path.join(path, TORCH_WEIGHTS))
        and not _has_subdir_weights(path)
    ):
        return "it holds no model weights"
    for p in present:
        if not safetensors_is_complete(p):
            return f"{os.path.basename(p)} is truncated or corrupt"
    if require_projections:
        projections = os.path.join(path, PROJECTIONS_FILE)
        if not os.path.isfile(projections):
            return f"{PROJECTIONS_FILE} (the hidden-size projections) is missing"
        if not safetensors_is_complete(projections):
            return f"{PROJECTIONS_FILE} is truncated or corrupt"
    return None


def _has_subdir_weights(path: str) -> bool:
    # FSDP sharded states and multi-adapter PEFT checkpoints keep weights one level down; trust Trainer there.
    return any(os.path.isdir(os.path.join(path, d)) for d in os.listdir(path))


def checkpoints_newest_first(output_dir: str) -> list[str]:
    """The `checkpoint-N` directories of `output_dir`, highest N first."""
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        match = _CHECKPOINT_RE.match(name)
        if match and os.path.isdir(os.path.join(output_dir, name)):
            found.append((int(match.group(1)), os.path.join(output_dir, name)))
    return [path for _, path in sorted(found, reverse=True)]


def last_complete_checkpoint(output_dir: str, require_projections: bool = False) -> str | None:
    """The newest checkpoint in `output_dir` that was written completely, or None.

    Each newer, incomplete one is skipped with a warning that names it and what is wrong with it.
    `require_projections`: the run trains hidden-size projections, so a checkpoint without them is incomplete.
    """
    for path in checkpoints_newest_first(output_dir):
        problem = checkpoint_problem(path, require_projections)
        if problem is None:
            return path
        logger.warning(
            "Skipping incomplete checkpoint %s: %s. Resuming from the previous complete one instead; delete the "
            "directory once you no longer need it.",
            path,
            problem,
        )
    return None
