"""Compression measured: parameters, size on disk, latency and throughput; int8 quantization; head pruning.

    teacher_m = measure_model(teacher, "teacher")              # CPU, or cuda:0 when there is a GPU
    student_m = measure_model(student, "student")
    int8 = quantize_dynamic_int8(student)                      # nn.Linear weights to int8, on CPU
    int8_m = measure_model(int8, "student int8")
    print(format_comparison_table([teacher_m, student_m, int8_m], scores={"teacher": 0.97, ...}))
    compare_models(teacher_m, student_m, 0.97, 0.95)           # ratios, speed-ups, share of score kept

What is measured, and how:
- Parameters: every weight once (shared, tied weights once), int8 weights counted by their element count.
  Non-embedding parameters leave out the input embedding tables (word, position, token type: every
  `nn.Embedding`), the convention of scaling-law papers, since those tables cost memory but no compute.
- Size: the bytes of the weight files as saved: `save_pretrained` safetensors for float models, the saved
  int8 state dict for quantized ones (`save_quantized`).
- Latency: synthetic `input_ids` (valid vocabulary ids) and an all-ones `attention_mask` of the given batch
  size and length, under `torch.inference_mode()`; `warmup` untimed runs, then `runs` timed ones with
  `time.perf_counter` (after `torch.cuda.synchronize()` on a GPU); the median is reported, throughput is
  batch size / median. The thread count is recorded: CPU numbers depend on it. `measure_models` times several
  models in interleaved rounds (each round runs each model once), so their ratios come from one run.

int8 format on disk (`save_quantized` / `load_quantized`), since dynamic-quantized modules hold packed
int8 weights that `save_pretrained` cannot write:

    config.json              the float architecture, as `save_pretrained` writes it (pruned heads included)
    hf_kd_int8.json          {"format": "hf-kd-dynamic-int8", "version": 1, "model_class": ..., "dtype": "qint8",
                              "modules": ["torch.nn.Linear"], "embeddings": false, "torch_version": ...}
    int8_state_dict.pt       torch.save(quantized_model.state_dict()), loadable with weights_only=True
    tokenizer files          when a tokenizer is given

`load_quantized` rebuilds the float architecture from config.json (re-applying pruned heads), applies the
same `quantize_dynamic` (the word-embedding table too when "embeddings" is true), then loads the int8 state
dict: outputs are bit-identical to the saved model's.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from .pruning import PRUNED_HEADS_ATTR, _apply_pruning, load_pruned_model, prune_heads

__all__ = [
    "ModelMeasurement",
    "count_parameters",
    "model_size_bytes",
    "measure_model",
    "measure_models",
    "median_latency",
    "synthetic_inputs",
    "time_interleaved",
    "time_runners",
    "compare_models",
    "format_comparison_table",
    "quantize_dynamic_int8",
    "save_quantized",
    "load_quantized",
    "is_quantized",
    "load_model",
    "evaluate_accuracy",
    "prune_heads",
    "add_report_arguments",
    "run_report_command",
]

INT8_META = "hf_kd_int8.json"
INT8_WEIGHTS = "int8_state_dict.pt"
INT8_FORMAT = "hf-kd-dynamic-int8"


@dataclass
class ModelMeasurement:
    """What `measure_model` found. Latency in milliseconds per forward pass (median), throughput in
    examples per second, both keyed by batch size."""

    name: str
    num_parameters: int
    num_non_embedding_parameters: int
    size_bytes: int
    seq_len: int
    device: str
    latency_ms: dict[int, float] = field(default_factory=dict)
    throughput: dict[int, float] = field(default_factory=dict)
    threads: int = 1

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        # JSON object keys are strings; keep batch sizes readable as such.
        d["latency_ms"] = {str(k): v for k, v in self.latency_ms.items()}
        d["throughput"] = {str(k): v for k, v in self.throughput.items()}
        return d


# ---- parameters and size -----------------------------------------------------------------------------------


def _quantized_linear_types() -> tuple[type, ...]:
    from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

    return (DynamicQuantizedLinear,)


def _quantized_embedding_types() -> tuple[type, ...]:
    from torch.ao.nn.quantized import Embedding as QuantizedEmbedding

    return (QuantizedEmbedding,)


def is_quantized(model: nn.Module) -> bool:
    """True when the model holds dynamic-quantized (int8) linear layers."""
    types = _quantized_linear_types() + _quantized_embedding_types()
    return any(isinstance(m, types) for m in model.modules())


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(total, non-embedding) parameter counts. Shared weights count once; int8 linear weights count by
    their number of elements, as the float weights they replace."""
    seen: set[int] = set()
    total = embedding = 0
    quantized, quantized_embedding = _quantized_linear_types(), _quantized_embedding_types()
    for module in model.modules():
        if isinstance(module, quantized):
            weight, bias = module.weight(), module.bias()
            total += weight.numel() + (bias.numel() if bias is not None else 0)
            continue
        if isinstance(module, quantized_embedding):
            total += module.weight().numel()
            embedding += module.weight().numel()
            continue
        for p in module.parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            total += p.numel()
            if isinstance(module, nn.Embedding):
                embedding += p.numel()
    return total, total - embedding


