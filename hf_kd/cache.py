"""Cached teacher outputs: run the teacher once, keep its logits as dataset columns, train many epochs on them.

`cache_teacher_outputs(teacher, dataset)` returns the dataset with the teacher's outputs as extra columns (names in
`hf_kd.teacher`):

- sequence-level heads: `teacher_logits`, a list of C floats per example;
- token-level heads (token classification, masked or causal LM): `teacher_logits`, an (L_i, C) list per example
  holding the rows of the example's real tokens (where `attention_mask` is 1) -- padding is not stored;
- extractive QA: `teacher_start_logits` and `teacher_end_logits`, (L_i,) per example, likewise;
- with `top_k` (big vocabularies): `teacher_topk_log_probs` = the k largest values of
  `log_softmax(logits / temperature)`, sorted descending (index 0 is the argmax), and `teacher_topk_indices`,
  instead of full logits. The KD term then folds the remaining probability mass into one bucket
  (`hf_kd.losses.topk_soft_target_loss`), which is why these values only hold at the temperature they were made at.

The cache is keyed on the teacher's weights (`teacher_fingerprint`), its name, the tokenizer (name + vocabulary
hash), the dataset (`dataset._fingerprint`), `top_k` and `temperature`. The key and its parts travel with the
dataset as JSON in `dataset.info.description`, which `datasets` carries through `select`, `shuffle`, `map`,
`filter`, `train_test_split` and `save_to_disk`/`load_from_disk`; `read_cache_metadata` reads it back. The
metadata also holds `content_hash` (the teacher columns' values, `content_hash`) and `bytes_per_example`.

With `cache_dir`, the cache is saved there and read back memory-mapped. Under torchrun / accelerate launch every
process computes a contiguous slice and writes it as one Arrow file; rank 0 joins the files into one dataset with
the key, path and fingerprint of a 1-process build. A saved cache that cannot be read, or whose values no longer
match `content_hash`, is rebuilt with a warning naming its path (or raises `TeacherCacheError`).

`TeacherCacheCollator` wraps any collator: it takes the teacher columns out of the features, lets the inner
collator build the batch, then stacks the cached values into float tensors aligned with the padded batch
(token-level values are scattered back to the positions where `attention_mask` is 1; padding holds zeros, which
the trainer's KD mask excludes).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .cross_tokenizer import has_teacher_inputs, teacher_view
from .teacher import (
    TEACHER_COLUMNS,
    TEACHER_END_LOGITS,
    TEACHER_LOGITS,
    TEACHER_START_LOGITS,
    TEACHER_TOPK_INDICES,
    TEACHER_TOPK_LOG_PROBS,
    forward_argument_names,
)
from .validation import DistillationConfigError, _arrow_column, infer_task

logger = logging.getLogger(__name__)

METADATA_KEY = "hf_kd_teacher_cache"
CACHE_FORMAT = 1
# Columns that are never model inputs for the teacher: its forward would compute a loss we do not need.
# Columns aligned with token positions (padded back to the batch's sequence length by the collator).
_TOKEN_ALIGNED_1D = (TEACHER_START_LOGITS, TEACHER_END_LOGITS)


# ---- fingerprints and metadata -------------------------------------------------------------------------


def teacher_fingerprint(model: nn.Module) -> str:
    """A stable hash of the teacher's weights: every state-dict tensor's name, dtype, shape and bytes, plus the
    model and config classes. Two teachers with equal weights give the same fingerprint in any process; one
    changed weight gives another. About 0.1 s for a 22M-parameter model on CPU."""
    model = getattr(model, "module", model)  # DDP / DeepSpeed wrappers
    digest = hashlib.blake2b(digest_size=16)
    digest.update(type(model).__name__.encode())
    digest.update(type(getattr(model, "config", None)).__name__.encode())
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        # Raw bytes of any dtype (bfloat16 has no numpy equivalent), hence the uint8 view.
        digest.update(tensor.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer: Any) -> str | None:
    """Class, name and a hash of the vocabulary: a different tokenization means different teacher inputs."""
    if tokenizer is None:
        return None
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    digest = hashlib.blake2b(digest_size=16)
    digest.update(type(tokenizer).__name__.encode())
    digest.update(str(getattr(tokenizer, "name_or_path", "")).encode())
    digest.update(json.dumps(sorted(vocab.items())).encode())
    return digest.hexdigest()


def _model_name(model: nn.Module) -> str | None:
    config = getattr(getattr(model, "module", model), "config", None)
    return getattr(config, "_name_or_path", None) or getattr(config, "name_or_path", None) or None


def _cache_key(parts: dict[str, Any]) -> str:
    return hashlib.blake2b(json.dumps(parts, sort_keys=True).encode(), digest_size=16).hexdigest()


def read_cache_metadata(dataset: Any) -> dict[str, Any] | None:
    """The cache metadata written by `cache_teacher_outputs` (keys: cache_key, teacher_fingerprint, teacher_name,
    tokenizer_fingerprint, dataset_fingerprint, top_k, temperature, task, num_classes, ...), or None."""
    info = getattr(dataset, "info", None)
    text = getattr(info, "description", None)
    if not text:
        return None
    try:
        payload = json.loads(text)
    except (TypeError, ValueError):
        return None
    if isinstance(payload, dict) and isinstance(payload.get(METADATA_KEY), dict):
        return payload[METADATA_KEY]
    return None


def _write_metadata(dataset: Any, meta: dict[str, Any]) -> None:
    """Store `meta` in the dataset's description, keeping a user description that was there before."""
    previous = dataset.info.description or ""
    if read_cache_metadata(dataset) is not None:
        previous = json.loads(previous).get("description", "")
    dataset.info.description = json.dumps({METADATA_KEY: meta, "description": previous})


