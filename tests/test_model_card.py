"""The distillation model card: every value of the teacher-versus-student table checked against the run itself."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
import torch
from conftest import tiny_classification_dataset, tiny_model
from torch import nn

pytestmark = pytest.mark.slow


def accuracy(eval_pred):
    logits, labels = eval_pred
    return {"accuracy": float((np.argmax(logits, -1) == labels).mean())}


def finished_run(output_dir: str, **config_kw):
    """A tiny logits + hidden-state distillation, 2 layers x 32 from 4 layers x 48 (hidden sizes differ, so a
    projection is learned), trained for 6 steps and saved."""
    from hf_kd import DistillationConfig, DistillationTrainer

    teacher = tiny_model(seed=1, num_layers=4, hidden=48)
    teacher.config._name_or_path = "hf-kd-tests/tiny-bert-teacher"
    student = tiny_model(seed=2, num_layers=2, hidden=32)
    student.config._name_or_path = "hf-kd-tests/tiny-bert-student-init"
    args = DistillationConfig(
        output_dir=output_dir,
        max_steps=6,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=8,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        temperature=3.0,
        alpha=0.7,
        hidden_weight=0.5,
        layer_map={1: 2, 2: 4},
        seed=0,
        **config_kw,
    )
    trainer = DistillationTrainer(
        model=student,
        args=args,
        teacher_model=teacher,
        train_dataset=tiny_classification_dataset(24, seed=0),
        eval_dataset=tiny_classification_dataset(16, seed=1),
        compute_metrics=accuracy,
    )
    trainer.train()
    trainer.save_model()
    return trainer, student, teacher


def table_row(readme: str, label: str) -> list[str]:
    """Cells of the table row whose first cell is `label`."""
    for line in readme.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == label:
            return cells[1:]
    raise AssertionError(f"no table row {label!r} in the card:\n{readme}")


def reference_accuracy(model: nn.Module, dataset) -> float:
    model.eval()
    with torch.no_grad():
        logits = model(
            input_ids=torch.tensor(dataset["input_ids"]),
            attention_mask=torch.tensor(dataset["attention_mask"]),
        ).logits
    return float((logits.argmax(-1) == torch.tensor(dataset["labels"])).float().mean())


@pytest.fixture(scope="module")
def card_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("card") / "student")
    trainer, student, teacher = finished_run(out)
    evaluated = trainer.evaluate()
    card = trainer.create_model_card(
        dataset="hf-kd-tests/tiny-random",
        license="apache-2.0",
        latency_batch_sizes=(1, 4),
        latency_seq_len=16,
    )
    with open(os.path.join(out, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    with open(os.path.join(out, "hf_kd_card.json"), encoding="utf-8") as f:
        context = json.load(f)
    return {
        "out": out,
        "trainer": trainer,
        "student": student,
        "teacher": teacher,
        "evaluated": evaluated,
        "card": card,
        "readme": readme,
        "context": context,
        "tmp": tmp_path_factory,
    }


def test_parameter_counts_are_independent_sums_without_projections(card_run):
    student, teacher, readme = card_run["student"], card_run["teacher"], card_run["readme"]
    assert hasattr(student, "hf_kd_projections")  # the projection exists during training...
    s_total = sum(p.numel() for n, p in student.named_parameters() if not n.startswith("hf_kd_projections"))
    t_total = sum(p.numel() for p in teacher.parameters())
    assert table_row(readme, "Parameters") == [f"{t_total:,}", f"{s_total:,}", f"{s_total / t_total:.1%}"]

    def non_embedding(model):
        emb = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Embedding))
        return (
            sum(p.numel() for n, p in model.named_parameters() if not n.startswith("hf_kd_projections")) - emb
        )

    t_ne, s_ne = non_embedding(teacher), non_embedding(student)
    assert table_row(readme, "Parameters without embeddings") == [
        f"{t_ne:,}",
        f"{s_ne:,}",
        f"{s_ne / t_ne:.1%}",
    ]
    assert hasattr(student, "hf_kd_projections")  # ...and is back after measuring


def test_sizes_are_the_saved_weight_files(card_run):
    out, teacher = card_run["out"], card_run["teacher"]
    s_size = os.path.getsize(os.path.join(out, "model.safetensors"))
    teacher_dir = str(card_run["tmp"].mktemp("teacher_saved"))
    teacher.save_pretrained(teacher_dir)
    t_size = os.path.getsize(os.path.join(teacher_dir, "model.safetensors"))
    assert table_row(card_run["readme"], "Size of the weights") == [
        f"{t_size / 1e6:.2f} MB ({t_size:,} bytes)",
        f"{s_size / 1e6:.2f} MB ({s_size:,} bytes)",
        f"{s_size / t_size:.1%}",
    ]


def test_latency_rows_state_shape_and_use_the_run_measurements(card_run):
    measurements = card_run["context"]["measurements"]
    for bs in (1, 4):
        t = measurements["teacher"]["latency_ms"][str(bs)]
        s = measurements["student"]["latency_ms"][str(bs)]
        assert t > 0 and s > 0
        row = table_row(card_run["readme"], f"Latency on cpu, batch size {bs}, sequence length 16 (median)")
        assert row == [f"{t:.2f} ms", f"{s:.2f} ms", f"{s / t:.1%}"]


def test_metrics_match_evaluate_and_share_kept_is_student_over_teacher(card_run):
    trainer, teacher = card_run["trainer"], card_run["teacher"]
    student_acc = card_run["evaluated"]["eval_accuracy"]
    teacher_acc = reference_accuracy(teacher, trainer.eval_dataset)
    share = f"{student_acc / teacher_acc:.1%}" if teacher_acc else "n/a"
    assert table_row(card_run["readme"], "accuracy (eval)") == [
        f"{teacher_acc:.4f}",
        f"{student_acc:.4f}",
        share,
    ]
    # The student-only figures come from the same evaluation.
    assert table_row(card_run["readme"], "teacher_agreement") == [
        f"{card_run['evaluated']['eval_teacher_agreement']:.4f}"
    ]
    result = card_run["card"].data.eval_results[0]
    assert (result.metric_type, result.metric_value) == ("accuracy", student_acc)


def test_metadata_names_teacher_base_model_and_tags(card_run):
    data = card_run["card"].data
    assert data.teacher_model == "hf-kd-tests/tiny-bert-teacher"
    assert data.base_model == "hf-kd-tests/tiny-bert-student-init"
    assert data.library_name == "transformers" and data.pipeline_tag == "text-classification"
    assert data.license == "apache-2.0" and data.datasets == ["hf-kd-tests/tiny-random"]
    assert {"distillation", "hf-kd"} <= set(data.tags)
    assert "**hf-kd-tests/tiny-bert-teacher**" in card_run["readme"]


def test_recipe_states_temperature_alpha_layer_map_and_projection(card_run):
    readme, trainer = card_run["readme"], card_run["trainer"]
    assert "- Temperature T: 3.0" in readme and "- Alpha: 0.7" in readme
    assert "  - hidden: weight 0.5 (mse)" in readme
    for pair in trainer.layer_pairs:
        assert table_row(readme, str(pair.student_layer)) == [
            str(pair.teacher_layer),
            "hidden",
            "32",
            "48",
            "learned linear 32 -> 48",
        ]
    assert table_row(readme, "learning_rate") == ["0.001"]
    assert table_row(readme, "global_steps_trained") == ["6"]
    assert 'AutoModelForSequenceClassification.from_pretrained("' in readme


def test_plot_holds_each_logged_loss_component(card_run):
    out, readme = card_run["out"], card_run["readme"]
    with open(os.path.join(out, "distillation_curves.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert "![Loss components during distillation](distillation_curves.png)" in readme
    train_logs = [e for e in card_run["trainer"].state.log_history if "loss_kd" in e]
    curves = card_run["context"]["curves"]["train"]
    assert set(curves) == {"loss", "loss_kd", "loss_ce", "loss_hidden"}
    assert curves["loss_hidden"]["value"] == [e["loss_hidden"] for e in train_logs]
    assert curves["loss_kd"]["step"] == [e["step"] for e in train_logs]


def test_card_renders_again_from_its_json_context(card_run, tmp_path):
    from hf_kd.model_card import load_card_context, render_card_from_context

    again = render_card_from_context(load_card_context(card_run["out"]), tmp_path)
    assert str(again) == str(card_run["card"])
    assert re.search(
        r'from_pretrained\("hf-kd-tests/renamed"\)',
        str(
            render_card_from_context(
                load_card_context(card_run["out"]), tmp_path, repo_id="hf-kd-tests/renamed"
            )
        ),
    )


def test_template_is_found_inside_the_package():
    from pathlib import Path

    import hf_kd
    from hf_kd.model_card import template_path

    # hf_kd/model_cards is where the installed package carries the top-level model_cards/ folder.
    packaged = Path(hf_kd.__file__).resolve().parent / "model_cards" / "distilled_student.md"
    assert packaged.is_file()
    assert template_path() == packaged


def test_given_metrics_are_used_as_is_and_share_kept_is_their_ratio(card_run, tmp_path):
    from hf_kd import create_distillation_model_card

    card = create_distillation_model_card(
        card_run["trainer"],
        tmp_path,
        teacher_metrics={"eval_accuracy": 0.8, "eval_runtime": 1.0},
        student_metrics={"eval_accuracy": 0.6, "eval_loss": 0.3},
        measure=False,
    )
    text = str(card)
    assert table_row(text, "accuracy (eval)") == ["0.8000", "0.6000", "75.0%"]
    assert table_row(text, "loss") == ["0.3000"]  # the distillation loss is the student's alone, not compared
    assert "runtime" not in text and "| Parameters |" not in text
    assert [(r.metric_type, r.metric_value) for r in card.data.eval_results] == [("accuracy", 0.6)]


def test_test_split_metrics_are_labelled_test_in_table_and_metadata(card_run, tmp_path):
    from hf_kd import create_distillation_model_card

    card = create_distillation_model_card(
        card_run["trainer"],
        tmp_path,
        teacher_metrics={"test_accuracy": 0.9},
        student_metrics={"test_accuracy": 0.85},
        measure=False,
    )
    assert table_row(str(card), "accuracy (test)") == ["0.9000", "0.8500", "94.4%"]
    assert [r.dataset_split for r in card.data.eval_results] == ["test"]


def test_a_cached_run_with_a_transfer_set_names_and_measures_the_teacher_it_is_given(tmp_path):
    """A run on cached teacher logits holds no teacher: `teacher_model=` gives the card one to name, measure and
    evaluate, and the recipe states the transfer set."""
    from hf_kd import (
        DistillationConfig,
        DistillationTrainer,
        cache_teacher_outputs,
        create_distillation_model_card,
    )

    teacher = tiny_model(seed=1, num_layers=4, hidden=48)
    teacher.config._name_or_path = "hf-kd-tests/tiny-bert-teacher"
    student = tiny_model(seed=2, num_layers=2, hidden=32)
    unlabelled = tiny_classification_dataset(20, seed=3).remove_columns("labels")
    trainer = DistillationTrainer(
        model=student,
        args=DistillationConfig(
            output_dir=str(tmp_path / "run"),
            max_steps=2,
            per_device_train_batch_size=4,
            per_device_eval_batch_size=8,
            report_to="none",
            use_cpu=True,
            unlabeled_ratio=2.0,
        ),
        train_dataset=cache_teacher_outputs(teacher, tiny_classification_dataset(12, seed=0)),
        unlabeled_dataset=cache_teacher_outputs(teacher, unlabelled),
        eval_dataset=cache_teacher_outputs(teacher, tiny_classification_dataset(16, seed=1)),
        compute_metrics=accuracy,
    )
    trainer.train()
    assert trainer.teacher is None
    out = tmp_path / "card"
    text = str(
        create_distillation_model_card(
            trainer, out, teacher_model=teacher, latency_batch_sizes=(1,), latency_seq_len=16
        )
    )
    t_total = sum(p.numel() for p in teacher.parameters())
    s_total = sum(p.numel() for p in student.parameters())
    assert table_row(text, "Parameters") == [f"{t_total:,}", f"{s_total:,}", f"{s_total / t_total:.1%}"]
    teacher_acc = reference_accuracy(teacher, trainer.eval_dataset)
    assert table_row(text, "accuracy (eval)")[0] == f"{teacher_acc:.4f}"
    assert "distilled from **hf-kd-tests/tiny-bert-teacher**" in text
    assert "- Teacher logits were precomputed once and cached" in text
    assert (
        "- Transfer set: 20 unlabelled examples labelled by the teacher; they take the distillation term only "
        "(2.0 per labelled example in each batch)." in text
    )
    # Without the teacher the card has no teacher column to fill.
    bare = str(create_distillation_model_card(trainer, tmp_path / "bare", measure=False))
    assert "| Parameters |" not in bare and "accuracy (eval)" in bare


def test_teacher_model_is_refused_when_the_run_has_its_own_teacher(card_run, tmp_path):
    from hf_kd import create_distillation_model_card

    with pytest.raises(ValueError, match="this trainer has its own teacher"):
        create_distillation_model_card(
            card_run["trainer"], tmp_path, teacher_model=tiny_model(seed=5), measure=False
        )
