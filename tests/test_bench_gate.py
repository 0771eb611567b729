"""The step-cost benchmark's StepGate: methods must take their steps strictly one at a time, in the order the
coordinator asks, or the interleaved timings on the benchmarks page would measure two methods at once."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: the bench/ scripts

from bench.step_cost import GatedStepper, StepGate  # noqa: E402


def _recording_loop(gate: StepGate, name: str, steps: int, log: list[tuple[str, str]], busy: list[str]):
    """A stand-in training loop: each step marks itself busy, sleeps, and logs its start and end."""

    def loop() -> None:
        for _ in range(steps):
            gate.begin()
            busy.append(name)
            log.append((name, "start"))
            time.sleep(0.002)
            log.append((name, "end"))
            busy.remove(name)
            gate.end()

    return loop


def test_gated_loops_alternate_one_step_at_a_time():
    log: list[tuple[str, str]] = []
    busy: list[str] = []
    overlaps = []
    gates = {name: StepGate() for name in ("a", "b", "c")}
    steppers = {
        name: GatedStepper(gate, _recording_loop(gate, name, 10, log, busy)) for name, gate in gates.items()
    }
    assert log == []  # set up and parked: no step runs before the coordinator asks
    order = ["b", "a", "c", "a", "a", "c", "b", "b", "c"]
    for name in order:
        seconds = steppers[name].step()
        overlaps.append(len(busy))
        assert seconds >= 0.002
    for stepper in steppers.values():
        stepper.close()
        assert not stepper.thread.is_alive()
    assert overlaps == [0] * len(order)
    # exactly the steps asked for, in that order, each finished before the next began
    assert log == [entry for name in order for entry in ((name, "start"), (name, "end"))]
    assert {name: len(gate.times) for name, gate in gates.items()} == {"a": 3, "b": 3, "c": 3}


def test_a_failing_loop_raises_in_the_coordinator():
    gate = StepGate()

    def loop() -> None:
        gate.begin()
        raise ValueError("boom")

    stepper = GatedStepper(gate, loop)
    with pytest.raises(RuntimeError, match="boom"):
        stepper.step()


def test_a_loop_that_runs_out_of_steps_is_reported_not_waited_for():
    gate = StepGate()
    stepper = GatedStepper(gate, _recording_loop(gate, "a", 1, [], []))
    stepper.step()
    with pytest.raises(RuntimeError, match="ended before the measurement"):
        stepper.step()


def test_closing_ends_a_loop_that_had_steps_left():
    gate = StepGate()
    stepper = GatedStepper(gate, _recording_loop(gate, "a", 1000, [], []))
    stepper.step()
    stepper.close()
    assert not stepper.thread.is_alive()
    assert len(gate.times) == 1