# ---- computing the cache -------------------------------------------------------------------------------


def _teacher_input_columns(teacher: nn.Module, columns: list[str]) -> list[str]:
    """Dataset columns that the teacher's forward names explicitly (v5 models also take **kwargs, so the
    explicit parameters are the ones that matter); targets are left out so the teacher computes no loss."""
    from .heads import TARGET_COLUMNS

    target = getattr(teacher, "module", teacher)
    named = forward_argument_names(teacher) or set()
    chosen = [c for c in columns if c in named and c not in TARGET_COLUMNS]
    if not chosen:
        raise ValueError(
            f"none of the dataset's columns {columns} is an input of {type(target).__name__}.forward "
            f"(it takes {sorted(named)}): tokenize the dataset first (input_ids, attention_mask)"
        )
    return chosen


def _default_device(teacher: nn.Module) -> torch.device:
    param = next(teacher.parameters(), None)
    if param is not None and param.device.type != "cpu":
        return param.device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _rows(values: torch.Tensor, mask: torch.Tensor | None) -> list[list]:
    """Per example, the rows at real-token positions: values (B, L, ...) -> B lists of (L_i, ...)."""
    values = values.cpu()
    if mask is None:
        return [v.tolist() for v in values]
    mask = mask.bool().cpu()
    return [v[m].tolist() for v, m in zip(values, mask)]


class TeacherCacheError(OSError):
    """A teacher cache on disk that cannot be read, or whose columns no longer match their content hash."""


ON_CORRUPT = ("rebuild", "raise")
TOPK_DTYPES = ("float16", "float32")


def _arrow_table(dataset: Any) -> Any:
    """The rows a dataset shows as one pyarrow Table (a select/shuffle view is flattened first)."""
    if getattr(dataset, "_indices", None) is not None:
        dataset = dataset.flatten_indices()
    return dataset.data.table if hasattr(dataset.data, "table") else dataset.data


def content_hash(dataset: Any) -> str:
    """A hash of the teacher columns' values and list lengths, independent of how the rows are split into Arrow
    chunks or files (so a cache built by several processes and read back as one dataset hashes the same way).

    It reads every teacher value once, memory-mapped when the dataset is on disk: a truncated Arrow file raises
    here (OSError), and values garbled in a still valid format give another hash.
    """
    import pyarrow as pa

    table = _arrow_table(dataset)
    digest = hashlib.blake2b(digest_size=16)
    for name in sorted(c for c in TEACHER_COLUMNS if c in table.column_names):
        streams: list[Any] = []  # one digest per nesting level, fed across chunks in row order
        for chunk in table.column(name).chunks:
            array, level = chunk, 0
            while pa.types.is_list(array.type) or pa.types.is_large_list(array.type):
                if len(streams) <= level:
                    streams.append(hashlib.blake2b(digest_size=16))
                lengths = array.value_lengths().fill_null(-1).to_numpy(zero_copy_only=False).astype("<i8")
                streams[level].update(lengths.tobytes())
                array, level = array.flatten(), level + 1
            if len(streams) <= level:
                streams.append(hashlib.blake2b(digest_size=16))
            streams[level].update(array.to_numpy(zero_copy_only=False).tobytes())
        digest.update(name.encode())
        for stream in streams:
            digest.update(stream.digest())
    return digest.hexdigest()


