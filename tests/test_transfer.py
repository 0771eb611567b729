"""Transfer sets: unlabelled rows join each batch and take the KD term only; counts stay exact under gradient
accumulation and on two processes."""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import make_args, tiny_classification_dataset, tiny_model
from test_distributed import _check_matches_reference, _free_port, _launch, _load_worker, _read

from hf_kd import DistillationTrainer
from hf_kd.transfer import UNLABELED_KEY, TransferSetDataset
from hf_kd.validation import DistillationConfigError


def _models(**kw):
    teacher = tiny_model(seed=1, num_layers=3, hidden=48, **kw)
    with torch.no_grad():
        teacher.classifier.weight.mul_(30.0)
    return teacher, tiny_model(seed=2, num_layers=2, hidden=32, **kw)


def _kl_rows(s, t, T):
    log_s, log_t = F.log_softmax(s.double() / T, -1), F.log_softmax(t.double() / T, -1)
    return (log_t.exp() * (log_t - log_s)).sum(-1) * T**2


def test_unlabelled_rows_take_the_kd_term_only(tmp_out):
    teacher, student = _models()
    T, alpha = 2.0, 0.3
    labelled, unlabelled = tiny_classification_dataset(6, seed=0), tiny_classification_dataset(12, seed=1)
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=make_args(
            tmp_out, temperature=T, alpha=alpha, per_device_train_batch_size=3, unlabeled_ratio=2.0
        ),
        train_dataset=labelled,
        unlabeled_dataset=unlabelled,
    )
    batch = next(iter(trainer.get_train_dataloader()))
    flags = batch[UNLABELED_KEY]
    assert (
        flags.tolist().count(False) == 3 and flags.tolist().count(True) == 6
    )  # 3 labelled + 2 x 3 unlabelled
    assert (batch["labels"][flags] == -100).all() and (batch["labels"][~flags] >= 0).all()
    loss = trainer.compute_loss(student, dict(batch))

    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        t = teacher(**inputs).logits
    s = student(**inputs).logits
    kd = _kl_rows(s, t, T)  # (9,)
    ce = F.cross_entropy(s[~flags].double(), batch["labels"][~flags], reduction="sum")
    n_all, n_labelled = len(flags), int((~flags).sum())
    expected = (alpha * kd[~flags].sum() + kd[flags].sum()) / n_all + (1 - alpha) * ce / n_labelled
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_an_epoch_sees_every_unlabelled_row_once_and_labelled_rows_cycle():
    bundles = TransferSetDataset(list(range(4)), [{"u": i} for i in range(10)], ratio=2.0, seed=0)
    assert len(bundles) == 5  # ceil(10 / 2): the larger set sets the epoch
    seen = [i for b in range(len(bundles)) for i in bundles.unlabeled_indices(b)]
    assert sorted(seen) == list(range(10))
    bundles = TransferSetDataset(list(range(8)), [{"u": i} for i in range(3)], ratio=0.5, seed=0)
    assert len(bundles) == 8 and sum(len(bundles.unlabeled_indices(b)) for b in range(8)) == 4


def _run(out: str, per_device: int, accum: int, kind: str = "sequence"):
    kw = {"num_labels": 1} if kind == "regression" else {}
    teacher, student = _models(**kw)
    labelled, unlabelled = tiny_classification_dataset(8, seed=0), tiny_classification_dataset(8, seed=1)
    if kind == "regression":
        labelled = labelled.map(lambda r: {"labels": float(r["labels"]) / 2})
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=make_args(
            out,
            per_device_train_batch_size=per_device,
            gradient_accumulation_steps=accum,
            max_steps=3,
            lr_scheduler_type="constant",
            alpha=0.5,
            hidden_weight=1.0,
        ),
        train_dataset=labelled,
        unlabeled_dataset=unlabelled,
    )
    trainer.train()
    return {k: v.detach().clone() for k, v in student.named_parameters()}, trainer


@pytest.mark.parametrize("kind", ["sequence", "regression"])
def test_accumulation_two_equals_a_batch_twice_as_large(kind, tmp_path):
    big, trainer = _run(str(tmp_path / "big"), 8, 1, kind)
    small, _ = _run(str(tmp_path / "small"), 4, 2, kind)
    for name, value in big.items():
        torch.testing.assert_close(small[name], value, rtol=1e-4, atol=1e-6, msg=name)
    assert trainer.distillation_summary()["unlabeled_examples"] == 8


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_equal_one_process_with_a_transfer_set(tmp_path):
    single = str(tmp_path / "single")
    _load_worker().run(single, per_device=8, accum=1, transfer=True)
    out = str(tmp_path / "torchrun")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    launcher += ["--master_addr", "127.0.0.1", "--master_port", str(_free_port())]
    _launch(launcher, out, 4, 1, "--transfer")
    _check_matches_reference(out, _read(single, 0))


def test_transfer_sets_for_heads_that_cannot_use_them_are_refused(tmp_out):
    teacher, student = _models()
    from conftest import tiny_bert_config
    from transformers import BertForQuestionAnswering

    qa = BertForQuestionAnswering(tiny_bert_config(num_labels=2))
    with pytest.raises(DistillationConfigError, match="transfer sets work with"):
        DistillationTrainer(
            model=qa,
            teacher_model=BertForQuestionAnswering(tiny_bert_config(num_labels=2, num_layers=3)),
            args=make_args(tmp_out),
            train_dataset=tiny_classification_dataset(4).rename_column("labels", "start_positions"),
            unlabeled_dataset=tiny_classification_dataset(4),
        )


def test_cached_teacher_outputs_on_both_sets_equal_the_live_teacher(tmp_path):
    from hf_kd import cache_teacher_outputs

    teacher, _ = _models()
    labelled, unlabelled = tiny_classification_dataset(6, seed=0), tiny_classification_dataset(6, seed=1)
    runs = {}
    for name in ("live", "cached"):
        _, student = _models()
        cached = name == "cached"
        trainer = DistillationTrainer(
            model=student,
            teacher_model=None if cached else teacher,
            args=make_args(str(tmp_path / name), per_device_train_batch_size=6, max_steps=2),
            train_dataset=cache_teacher_outputs(teacher, labelled) if cached else labelled,
            unlabeled_dataset=cache_teacher_outputs(teacher, unlabelled) if cached else unlabelled,
        )
        trainer.train()
        runs[name] = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert runs["cached"] == pytest.approx(runs["live"], rel=1e-5)


def test_a_transfer_set_prepared_unlike_the_training_data_is_named(tmp_out):
    from hf_kd import cache_teacher_outputs

    teacher, student = _models()
    with pytest.raises(DistillationConfigError, match="train_dataset has cached teacher outputs but unlabeled"):
        DistillationTrainer(
            model=student,
            args=make_args(tmp_out),
            train_dataset=cache_teacher_outputs(teacher, tiny_classification_dataset(4)),
            unlabeled_dataset=tiny_classification_dataset(4, seed=1),
        )
