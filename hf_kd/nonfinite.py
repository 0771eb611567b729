"""The non-finite policy: NaN or inf in the teacher's or the student's logits, or in the loss.

`raise` (the default) stops training with an error naming the step and micro-batch; `skip` skips that whole
optimizer step on every process and stops the run once skipping looks like divergence. In training the flags
stay on the device and are read once per optimizer step, just before the update, so that no micro-batch waits
for the host.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

logger = logging.getLogger(__name__)

TEACHER, STUDENT, LOSS = range(3)  # positions in a micro-batch's flag vector


class NonFiniteLossError(FloatingPointError):
    """NaN or inf in the teacher's or the student's logits, or in the loss."""


def nonfinite(*tensors: torch.Tensor | None) -> torch.Tensor:
    """True where any tensor holds NaN or +inf (-inf is a legitimate masked logit); stays on the device."""
    flags = [torch.isnan(t).any() | torch.isposinf(t).any() for t in tensors if t is not None]
    return torch.stack(flags).any() if flags else torch.zeros((), dtype=torch.bool)


def nonfinite_error(flags: list[bool], location: str) -> NonFiniteLossError:
    where = [name for name, bad in zip(("teacher logits", "student logits"), flags[:2]) if bad]
    what = (
        " and ".join(where) or "the distillation loss (logits finite, e.g. -inf where the teacher has mass)"
    )
    return NonFiniteLossError(
        f"NaN or inf in {what} at {location}: check the inputs of this batch, lower the learning rate, "
        "or train in bf16 instead of fp16; nonfinite_policy='skip' skips such optimizer steps instead"
    )


class NonFiniteGuard:
    """Collects each micro-batch's flags and applies the policy at the optimizer step (`wrap`)."""

    def __init__(self, args: Any, accelerator: Any) -> None:
        self.args, self.accelerator = args, accelerator
        self.skipped = 0
        self.active = False  # an optimizer's step reads the flags (else they are read at once)
        self.reset()

    def reset(self) -> None:
        self.pending: list[tuple[str, torch.Tensor]] = []
        self.skip_next = False  # set by an immediate check (no wrapped optimizer) in skip mode
        self.consecutive = 0

    def check(self, flags: torch.Tensor, location: str, training: bool, deferred: bool) -> None:
        """`flags`: (teacher, student, loss) booleans of one micro-batch. Deferred to the optimizer step while
        training under a wrapped optimizer; else read now (evaluation, direct calls, DeepSpeed's own step)."""
        if training and deferred:
            self.pending.append((location, flags))
        elif flags.any().item():
            if training and self.args.nonfinite_policy == "skip":
                self.skip_next = True
            else:
                raise nonfinite_error(flags.tolist(), location)

    def wrap(self, optimizer: torch.optim.Optimizer, max_steps: Any) -> None:
        """Read the step's flags once, just before the update. 'raise' stops with the micro-batch that went wrong;
        'skip' does not call the optimizer at all, on any process (a zero gradient is not enough: Adam's moments
        would still move the weights), and stops after too many skipped steps."""
        step = optimizer.step

        def guarded_step(*args: Any, **kwargs: Any) -> Any:
            pending, self.pending = self.pending, []
            device = self.args.device
            flags = (
                torch.stack([f.to(device) for _, f in pending])
                if pending
                else torch.zeros(0, 3, dtype=torch.bool)
            )
            skip = torch.tensor(float(self.skip_next or bool(flags.any())), device=device)
            if self.args.world_size > 1:
                skip = self.accelerator.reduce(skip, reduction="sum")
            self.skip_next = False
            if skip.item() == 0:
                self.consecutive = 0
                return step(*args, **kwargs)
            bad = [(loc, f.tolist()) for (loc, _), f in zip(pending, flags) if f.any()]
            first = bad[0] if bad else ("the same step on another process", [False, False, True])
            if self.args.nonfinite_policy != "skip":
                raise nonfinite_error(first[1], first[0])
            self.skipped += 1
            self.consecutive += 1
            logger.warning("Non-finite values at %s: skipping this optimizer step.", first[0])
            self._check_limits(first, max_steps())
            return None

        optimizer.step = guarded_step
        optimizer._hf_kd_guarded = True
        self.active = True

    def _check_limits(self, first: tuple[str, list[bool]], max_steps: int) -> None:
        """A run that keeps skipping has diverged: stop it as 'raise' would, before it saves a broken model."""
        a = self.args
        limit = max(1, int(a.nonfinite_max_skip_fraction * max(max_steps, 1)))
        if self.consecutive >= a.nonfinite_max_consecutive_skips or self.skipped > limit:
            raise NonFiniteLossError(
                f"{nonfinite_error(first[1], first[0])} -- {self.skipped} optimizer steps were skipped "
                f"({self.consecutive} in a row), over the limits nonfinite_max_consecutive_skips="
                f"{a.nonfinite_max_consecutive_skips} and nonfinite_max_skip_fraction="
                f"{a.nonfinite_max_skip_fraction}: the run has diverged"
            )
