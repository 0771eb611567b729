"""Finding the newest checkpoint that was written completely, and proving that a checkpoint is what was saved.

A run killed while `Trainer._save_checkpoint` writes leaves a `checkpoint-N` directory with some files missing or
cut short. Trainer's own `get_last_checkpoint` picks the highest N regardless, and resuming from it fails with a raw
PyTorch or JSON error, or worse, silently restarts the optimizer, the schedule or the random streams.
`last_complete_checkpoint` walks back from the newest to the first one that is whole, warning with the file that
is wrong in each one it skips, and `check_resumable` turns an explicit `resume_from_checkpoint=path` to a broken
checkpoint into an error naming the file.

Two checks make a checkpoint complete:
- The files Trainer writes, each present and well formed: `trainer_state.json` and `config.json` parse, weights and
  projections are whole safetensors files, and the optimizer, scheduler and RNG states (`optimizer.pt`,
  `scheduler.pt`, `rng_state*.pth`) are whole zip archives as `torch.save` writes them. Sharded states (DeepSpeed,
  FSDP) keep the optimizer in subfolders, which are trusted.
- The manifest `hf_kd_manifest.json`, written by `CheckpointManifestCallback` after Trainer has written everything
  else: the size and sha256 of every file. It is the completion marker, and it catches what a format check cannot
  (weights zero-filled at the right size, bytes garbled inside a valid file). A checkpoint written before the
  manifest existed has none and is judged by the file checks alone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import struct
import zipfile
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .layer_map import PROJECTIONS_FILE

logger = logging.getLogger(__name__)

TRAINER_STATE = "trainer_state.json"
CONFIG_FILE = "config.json"
SAFE_WEIGHTS = "model.safetensors"
SAFE_WEIGHTS_INDEX = "model.safetensors.index.json"
TORCH_WEIGHTS = "pytorch_model.bin"
ADAPTER_SAFE_WEIGHTS = "adapter_model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.pt"
SCALER_FILE = "scaler.pt"
MANIFEST_FILE = "hf_kd_manifest.json"
MANIFEST_FORMAT = "hf-kd-checkpoint-manifest"
_CHECKPOINT_RE = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
_RNG_RE = re.compile(r"^rng_state(_\d+)?\.pth$")


class IncompleteCheckpointError(ValueError):
    """A checkpoint that cannot be resumed from; the message names the file that is missing or wrong."""


# ---- format checks ----------------------------------------------------------------------------------------


def _safetensors_header(path: str) -> tuple[int, dict[str, Any]] | None:
    """(header length, header) of a safetensors file whose length matches its header, else None."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                return None
            (header_len,) = struct.unpack("<Q", raw)
            if header_len > size - 8:
                return None
            header = json.loads(f.read(header_len))
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    except (OSError, ValueError, UnicodeDecodeError, KeyError, TypeError, IndexError):
        return None
    if not isinstance(header, dict) or size < 8 + header_len + end:
        return None
    return header_len, header


def safetensors_is_complete(path: str) -> bool:
    """True when the file's header parses and the file is as long as the header says.

    A safetensors file is an 8-byte little-endian header length, a JSON header giving each tensor's byte range,
    then the data; a file cut short ends before the largest range does.
    """
    return _safetensors_header(path) is not None


def safetensors_is_all_zero(path: str, chunk: int = 1 << 22) -> bool:
    """True when every tensor byte of a (complete) safetensors file is 0: weights zero-filled at the right size.
    A trained model never has that (LayerNorm weights alone are ones)."""
    parsed = _safetensors_header(path)
    if parsed is None:
        return False
    header_len, header = parsed
    if not any(k != "__metadata__" for k in header):
        return False
    with open(path, "rb") as f:
        f.seek(8 + header_len)
        while block := f.read(chunk):
            if block.count(0) != len(block):
                return False
    return True


def torch_file_is_complete(path: str) -> bool:
    """True when a `torch.save` file (a zip archive) opens: a file cut short or zero-filled has no zip directory."""
    try:
        with zipfile.ZipFile(path) as archive:
            size = os.path.getsize(path)
            return all(i.header_offset + i.compress_size <= size for i in archive.infolist())
    except (OSError, zipfile.BadZipFile, ValueError):
        return False