def _weight_files(directory: str) -> list[str]:
    names = [n for n in os.listdir(directory) if n.endswith(".safetensors") or n == INT8_WEIGHTS]
    return [os.path.join(directory, n) for n in names]


def model_size_bytes(model: nn.Module) -> int:
    """Bytes of the weight files as saved: safetensors from `save_pretrained`, or the int8 state dict."""
    if hasattr(model, "peft_config") and hasattr(model, "merge_and_unload"):
        raise ValueError(
            f"{type(model).__name__} is a PEFT model: save_pretrained would write only the adapter. Measure the "
            "deployed model instead: model.merge_and_unload() (or DistillationTrainer.save_merged_student)"
        )
    with tempfile.TemporaryDirectory() as tmp:
        if is_quantized(model):
            save_quantized(model, tmp)
        elif hasattr(model, "save_pretrained"):
            model.save_pretrained(tmp)
        else:
            from safetensors.torch import save_model

            save_model(model, os.path.join(tmp, "model.safetensors"))
        files = _weight_files(tmp)
        if not files:
            raise RuntimeError(f"saving {type(model).__name__} wrote no weight file (saw {os.listdir(tmp)})")
        return sum(os.path.getsize(f) for f in files)


# ---- latency ---------------------------------------------------------------------------------------------


def _resolve_device(model: nn.Module, device: str | None) -> str:
    quantized = is_quantized(model)
    if device is None:
        device = "cuda:0" if torch.cuda.is_available() and not quantized else "cpu"
    device = str(torch.device(device))
    if device == "cuda":
        device = "cuda:0"
    if quantized and device != "cpu":
        raise ValueError(
            f"device={device!r}: PyTorch dynamic int8 kernels run on CPU only; measure the int8 model with "
            "device='cpu'"
        )
    return device


def synthetic_inputs(
    config: Any,
    batch_size: int,
    seq_len: int,
    names: Sequence[str] = ("input_ids", "attention_mask"),
    device: str = "cpu",
) -> dict[str, torch.Tensor]:
    """A timing batch for the inputs `names`: seeded random ids from the model's vocabulary, an all-ones
    attention mask and zero token types, each of shape (batch_size, seq_len)."""
    max_positions = getattr(config, "max_position_embeddings", None)
    if max_positions is not None and seq_len > max_positions:
        raise ValueError(
            f"seq_len={seq_len} exceeds the model's max_position_embeddings={max_positions}: pass seq_len <= "
            f"{max_positions}"
        )
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, config.vocab_size, (batch_size, seq_len), generator=generator)  # (B, L)
    values = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "token_type_ids": torch.zeros_like(ids),
    }
    unknown = [n for n in names if n not in values]
    if unknown:
        raise ValueError(f"no synthetic values for the inputs {unknown}; known: {list(values)}")
    return {n: values[n].to(device) for n in names}


