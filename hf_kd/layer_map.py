"""Layer mapping between student and teacher, and the learned projections that bridge hidden sizes.

Layers count from 1: `hidden_states[m]` is the output of layer m and `hidden_states[0]` the embedding output,
so a mapping {student_layer: teacher_layer} indexes `hidden_states` directly and `attentions[m - 1]`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

PROJECTIONS_ATTR = "hf_kd_projections"
PROJECTIONS_FILE = "hf_kd_projections.safetensors"


# The projections exist only for training. These two are the one rule for leaving them out of a student that is
# saved, pushed, measured or exported.
def strip_projections(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """A student's state dict without the training-only projections."""
    return {k: v for k, v in state_dict.items() if PROJECTIONS_ATTR not in k}


@contextmanager
def without_projections(model: nn.Module) -> Iterator[nn.Module]:
    """The student with its projections taken off for the duration (and put back after)."""
    saved = model._modules.pop(PROJECTIONS_ATTR, None)
    try:
        yield model
    finally:
        if saved is not None:
            model._modules[PROJECTIONS_ATTR] = saved


def resolve_layer_map(
    layer_map: str | dict[int, int], num_student_layers: int, num_teacher_layers: int
) -> dict[int, int]:
    """Return the explicit {student_layer: teacher_layer} mapping for layers 1..L_s (or as given).

    `uniform`: student layer m -> teacher layer round(m * L_t / L_s) (TinyBERT, PKD-skip); 12 -> 4 gives
    {1: 3, 2: 6, 3: 9, 4: 12}. `last`: the last L_s teacher layers. A dict is checked against both models.
    """
    if num_student_layers < 1 or num_teacher_layers < 1:
        raise ValueError(
            f"cannot map layers: student has {num_student_layers} and teacher {num_teacher_layers} layers"
        )
    if layer_map == "uniform":
        # Python's round() is banker's rounding; use floor(x + 0.5) so 6 -> 4 gives 2, 3, 5, 6 as written.
        return {
            m: int(m * num_teacher_layers / num_student_layers + 0.5)
            for m in range(1, num_student_layers + 1)
        }
    if layer_map == "last":
        if num_student_layers > num_teacher_layers:
            raise ValueError(
                f"layer_map='last' needs a teacher at least as deep as the student, got student "
                f"{num_student_layers} > teacher {num_teacher_layers} layers: use 'uniform' or an explicit map"
            )
        offset = num_teacher_layers - num_student_layers
        return {m: m + offset for m in range(1, num_student_layers + 1)}
    if isinstance(layer_map, dict):
        for s, t in layer_map.items():
            if not 0 <= s <= num_student_layers:
                raise ValueError(
                    f"layer_map entry {s}: {t} names student layer {s}, but the student has layers 0.."
                    f"{num_student_layers} (0 is the embedding output): fix the mapping"
                )
            if not 0 <= t <= num_teacher_layers:
                raise ValueError(
                    f"layer_map entry {s}: {t} names teacher layer {t}, but the teacher has layers 0.."
                    f"{num_teacher_layers} (0 is the embedding output): fix the mapping"
                )
        return dict(sorted(layer_map.items()))
    raise ValueError(f"layer_map {layer_map!r} is not 'uniform', 'last' or a dict")


@dataclass
class LayerPair:
    student_layer: int
    teacher_layer: int
    student_size: int
    teacher_size: int
    loss: str  # "hidden", "embedding" or "pooled" (one vector per example from the last layers)

    @property
    def projected(self) -> bool:
        return self.student_size != self.teacher_size

    @property
    def key(self) -> str:
        """The projection's name in checkpoints: the student layer, or `pooled`."""
        return "pooled" if self.loss == "pooled" else str(self.student_layer)


class HiddenProjections(nn.Module):
    """One linear map per matched student layer, student size -> teacher size (TinyBERT's W_h, PKD).

    Kept in a ModuleDict keyed by the student layer so checkpoints name each projection plainly.
    """

    def __init__(self, pairs: list[LayerPair], init: str = "xavier") -> None:
        super().__init__()
        self.maps = nn.ModuleDict()
        for pair in pairs:
            if pair.projected:
                proj = nn.Linear(pair.student_size, pair.teacher_size)
                if init == "identity":
                    with torch.no_grad():
                        proj.weight.zero_()
                        n = min(pair.student_size, pair.teacher_size)
                        proj.weight[:n, :n] = torch.eye(n)
                        proj.bias.zero_()
                else:
                    nn.init.xavier_uniform_(proj.weight)
                    nn.init.zeros_(proj.bias)
                self.maps[pair.key] = proj

    def forward(self, student_layer: int | str, hidden: torch.Tensor) -> torch.Tensor:
        key = str(student_layer)
        if key in self.maps:
            proj = self.maps[key]
            return proj(hidden.to(proj.weight.dtype))  # (B, L, D_s) -> (B, L, D_t), or (B, D_s) -> (B, D_t)
        return hidden


def format_layer_table(
    pairs: list[LayerPair], attention_layers: dict[int, int], weights: dict[str, float]
) -> str:
    """A plain-text table of the resolved mapping, logged at the start of training."""
    header = f"{'student':>7} {'teacher':>7} {'sizes':>11} {'projection':>10}  {'loss':<10} {'weight':>6}"
    rows = [header, "-" * len(header)]
    for p in pairs:
        rows.append(
            f"{p.student_layer:>7} {p.teacher_layer:>7} {f'{p.student_size}->{p.teacher_size}':>11} "
            f"{'yes' if p.projected else 'no':>10}  {p.loss:<10} {weights[p.loss]:>6g}"
        )
    for s, t in attention_layers.items():
        rows.append(f"{s:>7} {t:>7} {'':>11} {'no':>10}  {'attention':<10} {weights['attention']:>6g}")
    return "\n".join(rows)
