"""What the distillation card headlines: test scores labelled test, and the speed-up at its least favourable batch
size, with that batch size named."""

from __future__ import annotations

from hf_kd.model_card import metrics_split, render_card_from_context, split_metrics


def test_test_scores_win_over_validation_scores_and_are_labelled_test():
    metrics = {"eval_accuracy": 0.5, "test_accuracy": 0.7, "test_loss": 1.0, "eval_loss": 2.0}
    comparable, student_only = split_metrics(metrics)
    assert comparable == {"accuracy": 0.7} and student_only == {"loss": 1.0}
    assert metrics_split(metrics) == "test"
    assert metrics_split({"eval_accuracy": 0.5}) == "eval"


def _context(teacher_ms: dict[int, float], student_ms: dict[int, float]) -> dict:
    def measured(latency):
        return {
            "num_parameters": 100,
            "num_non_embedding_parameters": 80,
            "latency_ms": latency,
            "threads": 2,
        }

    return {
        "model_name": "student",
        "repo_id": "me/student",
        "teacher_name": "teacher",
        "recipe": {
            "task": "sequence",
            "temperature": 2.0,
            "alpha": 0.5,
            "alpha_schedule": "constant",
            "temperature_schedule": "constant",
        },
        "measurements": {"teacher": measured(teacher_ms), "student": measured(student_ms)},
        "latency_batch_sizes": sorted(teacher_ms),
        "latency_seq_len": 128,
        "teacher_metrics": {"test_accuracy": 0.9},
        "student_metrics": {"test_accuracy": 0.8},
    }


def test_the_headline_speed_up_is_the_smallest_with_its_batch_size(tmp_path):
    # 2x faster at batch size 1, 4x at batch size 32: the card's summary says 2.0x at batch size 1.
    card = str(render_card_from_context(_context({1: 10.0, 32: 80.0}, {1: 5.0, 32: 20.0}), tmp_path))
    assert "runs 2.0x faster on CPU at batch size 1" in card
    assert "4.0x" not in card
    # Both batch sizes stay in the table, each named; the note says how latency was measured.
    assert "batch size 1, sequence length 128 (median)" in card
    assert "batch size 32, sequence length 128 (median)" in card
    assert "median of 10 timed forward passes" in card
    assert "| accuracy (test) |" in card
