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
"""

from __future__ import annotations

import copy
import logging
import re
from typing import Any

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


def make_student(
    teacher: PreTrainedModel,
    num_layers: int | None = None,
    layers: list[int] | None = None,
    **config_overrides: Any,
) -> PreTrainedModel:
    """A new model of the teacher's class (same head) with fewer layers, initialised from the teacher.

    Args:
        teacher: a BERT, RoBERTa, DistilBERT, ELECTRA, ALBERT or DeBERTa-v2 model with any head.
        num_layers: the student's depth. The teacher layers are spread evenly: student layer m (1-based) copies
            teacher layer round(m * L_t / L_s) (12 -> 6: 2, 4, ..., 12, every other layer as in DistilBERT;
            6 -> 2: 3 and 6).
        layers: the teacher layers to copy, counted from 1, in the student's order (overrides the spread).
        **config_overrides: changes to the student's config, e.g. `hidden_size`, `num_attention_heads`,
            `intermediate_size`. Weights whose shapes no longer match the teacher's are randomly initialised
            (the config's usual init), as is a layer's attention block when the head count changes (same shapes,
            but the heads would be split differently); a warning names every random part.

    Returns:
        The student, on the teacher's device and in its dtype, with its own copies of every tensor (none shared
        with the teacher). Its config records `hf_kd_teacher` (the teacher's name or path) and
        `hf_kd_teacher_layers` (the copied teacher layers), which `save_pretrained` keeps.

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
    num_teacher = _teacher_layers(config)
    selected = _select_layers(num_teacher, num_layers, layers)

    student_config = copy.deepcopy(config)
    for name, value in config_overrides.items():
        setattr(student_config, name, value)
    # DeBERTa's pooler width defaults to hidden_size when the config is made; follow a new hidden size.
    if "hidden_size" in config_overrides and "pooler_hidden_size" not in config_overrides:
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
    student_config._name_or_path = ""

    student = type(teacher)(student_config)
    container = _container_name(teacher, LAYER_CONTAINERS[model_type])
    # (DistilBERT's config maps num_attention_heads to n_heads, so this reads every supported config.)
    heads_changed = student_config.num_attention_heads != config.num_attention_heads
    layer_key = re.compile(rf"^{re.escape(container)}\.(\d+)\.(.*)$")

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
    if hasattr(student, "tie_weights"):
        student.tie_weights()
    param = next(teacher.parameters())
    student.to(device=param.device, dtype=param.dtype)

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
