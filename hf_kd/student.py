"""Students built from teachers: fewer layers, initialised from the teacher's own weights.

DistilBERT initialised its 6-layer student from every other layer of the 12-layer BERT (Sanh et al., 2019), and
that starting point is a large part of why it kept 97% of BERT's GLUE score. `make_student` does the same for any
supported encoder: a new model of the teacher's class (so the same head), with `num_layers` layers copied from the
teacher's, plus the teacher's embeddings and head.

Default layer choice: teacher layers counted 1..L_t, student layer m takes teacher layer round(m * L_t / L_s), the
rule of `hf_kd.layer_map.resolve_layer_map("uniform", L_s, L_t)`. So 12 -> 6 takes layers 2, 4, ..., 12 (every other
layer, as DistilBERT), 6 -> 2 takes 3 and 6, and 6 -> 3 takes 2, 4, 6. The last teacher layer is always kept, since
the head was trained on its output; and a later `DistillationTrainer` with `layer_map="uniform"` matches each
student layer to the very teacher layer it was copied from.

Narrower students (weight selection, Xu et al., ICLR 2024, "Initializing Models with Larger Ones"): with a
smaller `hidden_size`, `num_attention_heads` or `intermediate_size` and `init="select"` (the default), every
student tensor is a sub-tensor of the matching teacher tensor, cut with three kinds of index sets:

- hidden dimensions: ONE index set of `hidden_size` teacher dimensions, shared by the embeddings, every layer
  (attention in/out projections, FFN in/out, LayerNorms) and the head (pooler, classifier). The residual
  stream then carries the same teacher dimensions from the embeddings to the classifier.
- attention heads, per layer: whole heads (head size unchanged, so `hidden_size / num_attention_heads` must
  equal the teacher's head size); the query, key and value rows and the output projection columns of the
  chosen heads.
- FFN neurons, per layer: the rows of the FFN's in-projection and the columns of its out-projection.

Which ones (`selection`):
- "importance" (needs `dataloader`, labelled batches): heads by Michel et al.'s importance |dL/d head mask|,
  FFN neurons by the same gradient on a per-neuron mask (activation x gradient), both on the teacher.
- "magnitude": heads and neurons by the L2 norm of their weight slices (in- and out-projections).
- "even": evenly spaced, index i*T//S for i in 0..S-1 (the uniform selection of Xu et al.).
- "auto" (default): "importance" when a dataloader is given, else "magnitude".
Hidden dimensions follow "even" under "even" and the magnitude rule otherwise: dimension j scores the L2 norm of
every teacher weight that reads or writes it (embedding columns, projection rows/columns, LayerNorm gains) in
the kept layers, the embeddings and the head. Chosen indices keep the teacher's order. The chosen sets are
recorded in the student's config as `hf_kd_weight_selection`.

`init="random"` gives the same narrow architecture with the config's random initialisation for every tensor
whose shape changed (the baseline weight selection is measured against). Weight selection supports BERT,
RoBERTa, ELECTRA and DistilBERT; ALBERT (factorised, shared layers) and DeBERTa-v2 (relative-position
projections sized by the hidden width) get an error naming `init="random"` as the way out.
"""

from __future__ import annotations

import copy
import logging
import re
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from .layer_map import resolve_layer_map

logger = logging.getLogger(__name__)

# model_type -> path of the layer container inside the base model.
LAYER_CONTAINERS = {
    "bert": "encoder.layer",
    "roberta": "encoder.layer",
    "distilbert": "transformer.layer",
    "electra": "encoder.layer",
    "albert": "encoder.albert_layer_groups",
    "deberta-v2": "encoder.layer",
}
SUPPORTED_MODEL_TYPES = tuple(LAYER_CONTAINERS)


def _teacher_layers(config: Any) -> int:
    return int(config.num_hidden_layers)  # DistilBERT maps num_hidden_layers -> n_layers