def _json_problem(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            json.load(f)
    except (OSError, ValueError) as err:
        return f"{os.path.basename(path)} does not parse ({err})"
    return None


def _has_subdir_weights(path: str) -> bool:
    # FSDP sharded states, DeepSpeed's global_step folders and multi-adapter PEFT checkpoints keep weights and
    # optimizer states one level down; Trainer's own loaders check those.
    return any(os.path.isdir(os.path.join(path, d)) for d in os.listdir(path))


def file_problem(path: str, require_projections: bool = False, check_zeros: bool = True) -> str | None:
    """The first file Trainer writes that is missing or malformed in checkpoint `path`, as a sentence; or None.

    `check_zeros`: read the weights through to refuse ones zero-filled at the right size (a manifest, when there is
    one, catches that and more through its hashes)."""
    state = os.path.join(path, TRAINER_STATE)
    if not os.path.isfile(state):
        return f"{TRAINER_STATE} is missing (the save was interrupted)"
    problem = _json_problem(state)
    if problem:
        return problem
    sharded = _has_subdir_weights(path)
    safetensors = [os.path.join(path, n) for n in (SAFE_WEIGHTS, ADAPTER_SAFE_WEIGHTS)]
    index = os.path.join(path, SAFE_WEIGHTS_INDEX)
    if os.path.isfile(index):
        try:
            with open(index, encoding="utf-8") as f:
                shards = set(json.load(f)["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError) as err:
            return f"{SAFE_WEIGHTS_INDEX} does not parse ({err})"
        safetensors += [os.path.join(path, s) for s in sorted(shards)]
        for shard in sorted(shards):
            if not os.path.isfile(os.path.join(path, shard)):
                return f"weight shard {shard} is missing"
    present = [p for p in safetensors if os.path.isfile(p)]
    if not present and not os.path.isfile(os.path.join(path, TORCH_WEIGHTS)) and not sharded:
        return "it holds no model weights"
    for p in present:
        if not safetensors_is_complete(p):
            return f"{os.path.basename(p)} is truncated or corrupt"
        if check_zeros and safetensors_is_all_zero(p):
            return (
                f"{os.path.basename(p)} holds only zeros (zero-filled at the right size, not saved weights)"
            )
    for name in (CONFIG_FILE, "adapter_config.json"):
        if os.path.isfile(os.path.join(path, name)):
            problem = _json_problem(os.path.join(path, name))
            if problem:
                return problem
    if require_projections:
        projections = os.path.join(path, PROJECTIONS_FILE)
        if not os.path.isfile(projections):
            return f"{PROJECTIONS_FILE} (the hidden-size projections) is missing"
        if not safetensors_is_complete(projections):
            return f"{PROJECTIONS_FILE} is truncated or corrupt"
    # Optimizer, scheduler and RNG states: without them a resume silently restarts Adam's moments, the learning-rate
    # schedule or the data order, and the run is no longer the one that was checkpointed.
    required = [] if sharded else [OPTIMIZER_FILE, SCHEDULER_FILE]
    for name in required:
        if not os.path.isfile(os.path.join(path, name)):
            return (
                f"{name} is missing (the save was interrupted, or made with save_only_model=True, which cannot be "
                "resumed)"
            )
    rng = sorted(n for n in os.listdir(path) if _RNG_RE.match(n))
    if not rng:
        return "rng_state.pth is missing (the save was interrupted, or made with save_only_model=True)"
    for name in (
        [n for n in (OPTIMIZER_FILE, SCHEDULER_FILE, SCALER_FILE) if n not in required] + required + rng
    ):
        full = os.path.join(path, name)
        if os.path.isfile(full) and not torch_file_is_complete(full):
            return f"{name} is truncated or corrupt"
    return None


# ---- the manifest -------------------------------------------------------------------------------------------


def sha256_of(path: str, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _checkpoint_files(folder: str) -> list[str]:
    """Every regular file under `folder` (relative, POSIX, sorted), less the manifest and its temporary file."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in files:
            full = os.path.join(root, name)
            rel = os.path.relpath(full, folder).replace(os.sep, "/")
            if rel.startswith(MANIFEST_FILE) or not os.path.isfile(full) or os.path.islink(full):
                continue
            found.append(rel)
    return sorted(found)


def write_manifest(folder: str, global_step: int | None = None) -> str:
    """Write `hf_kd_manifest.json` into checkpoint `folder`: size and sha256 of every file in it. Written to a
    temporary name and renamed, so a manifest is either whole or absent. Returns its path."""
    files = {}
    for rel in _checkpoint_files(folder):
        full = os.path.join(folder, rel)
        files[rel] = {"size": os.path.getsize(full), "sha256": sha256_of(full)}
    manifest = {"format": MANIFEST_FORMAT, "version": 1, "global_step": global_step, "files": files}
    path = os.path.join(folder, MANIFEST_FILE)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def manifest_problem(folder: str, require_projections: bool = False) -> str | None:
    """What in checkpoint `folder` differs from its manifest (a missing file, another size, another sha256), or
    None; None too when there is no manifest (a checkpoint from before it existed)."""
    path = os.path.join(folder, MANIFEST_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
        files = manifest["files"]
        if manifest.get("format") != MANIFEST_FORMAT or not isinstance(files, dict):
            raise ValueError(f"not an {MANIFEST_FORMAT}")
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"{MANIFEST_FILE} does not parse ({err})"
    for rel, entry in sorted(files.items()):
        if rel == PROJECTIONS_FILE and not require_projections:
            continue  # a run without projections never reads them
        full = os.path.join(folder, rel)
        if not os.path.isfile(full):
            return f"{rel} is missing (it is listed in {MANIFEST_FILE})"
        size = os.path.getsize(full)
        if size != entry.get("size"):
            return f"{rel} has {size} bytes but {MANIFEST_FILE} says {entry.get('size')} (cut short or rewritten)"
        if sha256_of(full) != entry.get("sha256"):
            return f"{rel} does not match its sha256 in {MANIFEST_FILE} (its content changed after the save)"
    return None


class CheckpointManifestCallback(TrainerCallback):
    """Writes `hf_kd_manifest.json` into each checkpoint after Trainer has saved everything in it.

    `on_save` runs once `_save_checkpoint` is done (weights, projections, optimizer, scheduler, RNG states,
    `trainer_state.json`), so the manifest is the last file written: its presence marks the save as finished, and
    its sizes and hashes let `checkpoint_problem` prove each file unchanged. With several processes each writes its
    own RNG state, so all wait for one another before the main process hashes the folder.
    """

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        if getattr(args, "world_size", 1) > 1:
            from accelerate import PartialState

            PartialState().wait_for_everyone()
        if args.should_save and os.path.isdir(folder):
            write_manifest(folder, state.global_step)


# ---- choosing and checking a checkpoint ---------------------------------------------------------------------


def checkpoint_problem(path: str, require_projections: bool = False) -> str | None:
    """Why a checkpoint directory cannot be resumed from, naming the file; None when it is complete."""
    has_manifest = os.path.isfile(os.path.join(path, MANIFEST_FILE))
    return file_problem(path, require_projections, check_zeros=not has_manifest) or manifest_problem(
        path, require_projections
    )


def check_resumable(path: str, require_projections: bool = False) -> None:
    """Raise `IncompleteCheckpointError` naming the missing or bad file when checkpoint `path` cannot be resumed
    from (for an explicit `resume_from_checkpoint=path`)."""
    if not os.path.isdir(path):
        raise IncompleteCheckpointError(
            f"resume_from_checkpoint={path!r} is not a directory: pass a {PREFIX_CHECKPOINT_DIR}-N folder, or "
            "resume_from_checkpoint=True for the newest complete checkpoint in the output directory"
        )
    problem = checkpoint_problem(path, require_projections)
    if problem is not None:
        raise IncompleteCheckpointError(
            f"cannot resume from {path}: {problem}. Pass an earlier checkpoint, resume_from_checkpoint=True (the "
            "newest complete checkpoint in the output directory), or start without resume_from_checkpoint"
        )


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

    Each newer, incomplete one is skipped with a warning that names it and the file that is wrong in it.
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
