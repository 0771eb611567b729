"""Teacher ensembles: the soft targets are the (weighted) mean of the teachers' softened distributions."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import tiny_classification_dataset, tiny_model

from hf_kd import DistillationConfig, DistillationTrainer
from hf_kd.losses import ensemble_log_probs, soft_target_loss
from hf_kd.validation import DistillationConfigError

T = 2.0


def make_args(out, **kw):
    defaults = dict(
        output_dir=out, per_device_train_batch_size=4, report_to=[], use_cpu=True, save_strategy="no",
        logging_steps=1, learning_rate=1e-3, seed=0, disable_tqdm=True, max_steps=3, temperature=T, alpha=0.5,
        teacher_dtype="float32",  # the expected values are float32 arithmetic
    )  # fmt: skip
    defaults.update(kw)
    return DistillationConfig(**defaults)


def direct_ensemble_kd(student_logits, teacher_logits, weights):
    """T^2 * KL(sum_i w_i softmax(t_i / T) || softmax(s / T)), averaged over examples, written out."""
    w = torch.tensor(weights) / sum(weights)
    p = sum(wi * torch.softmax(t / T, -1) for wi, t in zip(w, teacher_logits))  # (B, C)
    log_q = torch.log_softmax(student_logits / T, -1)
    return (T**2 * (p * (p.log() - log_q)).sum(-1)).mean()


def run(out, teacher_model, teacher_weights=None):
    data = tiny_classification_dataset(n=12)
    trainer = DistillationTrainer(
        tiny_model(num_layers=1, seed=2), make_args(out), train_dataset=data,
        teacher_model=teacher_model, teacher_weights=teacher_weights,
    )  # fmt: skip
    trainer.train()
    history = [(h["loss"], h["loss_kd"]) for h in trainer.state.log_history if "loss_kd" in h]
    return torch.tensor(history), [p.detach().clone() for p in trainer.model.parameters()]


def assert_same(a, b):
    torch.testing.assert_close(a[0], b[0], rtol=1e-5, atol=1e-6)
    for p, q in zip(a[1], b[1]):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_ensemble_loss_on_fixed_tensors_equals_mean_of_probabilities():
    g = torch.Generator().manual_seed(0)
    student, t1, t2 = (torch.randn(5, 4, generator=g) * 3 for _ in range(3))
    for weights in ([1.0, 1.0], [0.25, 0.75], [2.0, 0.0]):
        got = soft_target_loss(
            student, temperature=T, teacher_log_probs=ensemble_log_probs([t1, t2], T, weights)
        )
        torch.testing.assert_close(got, direct_ensemble_kd(student, [t1, t2], weights))
    # averaging distributions is not averaging logits
    by_logits = soft_target_loss(student, (t1 + t2) / 2, T)
    assert not torch.allclose(by_logits, direct_ensemble_kd(student, [t1, t2], [1.0, 1.0]))


def test_trainer_kd_term_with_two_teachers_equals_direct_formula(tmp_out):
    teachers = [tiny_model(num_layers=2, seed=1), tiny_model(num_layers=2, seed=3)]
    student = tiny_model(num_layers=1, seed=2).eval()
    data = tiny_classification_dataset(n=6)
    batch = {k: torch.tensor(data[k]) for k in ("input_ids", "attention_mask", "labels")}
    trainer = DistillationTrainer(
        student,
        make_args(tmp_out, alpha=1.0),
        train_dataset=data,
        teacher_model=teachers,
        teacher_weights=[1.0, 3.0],
    )
    with torch.no_grad():
        loss = trainer.compute_loss(student, batch)
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
        expected = direct_ensemble_kd(
            student(**inputs).logits, [t(**inputs).logits for t in teachers], [1.0, 3.0]
        )
    torch.testing.assert_close(loss.float(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_two_identical_teachers_train_like_one(tmp_out):
    teacher = tiny_model(num_layers=2, seed=1)
    one = run(tmp_out, teacher)
    two = run(tmp_out, [teacher, copy.deepcopy(teacher)])
    assert_same(one, two)
    assert not torch.equal(one[1][0], tiny_model(num_layers=1, seed=2).bert.embeddings.word_embeddings.weight)


@pytest.mark.slow
def test_weight_one_zero_equals_first_teacher_alone(tmp_out):
    first, second = tiny_model(num_layers=2, seed=1), tiny_model(num_layers=2, seed=3)
    alone = run(tmp_out, first)
    assert_same(alone, run(tmp_out, [first, second], teacher_weights=[1.0, 0.0]))
    # the second teacher really differs, so the equality above is not vacuous
    ids = torch.tensor(tiny_classification_dataset(n=4)["input_ids"])
    with torch.no_grad():
        assert not torch.allclose(first(input_ids=ids).logits, second(input_ids=ids).logits)


def test_mismatched_label_spaces_in_ensemble_are_rejected(tmp_out):
    data = tiny_classification_dataset(n=8)
    student = tiny_model(num_layers=1, seed=2)
    good = tiny_model(num_layers=2, seed=1)
    two_labels = tiny_model(num_layers=2, seed=3, num_labels=2)
    with pytest.raises(DistillationConfigError, match="student has 3 labels.*teacher 1 has 2"):
        DistillationTrainer(student, make_args(tmp_out), train_dataset=data, teacher_model=[good, two_labels])
    renamed = tiny_model(num_layers=2, seed=3)
    renamed.config.id2label = {0: "bad", 1: "meh", 2: "good"}
    renamed.config.label2id = {v: k for k, v in renamed.config.id2label.items()}
    with pytest.raises(DistillationConfigError, match="teacher 1 labels"):
        DistillationTrainer(student, make_args(tmp_out), train_dataset=data, teacher_model=[good, renamed])
    with pytest.raises(DistillationConfigError, match="teacher_weights has 1 entries for 2 teachers"):
        DistillationTrainer(
            student, make_args(tmp_out), train_dataset=data, teacher_model=[good, good], teacher_weights=[1.0]
        )


def test_teacher_agreement_follows_ensemble_weights(tmp_out):
    """eval_teacher_agreement compares the student with the weighted ensemble: weights [1, 0] = first teacher."""
    first, second = tiny_model(num_layers=2, seed=1), tiny_model(num_layers=2, seed=3)
    data = tiny_classification_dataset(n=8)
    inputs = {k: torch.tensor(data[k]) for k in ("input_ids", "attention_mask")}
    student = tiny_model(num_layers=1, seed=2).eval()
    with torch.no_grad():
        student_pred = student(**inputs).logits.argmax(-1)
        first_pred = first(**inputs).logits.argmax(-1)
        # make the second teacher certain of the student's class, so that an unweighted mean would agree more
        second.classifier.bias.copy_(torch.nn.functional.one_hot(student_pred[0], 3) * 100.0)
    trainer = DistillationTrainer(
        student, make_args(tmp_out, per_device_eval_batch_size=4), eval_dataset=data,
        teacher_model=[first, second], teacher_weights=[1.0, 0.0],
    )  # fmt: skip
    expected = (student_pred == first_pred).double().mean().item()
    assert trainer.evaluate()["eval_teacher_agreement"] == pytest.approx(expected)
    assert expected < (student_pred == student_pred[0]).double().mean().item()  # the weights matter here


def test_cached_logits_with_an_ensemble_are_rejected(tmp_out):
    from hf_kd import cache_teacher_outputs

    first, second = tiny_model(num_layers=2, seed=1), tiny_model(num_layers=2, seed=3)
    cached = cache_teacher_outputs(first, tiny_classification_dataset(n=8))
    with pytest.raises(DistillationConfigError, match="2 teachers were given and the cache would replace"):
        DistillationTrainer(
            tiny_model(num_layers=1, seed=2),
            make_args(tmp_out),
            train_dataset=cached,
            teacher_model=[first, second],
        )