def _select_layers(num_teacher: int, num_layers: int | None, layers: list[int] | None) -> list[int]:
    if layers is not None:
        layers = [int(t) for t in layers]
        if num_layers is not None and num_layers != len(layers):
            raise ValueError(
                f"num_layers={num_layers} but layers={layers} names {len(layers)} layers: pass one of the two"
            )
        bad = [t for t in layers if not 1 <= t <= num_teacher]
        if bad or not layers:
            raise ValueError(
                f"layers={layers}: teacher layers count from 1 to {num_teacher}, and at least one is needed "
                f"(offending: {bad})"
            )
        return layers
    if num_layers is None:
        raise ValueError("make_student needs num_layers=<int> or layers=[teacher layers, counted from 1]")
    if not 1 <= num_layers <= num_teacher:
        raise ValueError(
            f"num_layers={num_layers}: a student built from a {num_teacher}-layer teacher has 1..{num_teacher} "
            "layers; to repeat teacher layers, list them explicitly with layers=[...]"
        )
    return list(resolve_layer_map("uniform", num_layers, num_teacher).values())


def _albert_groups(config: Any, selected: list[int]) -> list[int]:
    """Teacher layer groups that the student's groups copy, one per student group.

    ALBERT shares weights: its L layers run `num_hidden_groups` groups in order, layer i (0-based) using group
    int(i / (L / G)). With one group (every released ALBERT), every layer is the same weights, so "selecting
    layers" means keeping the shared group and running it fewer times. With several groups, the student keeps the
    groups its selected layers use, which must come out in the order the student's own layer-to-group rule gives.
    """
    num_teacher, groups = int(config.num_hidden_layers), int(config.num_hidden_groups)
    used = [int((t - 1) / (num_teacher / groups)) for t in selected]  # teacher group of each selected layer
    distinct = sorted(set(used), key=used.index)
    n = len(selected)
    student_rule = [int(i / (n / len(distinct))) for i in range(n)]
    if [distinct[g] for g in student_rule] != used:
        raise ValueError(
            f"ALBERT teacher layers {selected} use layer groups {used}, which a {n}-layer ALBERT with "
            f"{len(distinct)} groups cannot reproduce (it assigns groups {student_rule}): choose layers so that "
            "each group's layers are contiguous and equally many, or a teacher with num_hidden_groups=1"
        )
    return distinct


def _container_name(model: nn.Module, path: str) -> str:
    for name, module in model.named_modules():
        if (name == path or name.endswith("." + path)) and isinstance(module, nn.ModuleList):
            return name
    raise ValueError(f"{type(model).__name__} has no layer list at '{path}'")


def _part(key: str, container: str) -> str:
    """A readable name for the part of the model a state-dict key belongs to (for the random-init log)."""
    if key.startswith(container + "."):
        rest = key[len(container) + 1 :]
        index, _, tail = rest.partition(".")
        sub = tail.split(".")[0] if tail else ""
        return f"layer {index} {sub}".strip()
    parts = key.split(".")
    return ".".join(parts[:2]) if len(parts) > 2 else parts[0]


# ---- weight selection (narrow students) ---------------------------------------------------------------------

INIT_RULES = ("select", "random")
SELECTION_RULES = ("auto", "importance", "magnitude", "even")

# model_type -> (in-projections of the heads, out-projection of the heads, FFN in, FFN out), as regexes on a
# state-dict key inside one layer, and the out-projections' module paths (importance hooks read their input).
_WIDTH_RULES: dict[str, dict[str, str]] = {
    "bert": {
        "heads_in": r"attention\.self\.(query|key|value)\.",
        "heads_out": r"attention\.output\.dense\.",
        "ffn_in": r"intermediate\.dense\.",
        "ffn_out": r"output\.dense\.",
    },
    "distilbert": {
        "heads_in": r"attention\.(q_lin|k_lin|v_lin)\.",
        "heads_out": r"attention\.out_lin\.",
        "ffn_in": r"ffn\.lin1\.",
        "ffn_out": r"ffn\.lin2\.",
    },
}
_WIDTH_RULES["roberta"] = _WIDTH_RULES["electra"] = _WIDTH_RULES["bert"]
_OUT_MODULES = {
    "bert": ("attention.output.dense", "output.dense"),
    "distilbert": ("attention.out_lin", "ffn.lin2"),
}
_OUT_MODULES["roberta"] = _OUT_MODULES["electra"] = _OUT_MODULES["bert"]
# (axis 0 kind, axis 1 kind) of a weight; a bias has axis 0 only
_KIND_AXES = {
    "heads_in": ("heads", "hidden"),
    "heads_out": ("hidden", "heads"),
    "ffn_in": ("ffn", "hidden"),
    "ffn_out": ("hidden", "ffn"),
}
_WHY_NOT_SELECTED = {
    "albert": "ALBERT factorises its embeddings and shares one layer group across all layers",
    "deberta-v2": "DeBERTa-v2's relative-position projections and embeddings are sized by the hidden width "
    "in ways a plain index set does not cover",
}