def time_interleaved(
    calls: Mapping[str, Callable[[], Any]],
    warmup: int = 2,
    runs: int = 10,
    sync: Callable[[], Any] | None = None,
) -> dict[str, list[float]]:
    """Milliseconds of each call in each of `runs` timed rounds, after `warmup` untimed ones.

    Every round runs every call once, in order, so a change of machine load during the measurement reaches
    every call alike and the ratios between them stay fair (timing one model's runs, then the next's, lets a
    busy moment land on one of them only). `sync` (for example `torch.cuda.synchronize`) runs before the clock
    starts and before it stops, for calls that return before their work is done."""
    if runs < 1 or warmup < 0:
        raise ValueError(f"runs={runs} must be >= 1 and warmup={warmup} >= 0")
    times: dict[str, list[float]] = {name: [] for name in calls}
    with torch.inference_mode():
        for round_ in range(warmup + runs):
            for name, call in calls.items():
                if sync is not None:
                    sync()
                start = time.perf_counter()
                call()
                if sync is not None:
                    sync()
                if round_ >= warmup:
                    times[name].append((time.perf_counter() - start) * 1000.0)
    return times


def time_runners(
    runners: Mapping[str, Callable[..., Any]],
    config: Any,
    batch_size: int,
    seq_len: int,
    warmup: int = 2,
    runs: int = 10,
    input_names: Sequence[str] | Callable[[Any], Sequence[str]] = ("input_ids", "attention_mask"),
) -> dict[str, list[float]]:
    """Milliseconds of each `runner(**batch)` in each timed round, on one `synthetic_inputs` batch of
    `batch_size` x `seq_len` from `config`'s vocabulary, every runner timed in the same interleaved rounds
    (`time_interleaved`).

    `input_names` lists the inputs every runner takes, or maps a runner to its own list (an ONNX session and a
    PyTorch model can take different ones)."""
    calls = {}
    for name, run in runners.items():
        names = input_names(run) if callable(input_names) else input_names
        calls[name] = functools.partial(run, **synthetic_inputs(config, batch_size, seq_len, names))
    return time_interleaved(calls, warmup, runs)


def median_latency(
    runners: Mapping[str, Callable[..., Any]],
    config: Any,
    batch_size: int,
    seq_len: int,
    warmup: int = 2,
    runs: int = 10,
    input_names: Sequence[str] | Callable[[Any], Sequence[str]] = ("input_ids", "attention_mask"),
) -> dict[str, float]:
    """The median of each runner's `time_runners` rounds, in milliseconds."""
    times = time_runners(runners, config, batch_size, seq_len, warmup, runs, input_names)
    return {name: statistics.median(t) for name, t in times.items()}


def measure_models(
    models: Mapping[str, nn.Module],
    batch_sizes: Sequence[int] = (1, 32),
    seq_len: int = 128,
    warmup: int = 2,
    runs: int = 10,
    device: str | None = None,
) -> dict[str, ModelMeasurement]:
    """`measure_model` for several models at once, their latencies timed in interleaved rounds
    (`time_interleaved`), so that their ratios come from one run. Keyed by the names given."""
    if runs < 1 or warmup < 0:
        raise ValueError(f"runs={runs} must be >= 1 and warmup={warmup} >= 0")
    devices = {name: _resolve_device(model, device) for name, model in models.items()}
    states = {}
    for name, model in models.items():
        first = next(model.parameters(), None)
        states[name] = (first.device if first is not None else torch.device("cpu"), model.training)
    cuda = sorted({d for d in devices.values() if d.startswith("cuda")})
    latency: dict[str, dict[int, float]] = {name: {} for name in models}
    try:
        for name, model in models.items():
            model.eval()
            model.to(devices[name])
        for batch_size in batch_sizes:
            calls = {}
            for name, model in models.items():
                batch = synthetic_inputs(model.config, int(batch_size), seq_len, device=devices[name])
                calls[name] = functools.partial(model, **batch)
            sync = (lambda: [torch.cuda.synchronize(d) for d in cuda]) if cuda else None
            for name, times in time_interleaved(calls, warmup, runs, sync).items():
                latency[name][int(batch_size)] = statistics.median(times)
    finally:
        for name, model in models.items():
            model.to(states[name][0])
            model.train(states[name][1])
    measured = {}
    for name, model in models.items():
        total, non_embedding = count_parameters(model)
        measured[name] = ModelMeasurement(
            name=name,
            num_parameters=total,
            num_non_embedding_parameters=non_embedding,
            size_bytes=model_size_bytes(model),
            seq_len=seq_len,
            device=devices[name],
            latency_ms=latency[name],
            throughput={b: b * 1000.0 / ms for b, ms in latency[name].items()},
            threads=torch.get_num_threads(),
        )
    return measured


