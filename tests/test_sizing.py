"""hf-kd size: candidate students measured on this machine, and the largest one under a latency budget."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from hf_kd.cli import main
from hf_kd.sizing import Candidate, candidate_grid, measure_candidates, pick_candidate


def _teacher() -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=120,
        hidden_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,  # head size 16
        intermediate_size=128,
        max_position_embeddings=64,
        num_labels=3,
    )
    return BertForSequenceClassification(config).eval()


def _largest_within(rows: list[dict], budget: float) -> tuple[int, int] | None:
    """Independent reference: the most parameters among rows within the budget (ties: the faster)."""
    fitting = [r for r in rows if r["latency_ms"] <= budget]
    if not fitting:
        return None
    best = sorted(fitting, key=lambda r: (-r["parameters"], r["latency_ms"]))[0]
    return best["layers"], best["hidden_size"]


def test_grid_is_layers_times_head_size_multiples():
    grid = candidate_grid(_teacher().config)
    # 64 x (1, 3/4, 2/3, 1/2, 1/3, 1/4) rounded down to multiples of 16: 64, 48, 32, 32, 16, 16
    assert grid == [(d, w) for d in (3, 2, 1) for w in (64, 48, 32, 16)]
    with pytest.raises(ValueError, match=r"widths \[40\].*multiple of the teacher's head size 16"):
        candidate_grid(_teacher().config, widths=[40])


def test_pick_is_the_largest_candidate_under_a_budget_from_the_measured_table():
    candidates = measure_candidates(
        _teacher(), candidate_grid(_teacher().config), seq_len=16, warmup=1, runs=3
    )
    rows = [c.to_dict() for c in candidates]
    assert all(len(c.times_ms) == 3 and c.latency_ms == sorted(c.times_ms)[1] for c in candidates)
    assert all(c.throughput == pytest.approx(1000.0 / c.latency_ms) for c in candidates)
    for budget in sorted(c.latency_ms for c in candidates):  # every measured latency as a budget
        pick = pick_candidate(candidates, budget)
        assert (pick.layers, pick.hidden_size) == _largest_within(rows, budget)
    assert pick_candidate(candidates, min(c.latency_ms for c in candidates) / 2) is None


def test_candidates_report_the_students_parameters_and_heads():
    (candidate,) = measure_candidates(_teacher(), [(2, 32)], seq_len=8, warmup=0, runs=1)
    assert (candidate.num_attention_heads, candidate.intermediate_size) == (2, 64)
    # embeddings (120 + 64 + 2) x 32 + LN 64, 2 layers of (4 x 32 x 32 + 4 x 32 + 2 x 32 x 64 + 64 + 32 + 4 x 32),
    # pooler 32 x 32 + 32, classifier 3 x 32 + 3
    layer = 4 * 32 * 32 + 4 * 32 + 2 * 32 * 64 + 64 + 32 + 4 * 32
    assert candidate.parameters == 186 * 32 + 64 + 2 * layer + 32 * 32 + 32 + 3 * 32 + 3


def test_ties_go_to_the_faster_candidate():
    a = Candidate(2, 32, 2, 64, parameters=100, latency_ms=3.0)
    b = Candidate(3, 16, 1, 32, parameters=100, latency_ms=2.0)
    assert pick_candidate([a, b], 5.0) is b


def test_size_command_prints_the_table_and_flags_and_its_pick_follows_its_own_table(tmp_path, capsys):
    folder = tmp_path / "teacher"
    _teacher().save_pretrained(folder)
    out = tmp_path / "size.json"
    common = [
        "size",
        "--teacher",
        str(folder),
        "--seq-len",
        "16",
        "--runs",
        "3",
        "--warmup",
        "1",
        "--layers",
        "1",
        "2",
    ]
    assert main(common + ["--latency-ms", "1e9", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert (result["pick"]["layers"], result["pick"]["hidden_size"]) == (
        2,
        64,
    )  # everything fits: the largest
    assert "--student_layers 2 --student_hidden_size 64" in printed and "| Layers | Hidden |" in printed
    # a budget from that table: the pick of the new run must follow the new run's own measurements
    budget = sorted(c["latency_ms"] for c in result["candidates"])[len(result["candidates"]) // 2]
    assert main(common + ["--latency-ms", str(budget), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    expected = _largest_within(result["candidates"], budget)
    got = (result["pick"]["layers"], result["pick"]["hidden_size"]) if result["pick"] else None
    assert got == expected
    assert main(common + ["--latency-ms", "1e-9", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["pick"] is None and "No candidate fits" in capsys.readouterr().out


def test_onnx_int8_runtime_measures_the_quantized_files():
    pytest.importorskip("onnxruntime")
    float_, int8 = (
        measure_candidates(_teacher(), [(2, 64)], seq_len=8, warmup=0, runs=1, runtime=r)[0]
        for r in ("onnx", "onnx-int8")
    )
    assert int8.size_bytes < float_.size_bytes and int8.parameters == float_.parameters