def _intermediate_size(config: Any) -> int:
    return int(getattr(config, "intermediate_size", None) or config.hidden_dim)  # DistilBERT: hidden_dim


def _set_intermediate_size(config: Any, value: int) -> None:
    config.__setattr__("hidden_dim" if config.model_type == "distilbert" else "intermediate_size", value)


def _resolve_widths(
    config: Any, hidden_size: int | None, num_attention_heads: int | None, intermediate_size: int | None
) -> tuple[int, int, int]:
    """The student's (hidden, heads, intermediate) sizes; a head count follows a new hidden size by default."""
    head_dim = config.hidden_size // config.num_attention_heads
    hidden = int(hidden_size or config.hidden_size)
    if num_attention_heads is None:
        if hidden % head_dim:
            raise ValueError(
                f"hidden_size={hidden} is not a multiple of the teacher's head size {head_dim} "
                f"({config.hidden_size} / {config.num_attention_heads} heads): pass a multiple of {head_dim}, "
                "or num_attention_heads=..."
            )
        heads = hidden // head_dim
    else:
        heads = int(num_attention_heads)
    if intermediate_size is None:
        intermediate = _intermediate_size(config) * hidden // config.hidden_size  # keeps the teacher's ratio
    else:
        intermediate = int(intermediate_size)
    return hidden, heads, intermediate


def _check_select_widths(config: Any, hidden: int, heads: int, intermediate: int) -> None:
    teacher = (config.hidden_size, config.num_attention_heads, _intermediate_size(config))
    for name, value, limit in zip(
        ("hidden_size", "num_attention_heads", "intermediate_size"), (hidden, heads, intermediate), teacher
    ):
        if not 1 <= value <= limit:
            raise ValueError(
                f"{name}={value}: weight selection takes a subset of the teacher's {limit}, so it must be 1..{limit}; "
                "for a wider student use init='random'"
            )
    head_dim = config.hidden_size // config.num_attention_heads
    if hidden != heads * head_dim:
        raise ValueError(
            f"hidden_size={hidden} with num_attention_heads={heads} gives heads of size {hidden / heads:g}, but "
            f"the teacher's heads have size {head_dim}: weight selection keeps whole heads, so pass "
            f"num_attention_heads={hidden // head_dim if hidden % head_dim == 0 else '?'} (hidden_size a multiple "
            f"of {head_dim}), or init='random'"
        )


def _even(total: int, keep: int) -> torch.Tensor:
    """`keep` evenly spaced indices out of `total`: i * total // keep (strictly increasing)."""
    return torch.arange(keep) * total // keep