def measure_model(
    model: nn.Module,
    name: str = "model",
    batch_sizes: Sequence[int] = (1, 32),
    seq_len: int = 128,
    warmup: int = 2,
    runs: int = 10,
    device: str | None = None,
) -> ModelMeasurement:
    """Parameters, size on disk, and median latency and throughput per batch size (see module docstring).

    `device` defaults to cuda:0 when a GPU is present (CPU for int8 models). The model is measured in eval
    mode and returned to its device and mode afterwards. To compare models, `measure_models` times them in
    one interleaved run.
    """
    return measure_models({name: model}, batch_sizes, seq_len, warmup, runs, device)[name]


# ---- comparison --------------------------------------------------------------------------------------------


def compare_models(
    teacher: ModelMeasurement,
    student: ModelMeasurement,
    teacher_score: float | None = None,
    student_score: float | None = None,
) -> dict[str, Any]:
    """Teacher-vs-student ratios: how many times fewer parameters and bytes, the speed-up per batch size
    (teacher latency / student latency), and the share of the teacher's score the student keeps."""
    result: dict[str, Any] = {
        "teacher": teacher.name,
        "student": student.name,
        "parameter_ratio": teacher.num_parameters / student.num_parameters,
        "non_embedding_parameter_ratio": teacher.num_non_embedding_parameters
        / max(student.num_non_embedding_parameters, 1),
        "parameters_removed_share": 1.0 - student.num_parameters / teacher.num_parameters,
        "size_ratio": teacher.size_bytes / student.size_bytes,
        "speedup": {
            b: teacher.latency_ms[b] / student.latency_ms[b]
            for b in teacher.latency_ms
            if b in student.latency_ms
        },
    }
    if teacher_score is not None and student_score is not None:
        result["teacher_score"] = teacher_score
        result["student_score"] = student_score
        result["score_kept"] = student_score / teacher_score if teacher_score else float("nan")
    return result


def _millions(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1e6:.2f}M"
    return f"{n / 1e3:.1f}K" if n >= 1_000 else str(n)


def format_comparison_table(
    measurements: list[ModelMeasurement], scores: dict[str, float] | None = None
) -> str:
    """A markdown table, one row per model; speed-ups and score kept are relative to the first row."""
    if not measurements:
        raise ValueError("format_comparison_table needs at least one ModelMeasurement")
    scores = scores or {}
    batch_sizes = sorted({b for m in measurements for b in m.latency_ms})
    ref = measurements[0]
    header = ["Model", "Params", "Non-emb. params", "Size (MB)"]
    header += [f"Latency b{b} (ms)" for b in batch_sizes]
    header += [f"Speed-up b{b}" for b in batch_sizes]
    has_scores = any(m.name in scores for m in measurements)
    if has_scores:
        header += ["Score", "Score kept"]
    rows = []
    for m in measurements:
        row = [
            m.name,
            _millions(m.num_parameters),
            _millions(m.num_non_embedding_parameters),
            f"{m.size_bytes / 1e6:.2f}",
        ]
        row += [f"{m.latency_ms[b]:.2f}" if b in m.latency_ms else "-" for b in batch_sizes]
        row += [
            f"{ref.latency_ms[b] / m.latency_ms[b]:.2f}x"
            if b in m.latency_ms and b in ref.latency_ms
            else "-"
            for b in batch_sizes
        ]
        if has_scores:
            score = scores.get(m.name)
            ref_score = scores.get(ref.name)
            row.append(f"{score:.4f}" if score is not None else "-")
            row.append(f"{score / ref_score:.1%}" if score is not None and ref_score else "-")
        rows.append(row)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    devices = sorted(
        {f"{m.device} ({m.threads} threads)" if m.device == "cpu" else m.device for m in measurements}
    )
    lines.append("")
    lines.append(f"Sequence length {ref.seq_len}; median of timed runs on {', '.join(devices)}.")
    return "\n".join(lines)


