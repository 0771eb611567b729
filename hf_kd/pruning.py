"""Structured pruning of attention heads, to compose with distillation.

Choose heads by weight magnitude or by importance (Michel et al. 2019, "Are Sixteen Heads Really Better than
One?"), remove them from the weights, then distil the pruned model from the unpruned one to recover accuracy:

    pruned = copy.deepcopy(student)
    prune_heads(pruned, 4)                                          # the 4 heads of lowest weight magnitude
    DistillationTrainer(model=pruned, teacher_model=student, args=..., train_dataset=...).train()
    pruned.save_pretrained("pruned")                                # config.pruned_heads records what is gone
    reloaded = load_pruned_model("pruned")                          # rebuilds the pruned shapes

Why our own slicing: transformers 5.x removed `PreTrainedModel.prune_heads` and the `head_mask` argument
(`from_pretrained` no longer re-applies `config.pruned_heads` either). We slice the BERT-family attention
(`attention.self.{query,key,value}` rows and `attention.output.dense` columns) ourselves; the attention
forward reshapes with `view(..., -1, head_dim)`, so fewer heads need no other change. This covers BERT,
RoBERTa, ELECTRA, XLM-R, CamemBERT and MiniLM (a BERT), the families hf-kd distils by default.

Head numbers are always the *original* ones (0 .. num_attention_heads - 1), also after earlier pruning,
as `config.pruned_heads` ({layer: [heads]}) records them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

PRUNED_HEADS_ATTR = "pruned_heads"
METHODS = ("magnitude", "importance")


# ---- where the heads are ----------------------------------------------------------------------------------


def _base_model(model: nn.Module) -> nn.Module:
    if hasattr(model, "get_base_model"):  # peft
        model = model.get_base_model()
    return getattr(model, "base_model", model)


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """The self-attention block (`.self` with query/key/value, `.output.dense`) of each layer, in order."""
    base = _base_model(model)
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    blocks = [getattr(layer, "attention", None) for layer in layers] if layers is not None else []
    ok = blocks and all(
        b is not None
        and all(
            isinstance(getattr(getattr(b, "self", None), n, None), nn.Linear)
            for n in ("query", "key", "value")
        )
        and isinstance(getattr(getattr(b, "output", None), "dense", None), nn.Linear)
        for b in blocks
    )
    if not ok:
        raise ValueError(
            f"prune_heads supports BERT-family encoders (encoder.layer[i].attention.self.query/key/value and "
            f"attention.output.dense: BERT, RoBERTa, ELECTRA, XLM-R, MiniLM), but {type(model).__name__} has no "
            "such attention: distil into a BERT-family student (hf_kd.make_student), or prune it with its own tools"
        )
    return blocks


def pruned_heads_of(model: nn.Module) -> dict[int, list[int]]:
    """`config.pruned_heads` with integer keys (JSON gives strings), sorted lists."""
    raw = getattr(model.config, PRUNED_HEADS_ATTR, None) or {}
    return {int(k): sorted(int(h) for h in v) for k, v in raw.items() if v}


def _kept_heads(model: nn.Module, layer: int) -> list[int]:
    """Original numbers of the heads still in `layer`, in the order their slices sit in the weights."""
    gone = set(pruned_heads_of(model).get(layer, []))
    return [h for h in range(model.config.num_attention_heads) if h not in gone]


def _head_dim(block: nn.Module) -> int:
    return int(block.self.attention_head_size)


# ---- scores -----------------------------------------------------------------------------------------------


def head_magnitude_scores(model: nn.Module) -> torch.Tensor:
    """(num_layers, num_attention_heads): the L2 norm of each head's slices of the query, key and value
    weights (rows) and of the output projection (columns). Heads already pruned score NaN."""
    blocks = attention_modules(model)
    scores = torch.full((len(blocks), model.config.num_attention_heads), float("nan"))
    with torch.no_grad():
        for layer, block in enumerate(blocks):
            d = _head_dim(block)
            for position, head in enumerate(_kept_heads(model, layer)):
                rows = slice(position * d, (position + 1) * d)
                squares = sum(
                    getattr(block.self, n).weight[rows].float().pow(2).sum()
                    for n in ("query", "key", "value")
                )
                squares = squares + block.output.dense.weight[:, rows].float().pow(2).sum()
                scores[layer, head] = squares.sqrt().cpu()
    return scores


def mask_gradient_scores(
    model: nn.Module,
    dataloader: Iterable[dict[str, Any]],
    modules: list[nn.Module],
    group_sizes: list[int],
) -> list[torch.Tensor]:
    """Importance of groups of input features: for each module in `modules`, the mean over batches of
    |dL/d m_g|, where the mask m_g (1 = the unchanged model) multiplies group g of the module's input, its last
    dimension split into consecutive groups of `group_sizes[i]` features. Returns one (groups,) tensor per module.

    With the attention output projection and groups of head_dim this is Michel et al.'s head importance; with
    the FFN's down projection and groups of 1 it is the first-order (Taylor) importance of each FFN neuron,
    |sum over tokens of activation x gradient|. The batches must carry labels so that `model(**batch).loss`
    exists; the model runs in eval mode (no dropout) and its parameters' `.grad` stay untouched.
    """
    device = next(model.parameters()).device
    masks = [
        torch.ones(m.in_features // g, device=device, requires_grad=True)
        for m, g in zip(modules, group_sizes)
    ]

    def masker(mask: torch.Tensor, group: int):
        def hook(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
            features = args[0]  # (B, L, groups * group), the groups side by side
            shape = features.shape
            features = (features.view(*shape[:-1], -1, group) * mask[:, None].to(features.dtype)).view(shape)
            return (features, *args[1:])

        return hook

    handles = [m.register_forward_pre_hook(masker(k, g)) for m, k, g in zip(modules, masks, group_sizes)]
    was_training = model.training
    model.eval()  # no dropout: the gradient is that of the deterministic model
    totals = [torch.zeros_like(m) for m in masks]
    batches = 0
    try:
        for batch in dataloader:
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
            loss = model(**batch).loss
            if loss is None:
                raise ValueError(
                    "importance scores need the loss: the batches from dataloader carry no labels; "
                    "add a labels column, or use the magnitude rule"
                )
            grads = torch.autograd.grad(loss, masks)  # only d loss / d mask: parameter .grad stays untouched
            totals = [t + g.detach().abs() for t, g in zip(totals, grads)]
            batches += 1
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if batches == 0:
        raise ValueError("dataloader gave no batches: importance scores need at least one labelled batch")
    return [t.cpu() / batches for t in totals]


def head_importance_scores(
    model: nn.Module, dataloader: Iterable[dict[str, Any]], normalize: bool = True
) -> torch.Tensor:
    """(num_layers, num_attention_heads): Michel et al.'s importance, the mean over batches of
    |dL/d mask_h|, where mask_h multiplies head h's context vector (mask = 1 is the unchanged model).

    The batches must carry labels so that `model(**batch).loss` exists. With `normalize`, each layer's scores
    are divided by their L2 norm, as Michel et al. do so that layers compare. Heads already pruned score NaN.
    """
    blocks = attention_modules(model)
    totals = mask_gradient_scores(
        model, dataloader, [b.output.dense for b in blocks], [_head_dim(b) for b in blocks]
    )
    scores = torch.full((len(blocks), model.config.num_attention_heads), float("nan"))
    for layer, layer_scores in enumerate(totals):
        if normalize:
            layer_scores = layer_scores / layer_scores.norm().clamp_min(1e-20)
        scores[layer, _kept_heads(model, layer)] = layer_scores
    return scores


def select_heads(scores: torch.Tensor, n: int) -> dict[int, list[int]]:
    """The `n` heads of lowest score over all layers (NaN = already pruned), keeping one head per layer."""
    alive = (~scores.isnan()).sum(1)  # (num_layers,)
    prunable = int((alive - 1).clamp_min(0).sum())
    if not 0 < n <= prunable:
        raise ValueError(
            f"cannot prune {n} heads: {prunable} can go while every layer keeps one head; ask for 1 to {prunable}"
        )
    order = sorted(
        ((float(s), layer, head) for (layer, head), s in _enumerate(scores) if s == s),
        key=lambda x: x[0],
    )
    chosen: dict[int, list[int]] = {}
    for _, layer, head in order:
        if len(chosen.get(layer, [])) < alive[layer] - 1:
            chosen.setdefault(layer, []).append(head)
            n -= 1
            if n == 0:
                break
    return {layer: sorted(heads) for layer, heads in sorted(chosen.items())}


def _enumerate(scores: torch.Tensor):
    for layer in range(scores.shape[0]):
        for head in range(scores.shape[1]):
            yield (layer, head), scores[layer, head].item()


# ---- pruning ----------------------------------------------------------------------------------------------


def _sliced_linear(layer: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    """A new Linear keeping `index` along `dim` (0: output rows, 1: input columns); dtype and device kept."""
    weight = layer.weight.detach().index_select(dim, index.to(layer.weight.device))
    out_features, in_features = weight.shape
    new = nn.Linear(
        in_features, out_features, bias=layer.bias is not None, device=weight.device, dtype=weight.dtype
    )
    with torch.no_grad():
        new.weight.copy_(weight)
        if layer.bias is not None:
            bias = layer.bias.detach()
            new.bias.copy_(bias.index_select(0, index.to(bias.device)) if dim == 0 else bias)
    new.weight.requires_grad_(layer.weight.requires_grad)
    if layer.bias is not None:
        new.bias.requires_grad_(layer.bias.requires_grad)
    return new


def _apply_pruning(model: nn.Module, heads: dict[int, list[int]]) -> None:
    blocks = attention_modules(model)
    record = pruned_heads_of(model)
    for layer, layer_heads in sorted(heads.items()):
        block = blocks[layer]
        d = _head_dim(block)
        kept = _kept_heads(model, layer)
        keep_positions = [i for i, h in enumerate(kept) if h not in layer_heads]
        index = torch.cat([torch.arange(i * d, (i + 1) * d) for i in keep_positions])  # (kept heads * d,)
        for name in ("query", "key", "value"):
            setattr(block.self, name, _sliced_linear(getattr(block.self, name), index, 0))  # (kept*d, H)
        block.output.dense = _sliced_linear(block.output.dense, index, 1)  # (H, kept*d)
        block.self.num_attention_heads = len(keep_positions)
        block.self.all_head_size = len(keep_positions) * d
        record[layer] = sorted(set(record.get(layer, [])) | set(layer_heads))
        setattr(model.config, PRUNED_HEADS_ATTR, {k: v for k, v in sorted(record.items())})


def prune_heads(
    model: nn.Module,
    heads: dict[int, list[int]] | int,
    method: str = "magnitude",
    dataloader: Iterable[dict[str, Any]] | None = None,
) -> dict[int, list[int]]:
    """Remove attention heads from `model` in place; returns the heads removed, {layer: [heads]}.

    Args:
        model: a BERT-family model (BERT, RoBERTa, ELECTRA, XLM-R, MiniLM), any head on top.
        heads: explicit {layer: [head, ...]} (original head numbers, layers from 0), or a number n: the n heads
            of lowest score over all layers, each layer keeping at least one head.
        method: how a number of heads is chosen: `magnitude` (L2 norm of each head's query/key/value/output
            weight slices) or `importance` (Michel et al. 2019: mean |d loss / d head mask| over `dataloader`).
        dataloader: labelled batches (dicts of tensors) for `importance`.

    Each removed head shrinks query, key and value by head_dim output rows and the attention output
    projection by head_dim input columns: 4 * head_dim * hidden + 3 * head_dim parameters per head.
    `config.pruned_heads` records every removed head; `save_pretrained` keeps it and `load_pruned_model`
    rebuilds the shapes. Follow with distillation from the unpruned model to recover accuracy.
    """
    blocks = attention_modules(model)
    n_heads = model.config.num_attention_heads
    if isinstance(heads, bool) or not isinstance(heads, (int, dict)):
        raise TypeError(f"heads={heads!r} must be a number of heads or a dict {{layer: [heads]}}")
    if isinstance(heads, int):
        if method == "magnitude":
            scores = head_magnitude_scores(model)
        elif method == "importance":
            if dataloader is None:
                raise ValueError(
                    "method='importance' needs a dataloader of labelled batches to take gradients over; "
                    "pass dataloader=..., or use method='magnitude'"
                )
            scores = head_importance_scores(model, dataloader)
        else:
            raise ValueError(f"method={method!r} is not one of {list(METHODS)}")
        heads = select_heads(scores, heads)
    already = pruned_heads_of(model)
    todo: dict[int, list[int]] = {}
    for layer, layer_heads in heads.items():
        layer = int(layer)
        if not 0 <= layer < len(blocks):
            raise ValueError(
                f"layer {layer} does not exist: {type(model).__name__} has layers 0 to {len(blocks) - 1}"
            )
        bad = [h for h in layer_heads if not 0 <= int(h) < n_heads]
        if bad:
            raise ValueError(
                f"heads {bad} in layer {layer} do not exist: heads are numbered 0 to {n_heads - 1}"
            )
        new = sorted({int(h) for h in layer_heads} - set(already.get(layer, [])))
        if len(set(already.get(layer, [])) | set(new)) >= n_heads:
            raise ValueError(
                f"pruning heads {sorted(layer_heads)} would leave layer {layer} with no head: keep at least one, "
                "or drop the whole layer by building a shallower student (hf_kd.make_student)"
            )
        if new:
            todo[layer] = new
    _apply_pruning(model, todo)
    return todo


# ---- reloading ----------------------------------------------------------------------------------------------


def load_pruned_model(path: str | os.PathLike, model_class: Any = None, **config_kwargs: Any) -> nn.Module:
    """Load a model saved with `save_pretrained` after `prune_heads`: rebuild it from its config, prune the
    heads `config.pruned_heads` records, then load the weights. A model without pruned heads loads with
    plain `from_pretrained`.

    `model_class` defaults to the class in `config.architectures` (e.g. `BertForSequenceClassification`).
    """
    import transformers
    from safetensors.torch import load_file
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path, **config_kwargs)
    if model_class is None:
        names = getattr(config, "architectures", None) or []
        model_class = getattr(transformers, names[0], None) if names else None
        if model_class is None:
            raise ValueError(
                f"{path}: config.architectures={names!r} names no transformers class: pass model_class=..."
            )
    record = {int(k): v for k, v in (getattr(config, PRUNED_HEADS_ATTR, None) or {}).items() if v}
    if not record:
        return model_class.from_pretrained(path, config=config)
    setattr(config, PRUNED_HEADS_ATTR, {})
    model = model_class(config)
    _apply_pruning(model, record)
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        from transformers.trainer_utils import load_sharded_checkpoint

        load_sharded_checkpoint(model, path, strict=True)
    else:
        weights = os.path.join(path, "model.safetensors")
        if not os.path.isfile(weights):
            raise FileNotFoundError(
                f"{path} holds no model.safetensors: save the pruned model with save_pretrained"
            )
        state = load_file(weights)
        missing, unexpected = model.load_state_dict(state, strict=False)
        # Tied weights (an LM head sharing the word embeddings) are saved once; anything else missing is an error.
        tied = set(getattr(model, "_tied_weights_keys", None) or [])
        missing = [k for k in missing if k not in tied]
        if missing or unexpected:
            raise ValueError(
                f"{path}: weights do not fit the pruned model (missing {missing[:5]}, unexpected {unexpected[:5]}); "
                f"config.pruned_heads={json.dumps({str(k): v for k, v in record.items()})} may not match the weights"
            )
    model.eval()
    return model
