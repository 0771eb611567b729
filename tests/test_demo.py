"""The embedded demo: its statistics against hand computation, and its pipeline in quick mode on the real assets
(MiniLM-L6 teacher, BBC News, a labelled draw plus a transfer set, two seeds)."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch


def _per_seed():
    return [
        {
            "seed": 0,
            "labelled": 100,
            "unlabelled": 1458,
            "teacher": 0.96,
            "no_kd": 0.94,
            "kd": 0.95,
            "kd_transfer": 0.96,
        },
        {
            "seed": 1,
            "labelled": 100,
            "unlabelled": 1458,
            "teacher": 0.95,
            "no_kd": 0.93,
            "kd": 0.92,
            "kd_transfer": 0.95,
        },
        {
            "seed": 2,
            "labelled": 100,
            "unlabelled": 1458,
            "teacher": 0.97,
            "no_kd": 0.95,
            "kd": 0.96,
            "kd_transfer": 0.955,
        },
    ]


def test_accuracy_rows_are_means_and_paired_differences_with_standard_errors():
    from hf_kd.demo import FULL, accuracy_rows, format_accuracy_table

    per_seed = _per_seed()
    rows = {r["key"]: r for r in accuracy_rows(per_seed, FULL)}
    assert list(rows) == ["teacher", "no_kd", "kd", "kd_transfer"]
    base = np.array([p["no_kd"] for p in per_seed])
    gap = np.mean([p["teacher"] for p in per_seed]) - base.mean()
    for key in ("teacher", "no_kd", "kd", "kd_transfer"):
        values = np.array([p[key] for p in per_seed])
        assert rows[key]["per_seed"] == list(values)
        assert rows[key]["mean"] == pytest.approx(values.mean())
        assert rows[key]["std"] == pytest.approx(values.std(ddof=1))
        if key in ("kd", "kd_transfer"):
            diff = values - base
            assert rows[key]["diff"] == pytest.approx(diff.mean())
            assert rows[key]["se"] == pytest.approx(diff.std(ddof=1) / math.sqrt(3))
            assert rows[key]["gap_closed"] == pytest.approx(diff.mean() / gap)
        else:
            assert "diff" not in rows[key]
    # Hand figures: transfer diffs 0.02, 0.02, 0.005 -> mean 0.015, s.e. 0.005, gap 0.02 -> 75% closed.
    assert rows["kd_transfer"]["diff"] == pytest.approx(0.015)
    assert rows["kd_transfer"]["se"] == pytest.approx(0.005)
    assert rows["kd_transfer"]["gap_closed"] == pytest.approx(0.75)

    table = format_accuracy_table(list(rows.values()), [0, 1, 2], 445)
    assert (
        "| student (2 layers x 192), distilled + transfer set | 100 labelled + 1,458 unlabelled | 0.9550 +- 0.0050 "
        "| 0.9600, 0.9500, 0.9550 | +0.0150 +- 0.0050, 3.0 s.e. | 75% |" in table
    )
    assert "| student (2 layers x 192), no distillation | 100 labelled | 0.9400 +- 0.0100 |" in table
    assert "3 seeds (0, 1, 2)" in table and "Test split: 445 articles" in table


def test_the_labels_only_row_is_left_out_when_it_was_not_run():
    from hf_kd.demo import FULL, accuracy_rows

    per_seed = [{k: v for k, v in p.items() if k != "kd"} for p in _per_seed()]
    assert [r["key"] for r in accuracy_rows(per_seed, FULL)] == ["teacher", "no_kd", "kd_transfer"]


def _accuracy(model, dataset, tokenizer, batch_size: int) -> float:
    """Test accuracy computed here, outside the demo: dynamic padding, argmax of the logits."""
    from transformers import DataCollatorWithPadding

    collate = DataCollatorWithPadding(tokenizer)
    model.eval()
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(dataset), batch_size):
            rows = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            batch = collate(
                [{k: r[k] for k in ("input_ids", "attention_mask", "token_type_ids")} for r in rows]
            )
            labels = torch.tensor([r["labels"] for r in rows])
            correct += int((model(**batch).logits.argmax(-1) == labels).sum())
    return correct / len(dataset)


@pytest.mark.slow
def test_quick_demo_trains_every_seed_and_writes_both_tables(tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from hf_kd.data import load_bbc_news, tokenize_dataset
    from hf_kd.demo import MODEL_DIRS, QUICK, _subset, run_demo

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

    # Both students started from the same weights, selected from the teacher's layers; each was trained, and
    # differently.
    from hf_kd import make_student

    start = make_student(
        models["teacher"], num_layers=QUICK.student_layers, hidden_size=QUICK.student_hidden_size
    )
    assert models["student_distilled"].config.hidden_size == QUICK.student_hidden_size
    copied = models["student_distilled"].config.hf_kd_teacher_layers
    assert (
        copied == models["student_baseline"].config.hf_kd_teacher_layers == start.config.hf_kd_teacher_layers
    )
    start_q = start.bert.encoder.layer[0].attention.self.query.weight
    distilled_q = models["student_distilled"].bert.encoder.layer[0].attention.self.query.weight
    baseline_q = models["student_baseline"].bert.encoder.layer[0].attention.self.query.weight
    assert start_q.shape == distilled_q.shape == baseline_q.shape
    assert not torch.allclose(start_q, distilled_q)
    assert not torch.allclose(start_q, baseline_q)
    assert not torch.allclose(distilled_q, baseline_q)

    saved = json.loads((out / "demo_results.json").read_text())
    assert saved["data"] == {
        "train": 1558,
        "labelled": QUICK.labelled,
        "unlabelled": QUICK.unlabelled,
        "test": QUICK.test_size,
    }
    per_seed = saved["per_seed"]
    assert [p["seed"] for p in per_seed] == list(range(QUICK.seeds))
    for p in per_seed:
        assert set(p) == {"seed", "labelled", "unlabelled", "teacher", "no_kd", "kd", "kd_transfer"}
        # The quick fine-tune teaches each teacher the task: well above the 0.2 of guessing among 5 classes.
        assert p["teacher"] > 0.4

    # The saved first-seed models score what the demo reports, recomputed here on the same test articles.
    tokenizer = AutoTokenizer.from_pretrained(str(out / "teacher"))
    raw = load_bbc_news(seed=0)
    raw["test"] = _subset(raw["test"], QUICK.test_size, 0)
    test = tokenize_dataset(raw, tokenizer, QUICK.max_length)["test"]
    for key, folder in (
        ("teacher", "teacher"),
        ("kd_transfer", "student_distilled"),
        ("no_kd", "student_baseline"),
    ):
        assert _accuracy(models[folder], test, tokenizer, QUICK.eval_batch_size) == pytest.approx(
            per_seed[0][key]
        ), key

    # The first table's statistics, recomputed from the per-seed accuracies.
    rows = {r["key"]: r for r in saved["accuracy_rows"]}
    for key in ("kd", "kd_transfer"):
        diff = np.array([p[key] - p["no_kd"] for p in per_seed])
        assert rows[key]["diff"] == pytest.approx(diff.mean())
        assert rows[key]["se"] == pytest.approx(diff.std(ddof=1) / math.sqrt(len(diff)))
    assert saved["transfer_minus_baseline"] == {
        "mean": rows["kd_transfer"]["diff"],
        "se": rows["kd_transfer"]["se"],
    }

    # The second table: the first seed's models.
    size_rows = saved["rows"]
    assert [r["layers"] for r in size_rows] == [6, QUICK.student_layers, QUICK.student_layers]
    assert [r["test_accuracy"] for r in size_rows] == [
        per_seed[0][k] for k in ("teacher", "kd_transfer", "no_kd")
    ]
    for row in size_rows:
        assert row["test_examples"] == QUICK.test_size
        assert row["teacher_accuracy_kept"] == pytest.approx(
            row["test_accuracy"] / size_rows[0]["test_accuracy"]
        )
        assert row["parameters"] == sum(p.numel() for p in models[_key(row["model"])].parameters())
    assert size_rows[1]["parameters"] < size_rows[0]["parameters"]
    assert results["rows"] == size_rows and results["per_seed"] == per_seed

    text = (out / "demo_results.md").read_text()
    for row in saved["accuracy_rows"]:
        assert row["model"] in text and f"{row['mean']:.4f} +- {row['std']:.4f}" in text
    for row in size_rows:
        assert row["model"] in text and f"{row['test_accuracy']:.4f}" in text

    card_dir = out / MODEL_DIRS["student_distilled"]
    card = (card_dir / "README.md").read_text()
    assert f"- Transfer set: {QUICK.unlabelled} unlabelled examples labelled by the teacher" in card
    assert any(name.endswith(".png") for name in os.listdir(card_dir))  # the loss plot
    recipe = json.loads((card_dir / "hf_kd_card.json").read_text())["recipe"]
    assert recipe["uses_cached_teacher_outputs"] and recipe["unlabeled_examples"] == QUICK.unlabelled


def _key(name: str) -> str:
    if name.startswith("teacher"):
        return "teacher"
    return "student_distilled" if "distilled" in name else "student_baseline"