# ---- int8 ----------------------------------------------------------------------------------------------------


def _word_embedding_name(model: nn.Module) -> str:
    table = model.get_input_embeddings()
    return next(name for name, module in model.named_modules() if module is table)


def _quantize(model: nn.Module, embeddings: bool = False) -> nn.Module:
    """The one place PyTorch int8 is made (quantize, save and load all call it).

    Why `torch.ao.quantization` and not torchao: torchao 0.18's CPU dynamic int8
    (`quantize_(model, Int8DynamicActivationInt8WeightConfig())`) does run with torch 2.13 here, but measured
    on a 2-layer, hidden-384 BERT (batch 1, length 128, 2 CPU cores, 20 interleaved rounds) it took 201 ms
    against 117 ms for this path and 120 ms in float: slower than not quantizing. Its weights are tensor
    subclasses, so the int8 format on disk would change too, and once installed, transformers imports it on
    every start. For deployment int8, ONNX Runtime's `quantize_dynamic` (`hf_kd.export`) is the faster path.
    """
    from torch.ao.quantization import (
        default_dynamic_qconfig,
        float_qparams_weight_only_qconfig,
        quantize_dynamic,
    )

    spec: dict[Any, Any] = {nn.Linear: default_dynamic_qconfig}
    if embeddings:
        # Only the word table, by name: position and token-type lookups get non-contiguous index tensors,
        # which the int8 embedding kernel rejects; they are small anyway.
        spec[_word_embedding_name(model)] = float_qparams_weight_only_qconfig
    with warnings.catch_warnings():
        # torch.ao.quantization warns that it moves to torchao; it is the API in the installed torch.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        return quantize_dynamic(model, spec, dtype=torch.qint8, inplace=False)


def quantize_dynamic_int8(model: nn.Module, embeddings: bool = False) -> nn.Module:
    """An int8 copy of `model` for CPU inference: PyTorch dynamic quantization of every `nn.Linear` (weights
    stored as int8, activations quantized on the fly). LayerNorms stay float, and so do the embeddings unless
    `embeddings=True`, which also stores the word-embedding table as int8 with a float scale per row (weight
    only: a lookup needs no activation quantization). For a small student the word table is most of the
    file (MiniLM: 11.7M of 15.6M parameters in a 2-layer student), so this is where the size goes.
    The float model is left unchanged."""
    first = next(model.parameters(), None)
    if first is not None and first.device.type != "cpu":
        import copy

        model = copy.deepcopy(model).cpu()
    if first is not None and first.dtype != torch.float32:
        raise ValueError(
            f"dynamic int8 quantization starts from float32 weights, but the model is in {first.dtype}: "
            "call model.float() first"
        )
    quantized = _quantize(model, embeddings)
    quantized.eval()
    return quantized


def save_quantized(model: nn.Module, output_dir: str | os.PathLike, tokenizer: Any = None) -> None:
    """Save an int8 model from `quantize_dynamic_int8` (format in the module docstring)."""
    if not is_quantized(model):
        raise ValueError(
            f"{type(model).__name__} holds no int8 layers: quantize it with quantize_dynamic_int8 first, "
            "or save a float model with save_pretrained"
        )
    embeddings = any(isinstance(m, _quantized_embedding_types()) for m in model.modules())
    os.makedirs(output_dir, exist_ok=True)
    model.config.save_pretrained(output_dir)
    torch.save(model.state_dict(), os.path.join(output_dir, INT8_WEIGHTS))
    meta = {
        "format": INT8_FORMAT,
        "version": 1,
        "model_class": type(model).__name__,
        "dtype": "qint8",
        "modules": ["torch.nn.Linear"] + (["word_embeddings"] if embeddings else []),
        "embeddings": embeddings,
        "method": "torch.ao.quantization.quantize_dynamic",
        "torch_version": torch.__version__,
    }
    with open(os.path.join(output_dir, INT8_META), "w") as f:
        json.dump(meta, f, indent=2)
    if tokenizer is not None:
        tokenizer.save_pretrained(output_dir)