def bytes_per_example(dataset: Any) -> float:
    """Bytes the teacher columns take per example in Arrow (values, list offsets and validity buffers)."""
    table = _arrow_table(dataset)
    names = [c for c in TEACHER_COLUMNS if c in table.column_names]
    return table.select(names).nbytes / max(1, table.num_rows)


def _process_layout(device: str | torch.device | None) -> tuple[int, int, torch.device | None]:
    """(rank, world size, device) of this process. Under torchrun / accelerate launch the process group is set
    up through Accelerate's `PartialState` (gloo on CPU, NCCL on GPUs), as the Trainer would."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return 0, 1, torch.device(device) if device is not None else None
    from accelerate import PartialState

    # Without a GPU, Accelerate only forms a multi-process group over gloo when told the run is on CPU (as the
    # Trainer does for use_cpu=True); otherwise it sees 1 process.
    state = PartialState(cpu=not torch.cuda.is_available())
    return (
        state.process_index,
        state.num_processes,
        torch.device(device) if device is not None else state.device,
    )


def _barrier(world: int) -> None:
    if world > 1:
        torch.distributed.barrier()


def _load_verified(path: str, key: str) -> tuple[Any | None, str | None]:
    """(the cache at `path`, None) when it reads back whole with the expected key and content hash, else
    (None, why not)."""
    from datasets import load_from_disk

    try:
        loaded = load_from_disk(path)
        found = read_cache_metadata(loaded)
        if found is None or found.get("cache_key") != key:
            return None, f"it holds no teacher cache with key {key}"
        stored = found.get("content_hash")
        actual = content_hash(loaded)
    except (OSError, ValueError, KeyError, TypeError) as err:  # truncated Arrow file, broken JSON, ...
        return None, f"it cannot be read ({type(err).__name__}: {err})"
    if stored is not None and stored != actual:
        return None, f"its teacher columns hash to {actual}, not to the {stored} recorded when it was built"
    return loaded, None


def _build_columns(
    teacher: nn.Module,
    inputs_view: Any,
    collator: Callable[[list[dict[str, Any]]], dict[str, Any]],
    batch_size: int,
    device: torch.device,
    top_k: int | None,
    temperature: float | None,
    task: str,
    desc: str,
) -> tuple[dict[str, list], str, int | None]:
    """Run the teacher over every row of `inputs_view`; returns (column name -> per-example values, task,
    number of classes)."""
    from tqdm.auto import tqdm

    first_param = next(teacher.parameters(), None)
    home = first_param.device if first_param is not None else device
    was_training = teacher.training
    teacher.eval().to(device)
    stored: dict[str, list] = {}
    num_classes = None
    order = _longest_first(inputs_view)
    try:
        n = len(inputs_view)
        with torch.no_grad():
            for start in tqdm(range(0, n, batch_size), desc=desc, unit="batch"):
                rows = inputs_view[order[start : start + batch_size]]  # dict of column -> list
                features = [dict(zip(rows, values)) for values in zip(*rows.values())]
                try:
                    batch = collator(features)
                except (ValueError, RuntimeError) as err:
                    raise ValueError(
                        f"cannot batch the dataset's examples for the teacher ({err}): pass tokenizer=<the "
                        "tokenizer> (to pad with DataCollatorWithPadding) or collator=<your collator>"
                    ) from err
                batch = {k: v.to(device) for k, v in batch.items() if torch.is_tensor(v)}
                outputs = teacher(**batch)
                mask = batch.get("attention_mask")
                if task == "qa" or (
                    outputs.get("logits") is None and outputs.get("start_logits") is not None
                ):
                    task = "qa"
                    heads = {
                        TEACHER_START_LOGITS: outputs["start_logits"],
                        TEACHER_END_LOGITS: outputs["end_logits"],
                    }
                    for name, logits in heads.items():  # (B, L)
                        stored.setdefault(name, []).extend(_rows(logits.float(), mask))
                    continue
                logits = outputs.get("logits") if hasattr(outputs, "get") else None
                if logits is None:
                    raise ValueError(
                        f"{type(teacher).__name__} returns no logits: cache the outputs of a model with a "
                        "classification, QA or language-modelling head"
                    )
                num_classes = int(logits.shape[-1])
                token_level = logits.dim() == 3  # (B, L, C) rather than (B, C)
                if top_k is None:
                    if token_level and num_classes > 1000 and start == 0:
                        logger.warning(
                            "Caching full %d-way logits at every token (about %d bytes per token): pass "
                            "top_k=<e.g. 64> and temperature=<the run's> to store only the top-k log-probabilities.",
                            num_classes, 4 * num_classes,
                        )  # fmt: skip
                    values = {TEACHER_LOGITS: logits}
                else:
                    if top_k > num_classes:
                        raise ValueError(f"top_k={top_k} exceeds the teacher's {num_classes} classes")
                    log_probs = torch.log_softmax(logits.float() / temperature, dim=-1)  # (..., C)
                    top = log_probs.topk(top_k, dim=-1, sorted=True)  # (..., k), descending
                    values = {TEACHER_TOPK_LOG_PROBS: top.values, TEACHER_TOPK_INDICES: top.indices}
                for name, tensor in values.items():
                    tensor = tensor.long() if name == TEACHER_TOPK_INDICES else tensor.float()
                    rows_out = _rows(tensor, mask) if token_level else tensor.cpu().tolist()
                    stored.setdefault(name, []).extend(rows_out)
    finally:
        teacher.train(was_training)
        teacher.to(home)
    return {name: _unsorted(values, order) for name, values in stored.items()}, task, num_classes


def _longest_first(inputs_view: Any) -> list[int]:
    """Row order for the teacher's batches: longest first (stable), so that each padded batch holds rows of
    similar length and little padding; a length-grouped order, as the Trainer's `group_by_length`, with the
    longest batch first so that running out of memory shows at once. The values are put back in row order
    (`_unsorted`) and are the same per row: padding is masked out and stripped."""
    import pyarrow.compute as pc

    column = _arrow_column(inputs_view, "input_ids")
    if column is None:
        return list(range(len(inputs_view)))
    lengths = pc.list_value_length(column).to_pylist()
    return sorted(range(len(lengths)), key=lambda i: -lengths[i])


def _unsorted(values: list, order: list[int]) -> list:
    """`values[i]` belongs to row `order[i]`: back in row order."""
    out: list = [None] * len(values)
    for position, row in enumerate(order):
        out[row] = values[position]
    return out


def _with_columns(
    base: Any, stored: dict[str, list], token_level: bool, topk_dtype: str, fingerprint: dict[str, Any]
) -> Any:
    """`base` with the teacher columns added (float32 logits; top-k log-probabilities in `topk_dtype`)."""
    from datasets import List, Value

    result = base
    for name, column in stored.items():
        if name == TEACHER_TOPK_INDICES:
            scalar = Value("int64")
        elif name == TEACHER_TOPK_LOG_PROBS:
            scalar = Value(topk_dtype)
        else:
            scalar = Value("float32")
        nested = name not in _TOKEN_ALIGNED_1D and token_level
        feature = List(List(scalar)) if nested else List(scalar)
        result = result.add_column(
            name, column, feature=feature, new_fingerprint=_cache_key({**fingerprint, "col": name})
        )
    return result


def _is_token_level(task: str, stored: dict[str, list]) -> bool:
    return task in ("token", "mlm", "causal", "qa") or bool(
        TEACHER_LOGITS in stored and stored[TEACHER_LOGITS] and isinstance(stored[TEACHER_LOGITS][0][0], list)
    )


def _join_shards(parts: list[str], path: str, meta: dict[str, Any]) -> None:
    """Rank 0: join the processes' shard folders (each a `save_to_disk` of one Arrow file) into one dataset at
    `path` without copying rows: each shard's Arrow file moves in as `data-<r>-of-<W>.arrow`, in rank order, and
    `state.json` lists them; the join then reads back memory-mapped."""
    import shutil

    from datasets import load_from_disk

    staging = f"{path}.joining"
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    files = []
    for r, part in enumerate(parts):
        with open(os.path.join(part, "state.json")) as f:
            (only,) = json.load(f)["_data_files"]  # one Arrow file per process
        name = f"data-{r:05d}-of-{len(parts):05d}.arrow"
        os.replace(os.path.join(part, only["filename"]), os.path.join(staging, name))
        files.append({"filename": name})
    shutil.copy(os.path.join(parts[0], "dataset_info.json"), os.path.join(staging, "dataset_info.json"))
    state = {
        "_data_files": files,
        "_fingerprint": meta["cache_key"][:16],
        "_format_columns": None,
        "_format_kwargs": {},
        "_format_type": None,
        "_output_all_columns": False,
        "_split": None,
    }
    with open(os.path.join(staging, "state.json"), "w") as f:
        json.dump(state, f, indent=2)
    joined = load_from_disk(staging)
    meta["content_hash"] = content_hash(joined)
    meta["bytes_per_example"] = bytes_per_example(joined)
    _write_metadata(joined, meta)
    joined.info.write_to_directory(staging)  # dataset_info.json now carries the metadata
    del joined
    shutil.rmtree(path, ignore_errors=True)
    os.replace(staging, path)


def _checked_arguments(
    top_k: int | None, temperature: float | None, on_corrupt: str, topk_dtype: str
) -> int | None:
    if on_corrupt not in ON_CORRUPT:
        raise ValueError(f"on_corrupt={on_corrupt!r} is not one of {list(ON_CORRUPT)}")
    if topk_dtype not in TOPK_DTYPES:
        raise ValueError(f"topk_dtype={topk_dtype!r} is not one of {list(TOPK_DTYPES)}")

    if top_k is not None:
        if int(top_k) < 1:
            raise ValueError(f"top_k={top_k} must be a positive number of classes to keep, or None for all")
        if temperature is None or temperature <= 0:
            raise ValueError(
                f"top_k={top_k} stores log_softmax(logits / temperature), which holds at one temperature only: "
                f"pass temperature=<the run's DistillationConfig.temperature> (got {temperature})"
            )
        top_k = int(top_k)
    return top_k


def _cache_metadata(
    teacher: nn.Module,
    tokenizer: Any,
    dataset: Any,
    top_k: int | None,
    temperature: float | None,
    topk_dtype: str,
) -> dict[str, Any]:
    """What identifies a cache: teacher weights, tokenizer, data, top-k and its temperature and storage."""
    meta: dict[str, Any] = {
        "format": CACHE_FORMAT,
        "teacher_fingerprint": teacher_fingerprint(teacher),
        "teacher_name": _model_name(teacher),
        "teacher_revision": getattr(getattr(teacher, "config", None), "_commit_hash", None),
        "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
        "dataset_fingerprint": getattr(dataset, "_fingerprint", None),
        "top_k": top_k,
        "temperature": float(temperature) if temperature is not None else None,
    }
    if top_k is not None:
        meta["topk_dtype"] = (
            topk_dtype  # in the key only for top-k caches, so full-logit keys stay as they were
        )
    return meta


def _reuse_or_rebuild(path: str, key: str, rank: int, world: int, on_corrupt: str) -> Any:
    """The cache at `path` when it is complete and its content hash holds; None when it is to be (re)built.
    Rank 0 checks it and tells the others, so that every process reuses, raises or rebuilds alike."""
    from datasets import load_from_disk

    verdict: list[Any] = [("build", None)]
    if rank == 0 and os.path.isdir(path):
        loaded, problem = _load_verified(path, key)
        verdict = [("reuse", None) if loaded is not None else ("bad", problem)]
        del loaded
    if world > 1:
        from accelerate.utils import broadcast_object_list

        broadcast_object_list(verdict, from_process=0)
    action, problem = verdict[0]
    if action == "reuse":
        logger.info("Reusing cached teacher outputs from %s (cache key %s).", path, key)
        return load_from_disk(path)
    if action == "bad" and on_corrupt == "raise":
        raise TeacherCacheError(
            f"the teacher cache at {path} is unusable: {problem}. Delete that folder, or call "
            "cache_teacher_outputs with on_corrupt='rebuild' to recompute it"
        )
    if action == "bad" and rank == 0:
        logger.warning("The teacher cache at %s is unusable: %s. Rebuilding it.", path, problem)
    return None


def _save_joined(part: Any, path: str, rank: int, world: int, meta: dict[str, Any]) -> Any:
    """Every process writes its part; rank 0 joins them (in rank order) at `path`; all read the result back."""
    from datasets import load_from_disk

    parts_dir = f"{path}.parts"
    mine = os.path.join(parts_dir, f"process-{rank:05d}-of-{world:05d}")
    _write_metadata(part, meta)
    part.save_to_disk(mine, num_shards=1)
    del part
    _barrier(world)
    if rank == 0:
        import shutil

        parts = [os.path.join(parts_dir, f"process-{r:05d}-of-{world:05d}") for r in range(world)]
        _join_shards(parts, path, meta)
        shutil.rmtree(parts_dir, ignore_errors=True)
        logger.info(
            "Saved teacher outputs to %s (cache key %s): %d shard(s), %.1f bytes per example.",
            path, meta["cache_key"], world, meta["bytes_per_example"],
        )  # fmt: skip
    _barrier(world)
    return load_from_disk(path)


def cache_teacher_outputs(
    teacher: nn.Module,
    dataset: Any,
    batch_size: int = 32,
    collator: Callable[[list[dict[str, Any]]], dict[str, Any]] | None = None,
    top_k: int | None = None,
    temperature: float | None = None,
    device: str | torch.device | None = None,
    cache_dir: str | os.PathLike | None = None,
    tokenizer: Any = None,
    desc: str = "Caching teacher outputs",
    topk_dtype: str = "float16",
    on_corrupt: str = "rebuild",
) -> Any:
    """Run `teacher` once over `dataset` and return the dataset with the teacher's outputs as columns.

    Args:
        teacher: a trained model with a sequence-classification, token-classification, QA, masked-LM or
            causal-LM head.
        dataset: a tokenized `datasets.Dataset` (input_ids, attention_mask, ...). Any teacher columns it already
            has are replaced.
        batch_size: examples per teacher forward.
        collator: builds a batch from a list of examples; default: `DataCollatorWithPadding(tokenizer)` when a
            tokenizer is given, else `transformers.default_data_collator` (equal-length examples).
        top_k: store only the top-k log-probabilities at `temperature` and their indices (masked / causal LM
            with large vocabularies); `temperature` is then required and must be the run's temperature. The
            mass outside the top k is not stored: it is 1 minus the top k's, and the KD term keeps it as one
            bucket.
        temperature: the softmax temperature of the top-k log-probabilities (recorded in the metadata).
        device: where the teacher runs; default the teacher's device if it is on an accelerator, else CUDA when
            available, else CPU (under torchrun / accelerate launch: this process's device). The teacher is put
            back where it was, in the mode it was in.
        cache_dir: if given, the result is saved there under a name derived from the cache key, and loaded from
            there, memory-mapped, by a later call with the same key. Required with several processes.
        tokenizer: the tokenizer that made the columns the teacher reads (part of the cache key; also the default
            collator's). When `dataset` carries the teacher's own tokenization (`teacher_input_ids`, from
            `hf_kd.prepare_dataset`), the teacher reads those columns: pass the teacher's tokenizer.
        desc: progress-bar label.
        topk_dtype: storage of the top-k log-probabilities: `float16` (default; half the bytes, about 3
            significant digits, which is below the noise of a KD target) or `float32`.
        on_corrupt: what to do when the cache in `cache_dir` cannot be read (for example a truncated Arrow
            file) or its teacher columns no longer match their content hash: `rebuild` (default; log a warning
            naming the path, recompute and overwrite it) or `raise` (`TeacherCacheError`, naming the path).

    Returns:
        The dataset with the teacher columns added and the cache metadata in `dataset.info.description`
        (`read_cache_metadata`: the key and its parts, `content_hash`, `bytes_per_example`). A `DatasetDict`
        gives a `DatasetDict`, each split cached (and keyed) on its own.

    Several processes (torchrun, accelerate launch): each process runs the teacher on its contiguous slice of
    the dataset and writes it as one Arrow file; rank 0 joins the files, in rank order, into one dataset at the
    same path and with the same cache key as a 1-process build, records the content hash, and every process
    then reads it back memory-mapped. Call it from every process.

    The collator and batch size are not part of the key: they change only padding, and a cache whose rows do not
    match the training batches' real tokens is refused by `TeacherCacheCollator`.
    """
    from datasets import Dataset, DatasetDict
    from transformers import DataCollatorWithPadding, default_data_collator

    if isinstance(dataset, DatasetDict):
        return DatasetDict(
            {
                split: cache_teacher_outputs(
                    teacher,
                    part,
                    batch_size,
                    collator,
                    top_k,
                    temperature,
                    device,
                    cache_dir,
                    tokenizer,
                    f"{desc} ({split})",
                    topk_dtype,
                    on_corrupt,
                )  # fmt: skip
                for split, part in dataset.items()
            }
        )
    if not isinstance(dataset, Dataset):
        raise TypeError(
            f"cache_teacher_outputs needs a map-style datasets.Dataset (or DatasetDict), got {type(dataset).__name__}: "
            "an IterableDataset is read once and has no fingerprint to key a cache on; materialise it with "
            "Dataset.from_generator first"
        )
    top_k = _checked_arguments(top_k, temperature, on_corrupt, topk_dtype)
    task = infer_task(teacher)
    meta = _cache_metadata(teacher, tokenizer, dataset, top_k, temperature, topk_dtype)
    key = _cache_key(meta)
    rank, world, device = _process_layout(device)
    if world > 1 and cache_dir is None:
        raise ValueError(
            f"cache_teacher_outputs runs in {world} processes, which write their shards to disk and read the joined "
            "cache back: pass cache_dir=<a folder every process can read>"
        )
    path = os.path.join(os.fspath(cache_dir), f"teacher-outputs-{key}") if cache_dir is not None else None

    if path is not None:
        reused = _reuse_or_rebuild(path, key, rank, world, on_corrupt)
        if reused is not None:
            return reused

    columns = list(dataset.column_names)
    if has_teacher_inputs(columns):  # the teacher's own tokenization (cross-tokenizer distillation)
        inputs_view = teacher_view(dataset)
    else:
        inputs_view = dataset.select_columns(_teacher_input_columns(teacher, columns))
    if collator is None:
        collator = DataCollatorWithPadding(tokenizer) if tokenizer is not None else default_data_collator
    device = device if device is not None else _default_device(teacher)
    base = dataset.remove_columns([c for c in TEACHER_COLUMNS if c in columns])
    n = len(dataset)
    if n < world:
        raise ValueError(
            f"the dataset has {n} examples for {world} processes, so some would write empty shards: build the "
            "cache in fewer processes (or in one)"
        )
    lo, hi = n * rank // world, n * (rank + 1) // world  # contiguous, so rank order is row order
    if world > 1:
        inputs_view, base = inputs_view.select(range(lo, hi)), base.select(range(lo, hi))
        desc = f"{desc} (process {rank}: rows {lo}-{hi})"
    stored, task, num_classes = _build_columns(
        teacher, inputs_view, collator, batch_size, device, top_k, temperature, task, desc
    )
    token_level = _is_token_level(task, stored)
    meta.update(cache_key=key, task=task, num_classes=num_classes, token_level=token_level)
    part = _with_columns(base, stored, token_level, topk_dtype, meta)

    if path is None:
        meta.update(content_hash=content_hash(part), bytes_per_example=bytes_per_example(part))
        _write_metadata(part, meta)
        logger.info("Teacher outputs: %.1f bytes per example.", meta["bytes_per_example"])
        return part

    return _save_joined(part, path, rank, world, meta)


# ---- checks against the student and the run -------------------------------------------------------------


def _student_classes(student: nn.Module, task: str) -> tuple[int | None, str]:
    config = getattr(getattr(student, "module", student), "config", None)
    if task in ("sequence", "token"):
        return getattr(config, "num_labels", None), "labels"
    if task in ("mlm", "causal"):
        return getattr(config, "vocab_size", None), "vocabulary entries"
    return None, ""


def _last_dim(value: Any) -> int | None:
    """Length of the innermost list of a cached value: C for (C,) and (L, C)."""
    while isinstance(value, (list, tuple)) and value and isinstance(value[0], (list, tuple)):
        value = value[0]
    if torch.is_tensor(value):
        return int(value.shape[-1]) if value.dim() else None
    return len(value) if isinstance(value, (list, tuple)) else None


def check_cache_fits(dataset: Any, student: nn.Module, temperature: float, temperature_schedule: str) -> None:
    """Raise `DistillationConfigError` when cached teacher outputs cannot train this student in this run."""
    columns = getattr(dataset, "column_names", None)
    if not columns or not any(c in columns for c in TEACHER_COLUMNS):
        return
    meta = read_cache_metadata(dataset) or {}
    task = infer_task(student)
    cached_task = meta.get("task")
    if cached_task and task != "generic" and cached_task != task:
        raise DistillationConfigError(
            f"the cached teacher outputs come from a {cached_task!r} head but the student has a {task!r} head: "
            "cache the outputs of a teacher with the student's head type"
        )
    topk = TEACHER_TOPK_LOG_PROBS in columns
    student_n, what = _student_classes(student, task)
    if student_n is not None:
        cached_n = meta.get("num_classes")
        if cached_n is None and TEACHER_LOGITS in columns and len(dataset) > 0:
            cached_n = _last_dim(dataset[0][TEACHER_LOGITS])
        if cached_n is not None and int(cached_n) != int(student_n):
            raise DistillationConfigError(
                f"the cached teacher logits have {cached_n} classes but the student has {student_n} {what}: "
                "the KD term compares them class by class, so build the student with the teacher's label set "
                "(num_labels/id2label) or vocabulary, or recompute the cache with a matching teacher"
            )
        if topk and cached_n is None and len(dataset) > 0:
            largest = torch.as_tensor(dataset[0][TEACHER_TOPK_INDICES]).max().item()
            if largest >= student_n:
                raise DistillationConfigError(
                    f"the cached top-k indices reach class {largest} but the student has only {student_n} "
                    f"{what}: recompute the cache with a teacher that shares the student's vocabulary"
                )
    if not topk:
        return  # full logits are softened at whatever temperature the run uses
    if temperature_schedule != "constant":
        raise DistillationConfigError(
            f"the cache holds top-k log-probabilities made at temperature {meta.get('temperature')}, but "
            f"temperature_schedule={temperature_schedule!r} changes the temperature during training: top-k "
            "log-probabilities hold at one temperature only, so cache full logits (top_k=None) or use "
            "temperature_schedule='constant'"
        )
    cached_t = meta.get("temperature")
    if cached_t is None:
        logger.warning(
            "The top-k teacher cache records no temperature; it must have been made at the run's temperature %g.",
            temperature,
        )
    elif not math.isclose(float(cached_t), float(temperature), rel_tol=1e-9, abs_tol=1e-12):
        raise DistillationConfigError(
            f"the cached top-k log-probabilities were made at temperature {cached_t} but this run uses "
            f"temperature={temperature}: recompute the cache with cache_teacher_outputs(..., top_k=..., "
            f"temperature={temperature}) or set temperature={cached_t}"
        )


# ---- collation -----------------------------------------------------------------------------------------


def _as_tensor(value: Any, dtype: torch.dtype) -> torch.Tensor:
    if torch.is_tensor(value):
        return value.to(dtype)
    if isinstance(value, (list, tuple)) and value and torch.is_tensor(value[0]):
        return torch.stack([v.to(dtype) for v in value])
    return torch.as_tensor(value, dtype=dtype)


class TeacherCacheCollator:
    """Wrap a collator so that batches carry the cached teacher outputs as tensors.

    The teacher columns are taken out of each example, the rest goes through `inner` (default
    `transformers.default_data_collator`; `DataCollatorWithPadding` and the token-classification collator work
    too), and the cached values are stacked: (B, C) for sequence-level heads, and for token-level heads
    (B, L, C) aligned with the padded batch -- each example's stored rows go to the positions where its
    `attention_mask` is 1 (left or right padding alike), zeros elsewhere.
    """

    def __init__(self, inner: Callable[[list[dict[str, Any]]], Any] | None = None) -> None:
        from transformers import default_data_collator

        self.inner = inner if inner is not None else default_data_collator

    def __call__(self, features: list[dict[str, Any]]) -> Any:
        features = [dict(f) for f in features]
        names = [c for c in TEACHER_COLUMNS if c in features[0]]
        cached = {name: [f.pop(name) for f in features] for name in names}
        batch = self.inner(features)
        for name, values in cached.items():
            dtype = torch.long if name == TEACHER_TOPK_INDICES else torch.float32
            tensors = [_as_tensor(v, dtype) for v in values]
            token_aligned = name in _TOKEN_ALIGNED_1D or tensors[0].dim() == 2
            batch[name] = (
                self._align(name, tensors, batch) if token_aligned else torch.stack(tensors)
            )  # (B, C)
        return batch

    @staticmethod
    def _align(name: str, tensors: list[torch.Tensor], batch: Any) -> torch.Tensor:
        """Scatter per-example (L_i, ...) rows into a zero (B, L, ...) tensor at the real-token positions."""
        mask = batch.get("attention_mask")
        ids = batch.get("input_ids")
        reference = ids if ids is not None else mask
        if reference is None:
            raise ValueError(
                f"cannot align the token-level column {name!r}: the batch has neither input_ids nor attention_mask"
            )
        length = reference.shape[1]
        out = tensors[0].new_zeros((len(tensors), length, *tensors[0].shape[1:]))  # (B, L, ...)
        for b, rows in enumerate(tensors):
            positions = (
                mask[b].bool().nonzero().squeeze(-1)
                if mask is not None
                else torch.arange(min(len(rows), length))
            )
            if len(positions) != len(rows):
                raise ValueError(
                    f"example {b} of the batch has {len(positions)} real tokens but {len(rows)} cached rows in "
                    f"{name!r}: the cache was made from differently tokenized or truncated data; recompute it "
                    "with cache_teacher_outputs on the dataset you train on"
                )
            out[b, positions] = rows
        return out