def _top(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices of the `keep` highest scores, in increasing index order (ties: the lower index)."""
    order = torch.sort(scores, descending=True, stable=True).indices[:keep]
    return torch.sort(order).values


def _axis_kinds(rest: str | None, ndim: int, rules: dict[str, str], differs: list[bool]) -> list[str | None]:
    """What each axis of a tensor indexes: 'hidden', 'heads', 'ffn' or None (kept whole). `rest` is the key
    inside a layer (None outside the layers); an axis matched by no rule is hidden when its size changes."""
    if rest is not None:
        for kind, pattern in rules.items():
            if re.match(pattern, rest):
                return list(_KIND_AXES[kind][:ndim])
    return ["hidden" if d else None for d in differs]


def _weight_slices_norm(tensor: torch.Tensor, axis: int) -> torch.Tensor:
    """(size of `axis`,): sum of squares of each slice of `tensor` along `axis`."""
    t = tensor.detach().float()
    dims = [d for d in range(t.dim()) if d != axis]
    return t.pow(2).sum(dim=dims) if dims else t.pow(2)


def _importance(
    teacher: PreTrainedModel, container: str, model_type: str, dataloader: Any, head_dim: int
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per teacher layer: head importance (num_heads,) and FFN neuron importance (intermediate,)."""
    from .pruning import mask_gradient_scores

    layers = teacher.get_submodule(container)
    heads_path, ffn_path = _OUT_MODULES[model_type]
    heads_out = [layer.get_submodule(heads_path) for layer in layers]
    ffn_out = [layer.get_submodule(ffn_path) for layer in layers]
    batches = list(dataloader)  # the same batches for both scores
    scores = mask_gradient_scores(
        teacher, batches, heads_out + ffn_out, [head_dim] * len(layers) + [1] * len(layers)
    )
    return scores[: len(layers)], scores[len(layers) :]


def _selection_for(
    pairs: list[tuple[str, str, list[str | None], int | None]],
    teacher_state: dict[str, torch.Tensor],
    config: Any,
    widths: tuple[int, int, int],
    teacher_layers: list[int],
    selection: str,
    importance: tuple[list[torch.Tensor], list[torch.Tensor]] | None,
) -> dict[str, Any]:
    """The index sets: {"hidden": (H_s,), "heads": {teacher layer: [heads]}, "ffn": {teacher layer: (I_s,)}}."""
    hidden, heads, intermediate = widths
    num_heads, head_dim = config.num_attention_heads, config.hidden_size // config.num_attention_heads
    if selection == "even":
        return {
            "hidden": _even(config.hidden_size, hidden),
            "heads": {t: _even(num_heads, heads).tolist() for t in teacher_layers},
            "ffn": {t: _even(_intermediate_size(config), intermediate) for t in teacher_layers},
        }
    hidden_score = torch.zeros(config.hidden_size)
    head_score = {t: torch.zeros(num_heads * head_dim) for t in teacher_layers}
    ffn_score = {t: torch.zeros(_intermediate_size(config)) for t in teacher_layers}
    for _, source, kinds, layer in pairs:
        for axis, kind in enumerate(kinds):
            if kind == "hidden":
                hidden_score += _weight_slices_norm(teacher_state[source], axis)
            elif kind == "heads":
                head_score[layer] += _weight_slices_norm(teacher_state[source], axis)
            elif kind == "ffn":
                ffn_score[layer] += _weight_slices_norm(teacher_state[source], axis)
    chosen_heads, chosen_ffn = {}, {}
    for t in teacher_layers:
        if importance is not None:
            per_head, per_neuron = importance[0][t], importance[1][t]
        else:
            per_head, per_neuron = head_score[t].view(num_heads, head_dim).sum(-1).sqrt(), ffn_score[t].sqrt()
        chosen_heads[t] = _top(per_head, heads).tolist()
        chosen_ffn[t] = _top(per_neuron, intermediate)
    return {"hidden": _top(hidden_score.sqrt(), hidden), "heads": chosen_heads, "ffn": chosen_ffn}


def _head_rows(heads: list[int], head_dim: int) -> torch.Tensor:
    return torch.cat([torch.arange(h * head_dim, (h + 1) * head_dim) for h in heads])  # (heads * head_dim,)


def _select_state(
    teacher: PreTrainedModel,
    student: PreTrainedModel,
    container: str,
    index_map: dict[int, int],
    model_type: str,
    widths: tuple[int, int, int],
    selection: str,
    dataloader: Any,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The student's state dict cut from the teacher's by weight selection, and the index sets used."""
    config = teacher.config
    rules = _WIDTH_RULES[model_type]
    layer_key = re.compile(rf"^{re.escape(container)}\.(\d+)\.(.*)$")
    teacher_state = teacher.state_dict()
    pairs = []  # (student key, teacher key, axis kinds, teacher layer or None)
    for key, value in student.state_dict().items():
        source, rest, layer = key, None, None
        match = layer_key.match(key)
        if match:
            layer, rest = index_map[int(match.group(1))], match.group(2)
            source = f"{container}.{layer}.{rest}"
        tensor = teacher_state.get(source)
        if tensor is None or tensor.dim() != value.dim():
            raise ValueError(
                f"weight selection found no teacher tensor of {value.dim()} dimensions for {key} (looked for "
                f"{source}): use init='random' for this student"
            )
        differs = [a != b for a, b in zip(tensor.shape, value.shape)]
        pairs.append((key, source, _axis_kinds(rest, value.dim(), rules, differs), layer))
    teacher_layers = sorted(set(index_map.values()))
    student_shapes = {key: value.shape for key, value in student.state_dict().items()}
    if selection == "auto":
        selection = "importance" if dataloader is not None else "magnitude"
    importance = None
    if selection == "importance":
        if dataloader is None:
            raise ValueError(
                "selection='importance' needs dataloader=<labelled batches> to take gradients over; pass one, "
                "or use selection='magnitude' or 'even'"
            )
        importance = _importance(
            teacher, container, model_type, dataloader, config.hidden_size // config.num_attention_heads
        )
    sets = _selection_for(pairs, teacher_state, config, widths, teacher_layers, selection, importance)
    head_dim = config.hidden_size // config.num_attention_heads
    state = {}
    for key, source, kinds, layer in pairs:
        tensor = teacher_state[source].detach()
        for axis, kind in enumerate(kinds):
            if kind == "hidden":
                index = sets["hidden"]
            elif kind == "heads":
                index = _head_rows(sets["heads"][layer], head_dim)
            elif kind == "ffn":
                index = sets["ffn"][layer]
            else:
                continue
            tensor = tensor.index_select(axis, index.to(tensor.device))
        expected = student_shapes[key]
        if tensor.shape != expected:
            raise ValueError(
                f"weight selection cut {source} to {tuple(tensor.shape)} but the student's {key} is "
                f"{tuple(expected)}: use init='random' for this student"
            )
        state[key] = tensor.clone()  # own storage: the trainer rejects shared parameters
    record = {
        "rule": selection,
        "hidden": sets["hidden"].tolist(),
        "heads": {str(m): sets["heads"][t] for m, t in index_map.items()},
        "ffn": {str(m): sets["ffn"][t].tolist() for m, t in index_map.items()},
    }
    return state, record


def _student_config(
    teacher: PreTrainedModel,
    selected: list[int],
    init: str,
    widths: tuple[int, int, int] | None,
    widths_given: dict[str, int],
    hidden_size: int | None,
    num_attention_heads: int | None,
    intermediate_size: int | None,
    config_overrides: dict[str, Any],
) -> tuple[Any, dict[int, int], dict[str, Any]]:
    """The student's config (the teacher's with fewer layers, any new widths and overrides, and the hf_kd_*
    records), the map from student layer index to teacher layer index in the layer container (0-based), and the
    config overrides to name in the random-initialisation warning. `widths` (hidden, heads, FFN) is given for a
    weight-selected student and None otherwise."""
    config = teacher.config
    select = widths is not None
    model_type = config.model_type
    num_teacher = _teacher_layers(config)
    student_config = copy.deepcopy(config)
    for name, value in config_overrides.items():
        setattr(student_config, name, value)
    if select:
        student_config.hidden_size, student_config.num_attention_heads = widths[0], widths[1]
        _set_intermediate_size(student_config, widths[2])
        # ELECTRA without a factorised embedding (embedding_size == hidden_size) stays without one.
        if getattr(config, "embedding_size", None) == config.hidden_size:
            student_config.embedding_size = widths[0]
    else:
        # The same shapes weight selection would build: heads and FFN follow a new hidden size unless given.
        head_dim = config.hidden_size // config.num_attention_heads
        if hidden_size is not None and hidden_size % head_dim == 0:
            resolved = _resolve_widths(config, hidden_size, num_attention_heads, intermediate_size)
            widths_given = dict(zip(("hidden_size", "num_attention_heads", "intermediate_size"), resolved))
        for name, value in widths_given.items():
            if name == "intermediate_size":
                _set_intermediate_size(student_config, value)
            else:
                setattr(student_config, name, value)
        config_overrides = {**widths_given, **config_overrides}  # named in the random-init warning
    # DeBERTa's pooler width defaults to hidden_size when the config is made; follow a new hidden size.
    if student_config.hidden_size != config.hidden_size and "pooler_hidden_size" not in config_overrides:
        if getattr(config, "pooler_hidden_size", None) == config.hidden_size:
            student_config.pooler_hidden_size = student_config.hidden_size
    student_config.num_hidden_layers = len(selected)
    # layer index maps in the layer container: student index -> teacher index (0-based)
    if model_type == "albert":
        groups = _albert_groups(config, selected)
        student_config.num_hidden_groups = len(groups)
        index_map = dict(enumerate(groups))
        logger.info(
            "ALBERT shares weights across layers: the student keeps teacher layer group(s) %s and runs them %d "
            "times instead of %d (selected teacher layers %s).",
            groups,
            len(selected),
            num_teacher,
            selected,
        )
    else:
        index_map = {m: t - 1 for m, t in enumerate(selected)}
    name_or_path = getattr(config, "_name_or_path", None) or None
    student_config.hf_kd_teacher = name_or_path or type(teacher).__name__
    student_config.hf_kd_teacher_layers = selected
    student_config.hf_kd_init = "select" if select else init
    student_config._name_or_path = ""
    return student_config, index_map, config_overrides


def _finish(student: PreTrainedModel, teacher: PreTrainedModel) -> None:
    """Tie the student's weights and move it to the teacher's device and dtype."""
    if hasattr(student, "tie_weights"):
        student.tie_weights()
    param = next(teacher.parameters())
    student.to(device=param.device, dtype=param.dtype)


def make_student(
    teacher: PreTrainedModel,
    num_layers: int | None = None,
    layers: list[int] | None = None,
    *,
    hidden_size: int | None = None,
    num_attention_heads: int | None = None,
    intermediate_size: int | None = None,
    init: str = "select",
    selection: str = "auto",
    dataloader: Any = None,
    **config_overrides: Any,
) -> PreTrainedModel:
    """A new model of the teacher's class (same head) with fewer layers, and optionally narrower, initialised
    from the teacher.

    Args:
        teacher: a BERT, RoBERTa, DistilBERT, ELECTRA, ALBERT or DeBERTa-v2 model with any head.
        num_layers: the student's depth. The teacher layers are spread evenly: student layer m (1-based) copies
            teacher layer round(m * L_t / L_s) (12 -> 6: 2, 4, ..., 12, every other layer as in DistilBERT;
            6 -> 2: 3 and 6).
        layers: the teacher layers to copy, counted from 1, in the student's order (overrides the spread).
        hidden_size: a narrower residual width (a multiple of the teacher's head size). By default the head
            count follows it (hidden_size / teacher head size) and so does the FFN (the teacher's ratio).
        num_attention_heads: heads per layer.
        intermediate_size: FFN neurons per layer.
        init: `select` (default): narrower tensors are sub-tensors of the teacher's, by weight selection (module
            docstring). `random`: tensors whose shape or head split changed get the config's random
            initialisation, everything else is copied (the baseline for weight selection).
        selection: which heads, neurons and hidden dimensions `select` keeps: `auto` (importance with a
            dataloader, else magnitude), `importance`, `magnitude` or `even`.
        dataloader: labelled batches (dicts of tensors with `labels`) for importance; iterated once.
        **config_overrides: other changes to the student's config. With `init="random"`, weights whose shapes
            no longer match the teacher's are randomly initialised, as is a layer's attention block when the head
            count changes (same shapes, but the heads would be split differently); a warning names every
            random part.

    Returns:
        The student, on the teacher's device and in its dtype, with its own copies of every tensor (none shared
        with the teacher). Its config records `hf_kd_teacher` (the teacher's name or path),
        `hf_kd_teacher_layers` (the copied teacher layers), `hf_kd_init`, and for a weight-selected narrow
        student `hf_kd_weight_selection` (the rule and the chosen hidden dimensions, heads and FFN neurons per
        student layer), which `save_pretrained` keeps.

    ALBERT shares one layer group across all its layers: the student keeps that shared group and runs it
    `num_layers` times (`num_hidden_layers` smaller), so every "selected layer" is the same copied weights. With
    several groups, the student keeps the groups its selected layers use.
    """
    config = getattr(teacher, "config", None)
    model_type = getattr(config, "model_type", None)
    if not isinstance(teacher, PreTrainedModel) or model_type not in LAYER_CONTAINERS:
        raise ValueError(
            f"make_student does not support {type(teacher).__name__} (model_type={model_type!r}): supported "
            f"model types are {', '.join(SUPPORTED_MODEL_TYPES)}. For others, build the student yourself "
            "(from_config with fewer layers) and copy the layers you want"
        )
    if init not in INIT_RULES:
        raise ValueError(f"init={init!r} is not one of {list(INIT_RULES)}")
    if selection not in SELECTION_RULES:
        raise ValueError(f"selection={selection!r} is not one of {list(SELECTION_RULES)}")
    num_teacher = _teacher_layers(config)
    selected = _select_layers(num_teacher, num_layers, layers)

    widths_given = {
        name: value
        for name, value in (
            ("hidden_size", hidden_size),
            ("num_attention_heads", num_attention_heads),
            ("intermediate_size", intermediate_size),
        )
        if value is not None
    }
    teacher_widths = (config.hidden_size, config.num_attention_heads, _intermediate_size(config))
    select = False
    if init == "select" and widths_given:
        widths = _resolve_widths(config, hidden_size, num_attention_heads, intermediate_size)
        # Equal widths on a supported model still go through the cut (identity index sets), so both paths agree.
        select = widths != teacher_widths or model_type in _WIDTH_RULES
        if select and model_type not in _WIDTH_RULES:
            raise ValueError(
                f"weight selection (init='select') does not support {type(teacher).__name__} "
                f"(model_type={model_type!r}): {_WHY_NOT_SELECTED.get(model_type, 'no rule for its tensors')}. "
                f"It supports {', '.join(_WIDTH_RULES)}; pass init='random' for a randomly initialised narrow "
                "student"
            )
        if select:
            _check_select_widths(config, *widths)
    student_config, index_map, config_overrides = _student_config(
        teacher,
        selected,
        init,
        widths if select else None,
        widths_given,
        hidden_size,
        num_attention_heads,
        intermediate_size,
        config_overrides,
    )
    student = type(teacher)(student_config)
    container = _container_name(teacher, LAYER_CONTAINERS[model_type])
    # (DistilBERT's config maps num_attention_heads to n_heads, so this reads every supported config.)
    heads_changed = student_config.num_attention_heads != config.num_attention_heads
    layer_key = re.compile(rf"^{re.escape(container)}\.(\d+)\.(.*)$")

    if select:
        new_state, record = _select_state(
            teacher, student, container, index_map, model_type, widths, selection, dataloader
        )
        student.load_state_dict(new_state, strict=True)
        student.config.hf_kd_weight_selection = record
        _finish(student, teacher)
        logger.info(
            "make_student: %d-layer %s (hidden %d, %d heads, FFN %d) from teacher layers %s by weight "
            "selection (%s).",
            len(selected),
            type(teacher).__name__,
            *widths,
            selected,
            record["rule"],
        )
        return student

    teacher_state = teacher.state_dict()
    new_state, random_parts = {}, []
    for key, value in student.state_dict().items():
        source = key
        match = layer_key.match(key)
        if match:
            index, rest = int(match.group(1)), match.group(2)
            source = f"{container}.{index_map[index]}.{rest}"
            if heads_changed and ".attention." in f".{rest}":
                random_parts.append(_part(key, container))
                continue
        tensor = teacher_state.get(source)
        if tensor is None or tensor.shape != value.shape:
            random_parts.append(_part(key, container))
            continue
        new_state[key] = tensor.detach().clone()  # own storage: the trainer rejects shared parameters
    student.load_state_dict(new_state, strict=False)  # load_state_dict copies into the student's own tensors
    _finish(student, teacher)

    if random_parts:
        parts = sorted(set(random_parts), key=random_parts.index)
        logger.warning(
            "make_student: %d of %d tensors are randomly initialised (config overrides %s change their shape or "
            "meaning, or the teacher lacks them): %s. Everything else is copied from the teacher.",
            len(random_parts),
            len(new_state) + len(random_parts),
            config_overrides,
            ", ".join(parts),
        )
    logger.info(
        "make_student: %d-layer %s from %d-layer teacher %s, copying teacher layers %s.",
        len(selected),
        type(teacher).__name__,
        num_teacher,
        student_config.hf_kd_teacher,
        selected,
    )
    return student