def load_quantized(output_dir: str | os.PathLike, model_class: Any = None) -> nn.Module:
    """Load a model saved with `save_quantized`: rebuild the float architecture from its config (pruned heads
    included), quantize it the same way, and load the int8 state dict."""
    import transformers
    from transformers import AutoConfig

    meta_path = os.path.join(output_dir, INT8_META)
    if not os.path.isfile(meta_path):
        raise FileNotFoundError(
            f"{output_dir} holds no {INT8_META}: it was not written by save_quantized; load float models with "
            "from_pretrained (or hf_kd.compression.load_model)"
        )
    with open(meta_path) as f:
        meta = json.load(f)
    if meta.get("format") != INT8_FORMAT:
        raise ValueError(f"{meta_path}: format {meta.get('format')!r} is not {INT8_FORMAT!r}")
    config = AutoConfig.from_pretrained(output_dir)
    if model_class is None:
        model_class = getattr(transformers, meta["model_class"], None)
        if model_class is None:
            raise ValueError(
                f"{meta_path}: model_class {meta['model_class']!r} is not in transformers: pass model_class"
            )
    record = {int(k): v for k, v in (getattr(config, PRUNED_HEADS_ATTR, None) or {}).items() if v}
    setattr(config, PRUNED_HEADS_ATTR, {})
    model = model_class(config)  # random float weights, replaced below
    if record:
        _apply_pruning(model, record)
    model.eval()
    quantized = _quantize(model, bool(meta.get("embeddings", False)))
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore", UserWarning
        )  # torch's own TypedStorage notice for packed int8 weights
        state = torch.load(os.path.join(output_dir, INT8_WEIGHTS), map_location="cpu", weights_only=True)
    quantized.load_state_dict(state)
    quantized.eval()
    return quantized


def load_model(path: str | os.PathLike, model_class: Any = None) -> nn.Module:
    """Load a float, head-pruned or int8 model directory written by hf-kd, in eval mode."""
    if os.path.isfile(os.path.join(path, INT8_META)):
        return load_quantized(path, model_class)
    model = load_pruned_model(path, model_class)
    model.eval()
    return model


# ---- accuracy ----------------------------------------------------------------------------------------------


def evaluate_accuracy(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    labels: Sequence[int],
    batch_size: int = 32,
    max_length: int = 128,
) -> float:
    """Share of `texts` whose argmax prediction equals `labels` (sequence classification)."""
    if len(texts) != len(labels) or not texts:
        raise ValueError(
            f"need as many labels as texts, and at least one: {len(texts)} texts, {len(labels)} labels"
        )
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    correct = 0
    try:
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                enc = tokenizer(
                    list(texts[start : start + batch_size]),
                    padding=True,
                    truncation=True,
                    max_length=max_length,
                    return_tensors="pt",
                )
                if "token_type_ids" not in _forward_names(model):
                    enc.pop("token_type_ids", None)  # e.g. DistilBERT takes none
                logits = model(**{k: v.to(device) for k, v in enc.items()}).logits  # (B, C)
                gold = torch.as_tensor(list(labels[start : start + batch_size]), device=device)
                correct += int((logits.argmax(-1) == gold).sum())
    finally:
        model.train(was_training)
    return correct / len(texts)


def _forward_names(model: nn.Module) -> set[str]:
    import inspect

    return set(inspect.signature(model.forward).parameters)


