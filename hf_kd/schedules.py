"""Schedules for alpha and the temperature over training.

Pure functions of the training progress, so a resumed run computes the same value at the same step as an
uninterrupted one (nothing to checkpoint).
"""

from __future__ import annotations

import math


def scheduled_value(start: float, end: float | None, kind: str, step: int, max_steps: int) -> float:
    """Value at optimizer step `step` of `max_steps` for a schedule from `start` to `end`.

    `constant`: start throughout. `linear`: straight line from start (step 0) to end (last step).
    `cosine`: half-cosine from start to end, flat at both ends.
    """
    if kind == "constant" or end is None or max_steps <= 1:
        return start
    progress = min(max(step / (max_steps - 1), 0.0), 1.0)
    if kind == "linear":
        return start + (end - start) * progress
    if kind == "cosine":
        return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"schedule {kind!r} is not one of 'constant', 'linear', 'cosine'")
