"""The embedded demo's pipeline, in quick mode, on the real assets (MiniLM-L6 teacher, BBC News)."""

from __future__ import annotations

import json
import os

import pytest
import torch


@pytest.mark.slow
def test_quick_demo_trains_three_models_and_writes_the_table(tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from hf_kd.demo import MODEL_DIRS, QUICK, run_demo

    out = tmp_path / "demo"
    results = run_demo(str(out), quick=True, seed=0)

    models = {}
    for key, folder in MODEL_DIRS.items():
        path = out / folder
        model, info = AutoModelForSequenceClassification.from_pretrained(str(path), output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"], (key, info)
        assert (
            AutoTokenizer.from_pretrained(str(path))("a test").input_ids[0] == 101
        )  # [CLS]: the teacher's vocab
        models[key] = model
    assert models["teacher"].config.num_hidden_layers == 6
    assert models["student_distilled"].config.num_hidden_layers == QUICK.student_layers
    assert models["student_baseline"].config.num_hidden_layers == QUICK.student_layers
    assert models["teacher"].config.id2label == {
        0: "business",
        1: "entertainment",
        2: "politics",
        3: "sport",
        4: "tech",
    }

    # Both students started from the same copy of teacher layers; each was trained, and differently.
    copied = models["student_distilled"].config.hf_kd_teacher_layers
    assert copied == models["student_baseline"].config.hf_kd_teacher_layers
    teacher_q = models["teacher"].bert.encoder.layer[copied[0] - 1].attention.self.query.weight
    distilled_q = models["student_distilled"].bert.encoder.layer[0].attention.self.query.weight
    baseline_q = models["student_baseline"].bert.encoder.layer[0].attention.self.query.weight
    assert not torch.allclose(teacher_q, distilled_q)
    assert not torch.allclose(teacher_q, baseline_q)
    assert not torch.allclose(distilled_q, baseline_q)

    # The quick fine-tune teaches the teacher the task: well above the 0.2 of guessing among 5 classes.
    saved = json.loads((out / "demo_results.json").read_text())
    rows = saved["rows"]
    assert [r["layers"] for r in rows] == [6, QUICK.student_layers, QUICK.student_layers]
    assert rows[0]["test_accuracy"] > 0.4
    assert rows[0]["test_examples"] == QUICK.test_size
    for row in rows:
        assert row["teacher_accuracy_kept"] == pytest.approx(row["test_accuracy"] / rows[0]["test_accuracy"])
        assert row["parameters"] == sum(p.numel() for p in models[_key(row["model"])].parameters())
    assert rows[1]["parameters"] < rows[0]["parameters"]
    assert saved["distilled_minus_baseline_accuracy"] == pytest.approx(
        rows[1]["test_accuracy"] - rows[2]["test_accuracy"]
    )
    assert results["rows"] == rows

    table = (out / "demo_results.md").read_text()
    for row in rows:
        assert row["model"] in table and f"{row['test_accuracy']:.4f}" in table

    import importlib.util

    if importlib.util.find_spec("hf_kd.model_card") is not None:
        card_dir = out / MODEL_DIRS["student_distilled"]
        assert (card_dir / "README.md").is_file()
        assert any(name.endswith(".png") for name in os.listdir(card_dir))  # the loss plot


def _key(name: str) -> str:
    if name.startswith("teacher"):
        return "teacher"
    return "student_distilled" if "distilled" in name else "student_baseline"