def read_labelled_texts(
    path: str,
    model: nn.Module,
    text_column: str = "text",
    label_column: str = "label",
    max_examples: int | None = None,
) -> tuple[list[str], list[int]]:
    """Texts and integer labels from a local csv or json(l) file; string labels map through
    `model.config.label2id`."""
    from datasets import load_dataset

    ext = os.path.splitext(path)[1].lower().lstrip(".")
    builder = {"csv": "csv", "tsv": "csv", "json": "json", "jsonl": "json"}.get(ext)
    if builder is None:
        raise ValueError(
            f"--data {path!r}: use a .csv, .tsv, .json or .jsonl file with text and label columns"
        )
    kwargs = {"delimiter": "\t"} if ext == "tsv" else {}
    data = load_dataset(builder, data_files=path, split="train", **kwargs)
    for column in (text_column, label_column):
        if column not in data.column_names:
            raise ValueError(
                f"{path} has no {column!r} column (columns: {data.column_names}): pass --text-column/--label-column"
            )
    if max_examples is not None:
        data = data.select(range(min(max_examples, len(data))))
    texts = [str(t) for t in data[text_column]]
    raw = data[label_column]
    if all(isinstance(v, int) for v in raw):
        return texts, [int(v) for v in raw]
    label2id = {str(k): int(v) for k, v in (getattr(model.config, "label2id", None) or {}).items()}
    unknown = sorted({str(v) for v in raw} - set(label2id))
    if unknown:
        raise ValueError(
            f"labels {unknown[:5]} in {path} are not in the model's label2id {label2id}: use integer labels, "
            "or labels named as in config.label2id"
        )
    return texts, [label2id[str(v)] for v in raw]


# ---- hf-kd report ------------------------------------------------------------------------------------------


def add_report_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of `hf-kd report TEACHER_DIR STUDENT_DIR [MORE_DIRS...] --data FILE`."""
    parser.add_argument(
        "teacher", help="teacher model directory (save_pretrained, pruned or int8 from hf-kd)"
    )
    parser.add_argument("student", nargs="+", help="student model directories to compare with the teacher")
    parser.add_argument(
        "--data", help="local csv/tsv/json/jsonl file with text and label columns for accuracy"
    )
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--label-column", default="label")
    parser.add_argument("--max-examples", type=int, default=None, help="score at most this many examples")
    parser.add_argument("--int8", action="store_true", help="also measure an int8 copy of each float student")
    parser.add_argument(
        "--int8-embeddings",
        action="store_true",
        help="with --int8, store the word-embedding table as int8 too",
    )
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--device", default=None, help="cpu or cuda:0 (default: cuda:0 when present)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for CPU timing")
    parser.add_argument("--json", dest="json_path", default=None, help="also write measurements here as JSON")
    return parser


def _tokenizer_for(path: str, fallback: str) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError):
        return AutoTokenizer.from_pretrained(fallback)


def run_report_command(args: argparse.Namespace) -> dict[str, Any]:
    """Measure the teacher and each student, print the comparison table; returns what it printed as data."""
    if args.threads:
        torch.set_num_threads(args.threads)
    entries: list[tuple[str, nn.Module, str]] = [("teacher", load_model(args.teacher), args.teacher)]
    for path in args.student:
        name = os.path.basename(os.path.normpath(path)) or path
        model = load_model(path)
        entries.append((name, model, path))
        if args.int8 and not is_quantized(model):
            quantized = quantize_dynamic_int8(model, embeddings=args.int8_embeddings)
            entries.append((f"{name} int8{'+emb' if args.int8_embeddings else ''}", quantized, path))
    measurements, scores = [], {}
    for name, model, path in entries:
        device = "cpu" if is_quantized(model) else args.device
        measurements.append(
            measure_model(model, name, args.batch_sizes, args.seq_len, args.warmup, args.runs, device)
        )
        if args.data:
            texts, labels = read_labelled_texts(
                args.data, model, args.text_column, args.label_column, args.max_examples
            )
            tokenizer = _tokenizer_for(path, args.teacher)
            scores[name] = evaluate_accuracy(model, tokenizer, texts, labels, max_length=args.seq_len)
    table = format_comparison_table(measurements, scores if args.data else None)
    print(table)
    comparisons = [
        compare_models(measurements[0], m, scores.get(measurements[0].name), scores.get(m.name))
        for m in measurements[1:]
    ]
    result = {
        "measurements": [m.to_dict() for m in measurements],
        "scores": scores,
        "comparisons": comparisons,
        "table": table,
    }
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(result, f, indent=2, default=str)
    return result
