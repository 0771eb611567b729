"""The head table: each head's KD and hard terms against a direct formula, its KD mask and item counts, and
training on the regression and multi-label heads that used to crash or learn nothing."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import VOCAB, make_args, tiny_model
from datasets import Dataset

from hf_kd import DistillationTrainer, infer_head
from hf_kd.heads import HEADS, kd_mask_and_counts


def _pair(num_labels: int, problem_type: str | None = None):
    kw = {"num_labels": num_labels}
    if problem_type:
        kw["problem_type"] = problem_type
    teacher = tiny_model(seed=1, num_layers=3, hidden=48, **kw)
    student = tiny_model(seed=2, num_layers=2, hidden=32, **kw)
    with torch.no_grad():  # a teacher with outputs far from the student's, so the KD term is not ~0
        teacher.classifier.weight.mul_(30.0)
        teacher.classifier.bias.copy_(torch.linspace(-2, 2, num_labels))
    return teacher, student


def _batch(kind: str, B: int = 5, L: int = 8, C: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (B, L), generator=g)
    mask = torch.ones(B, L, dtype=torch.long)
    mask[1 % B, 5:] = 0
    mask[3 % B, 3:] = 0
    batch = {"input_ids": ids.masked_fill(mask == 0, 0), "attention_mask": mask}
    if kind == "regression":
        batch["labels"] = torch.rand(B, generator=g) * 5
    elif kind == "multi_label":
        batch["labels"] = (torch.rand(B, C, generator=g) < 0.4).float()
    return batch


def _binary_kl(s: torch.Tensor, t: torch.Tensor, T: float) -> torch.Tensor:
    """T^2 * KL(Bernoulli(sigmoid(t/T)) || Bernoulli(sigmoid(s/T))) per label, written out in float64."""
    p, q = torch.sigmoid(t.double() / T), torch.sigmoid(s.double() / T)
    return (p * (p / q).log() + (1 - p) * ((1 - p) / (1 - q)).log()) * T**2


def test_infer_head_reads_num_labels_and_problem_type():
    assert infer_head(tiny_model(num_labels=1)).name == "regression"
    assert infer_head(tiny_model(num_labels=3)).name == "sequence"
    assert (
        infer_head(tiny_model(num_labels=4, problem_type="multi_label_classification")).name == "multi_label"
    )
    assert infer_head(tiny_model(num_labels=2, problem_type="regression")).name == "regression"
    assert infer_head(tiny_model("BertForTokenClassification")).name == "token"
    assert infer_head(tiny_model("BertForQuestionAnswering", num_labels=2)).name == "qa"
    assert infer_head(tiny_model("BertForMaskedLM")).name == "mlm"


def test_regression_loss_equals_mse_to_teacher_and_labels(tmp_out):
    teacher, student = _pair(1)
    alpha = 0.3
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=make_args(tmp_out, alpha=alpha))
    batch = _batch("regression")
    loss = trainer.compute_loss(student, dict(batch))
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        t = teacher(**inputs).logits.squeeze(-1).double()
    s = student(**inputs).logits.squeeze(-1).double()
    expected = alpha * ((s - t) ** 2).mean() + (1 - alpha) * ((s - batch["labels"].double()) ** 2).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_regression_kd_ignores_the_temperature(tmp_path):
    teacher, student = _pair(1)
    batch = _batch("regression")
    losses = []
    for T in (1.0, 4.0):
        trainer = DistillationTrainer(
            model=student,
            teacher_model=teacher,
            args=make_args(str(tmp_path / str(T)), alpha=1.0, temperature=T),
        )
        losses.append(trainer.compute_loss(student, dict(batch)).item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-7) and losses[0] > 0


def test_multi_label_loss_equals_binary_kl_and_bce(tmp_out):
    C, T, alpha = 4, 2.0, 0.4
    teacher, student = _pair(C, "multi_label_classification")
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=make_args(tmp_out, alpha=alpha, temperature=T)
    )
    batch = _batch("multi_label", C=C)
    loss = trainer.compute_loss(student, dict(batch))
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        t = teacher(**inputs).logits
    s = student(**inputs).logits
    kd = _binary_kl(s, t, T).mean()  # mean over labels and examples
    bce = F.binary_cross_entropy_with_logits(s.double(), batch["labels"].double())
    assert loss.item() == pytest.approx((alpha * kd + (1 - alpha) * bce).item(), rel=1e-5)


@pytest.mark.parametrize("kind", ["regression", "multi_label"])
def test_alpha_zero_is_the_models_own_loss(kind, tmp_out):
    teacher, student = _pair(1) if kind == "regression" else _pair(4, "multi_label_classification")
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=make_args(tmp_out, alpha=0.0))
    batch = _batch(kind)
    assert trainer.compute_loss(student, dict(batch)).item() == pytest.approx(
        student(**batch).loss.item(), rel=1e-5
    )


def _dataset(kind: str, n: int = 16) -> Dataset:
    rows = {k: [] for k in ("input_ids", "attention_mask", "labels")}
    for i in range(4):
        batch = _batch(kind, B=n // 4, seed=i)
        for k in rows:
            rows[k] += batch[k].tolist()
    return Dataset.from_dict(rows)


@pytest.mark.parametrize("kind", ["regression", "multi_label"])
def test_training_changes_the_student_and_lowers_the_kd_term(kind, tmp_out):
    teacher, student = _pair(1) if kind == "regression" else _pair(4, "multi_label_classification")
    data = _dataset(kind)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=make_args(tmp_out, alpha=1.0, max_steps=30, learning_rate=3e-3),
        train_dataset=data,
        eval_dataset=data,
    )
    start = trainer.evaluate()["eval_loss_kd"]
    trainer.train()
    end = trainer.evaluate()["eval_loss_kd"]
    assert any(not torch.equal(v, before[k]) for k, v in student.state_dict().items())
    assert start > 0 and end < 0.5 * start, (start, end)
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert all(x > 0 for x in losses)  # alpha=1 regression is not the old loss of exactly 0.0


def test_ensemble_of_regressors_teaches_their_weighted_mean(tmp_out):
    teacher_a, student = _pair(1)
    teacher_b, _ = _pair(1)
    with torch.no_grad():
        teacher_b.classifier.bias.add_(3.0)
    trainer = DistillationTrainer(
        model=student,
        teacher_model=[teacher_a, teacher_b],
        teacher_weights=[3.0, 1.0],
        args=make_args(tmp_out, alpha=1.0),
    )
    batch = _batch("regression")
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        target = 0.75 * teacher_a(**inputs).logits + 0.25 * teacher_b(**inputs).logits
    s = student(**inputs).logits
    expected = ((s.double() - target.double()) ** 2).mean()
    assert trainer.compute_loss(student, dict(batch)).item() == pytest.approx(expected.item(), rel=1e-5)


def test_multi_label_teacher_agreement_counts_each_label(tmp_out):
    teacher, student = _pair(4, "multi_label_classification")
    data = _dataset("multi_label", n=8)
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=make_args(tmp_out), eval_dataset=data
    )
    metrics = trainer.evaluate()
    batch = {k: torch.tensor(data[k]) for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        s, t = student(**batch).logits, teacher(**batch).logits
    assert metrics["eval_teacher_agreement"] == pytest.approx(((s > 0) == (t > 0)).double().mean().item())


# ---- one rule for the KD mask and its item count --------------------------------------------------------------


def test_sequence_heads_count_examples_and_labelled_examples():
    batch = {
        "input_ids": torch.ones(3, 4, dtype=torch.long),
        "attention_mask": torch.tensor([[1, 1, 0, 0]] * 3),
    }
    batch["labels"] = torch.tensor([0, -100, 2])
    mask, counts = kd_mask_and_counts(HEADS["sequence"], batch)
    assert mask is None and counts.tolist() == [3, 2, 3, 6]
    batch["labels"] = torch.tensor([0.5, 1.0, 2.0])
    assert kd_mask_and_counts(HEADS["regression"], batch)[1].tolist() == [3, 3, 3, 6]


@pytest.mark.parametrize("kd_positions", ["labelled", "all"])
def test_token_heads_kd_mask_sum_is_the_kd_count(kd_positions):
    attention = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    labels = torch.tensor([[-100, 1, -100, 2], [0, -100, -100, -100]])
    batch = {"input_ids": torch.ones(2, 4, dtype=torch.long), "attention_mask": attention, "labels": labels}
    for head in ("token", "mlm"):
        mask, counts = kd_mask_and_counts(HEADS[head], batch, kd_positions)
        expected = labels.ne(-100) if kd_positions == "labelled" else attention.bool()
        assert torch.equal(mask, expected)
        assert counts.tolist() == [2, 3, int(expected.sum()), 6]


def test_causal_lm_counts_shifted_labels_and_keeps_every_position_for_kd():
    attention = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    labels = torch.tensor([[5, 6, 7, 8], [5, 6, 7, -100]])
    batch = {"input_ids": torch.ones(2, 4, dtype=torch.long), "attention_mask": attention, "labels": labels}
    mask, counts = kd_mask_and_counts(HEADS["causal"], batch)
    assert torch.equal(mask, attention.bool())
    assert counts.tolist() == [2, 5, 7, 7]  # labelled: 3 + 2 next-token targets


def test_qa_counts_one_item_per_example():
    batch = {
        "input_ids": torch.ones(2, 4, dtype=torch.long),
        "attention_mask": torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]]),
        "start_positions": torch.tensor([0, 1]),
        "end_positions": torch.tensor([1, 1]),
    }
    mask, counts = kd_mask_and_counts(HEADS["qa"], batch)
    assert mask is None and counts.tolist() == [2, 2, 2, 5]
