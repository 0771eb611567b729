"""The trainer logs the same loss components, per head and teacher-target kind, as before the objective moved out
of it (values pinned in tests/data/objective_golden.json by tests/golden_cases.py)."""

from __future__ import annotations

import json

import pytest
from golden_cases import CASES, GOLDEN, run_case

with open(GOLDEN) as f:
    EXPECTED = json.load(f)


@pytest.mark.parametrize("name", sorted(CASES))
def test_logged_components_equal_the_pinned_values(name):
    got = run_case(name)
    assert set(got) == set(EXPECTED[name])
    for key, value in EXPECTED[name].items():
        assert got[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
