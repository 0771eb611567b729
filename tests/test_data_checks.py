"""Bad data is caught when the trainer is built, before step 1, in the training data and in every eval dataset alike:
labels outside the head's range, rows longer than a position table, token ids outside a vocabulary (read from Arrow,
or from a sample of the rows of a list or torch Dataset), and an eval set that no teacher can score."""

from __future__ import annotations

import pytest
import torch
from conftest import VOCAB, make_args, tiny_classification_dataset, tiny_model

from hf_kd import DistillationConfigError, DistillationTrainer
from hf_kd.validation import check_setup

MAX_POSITIONS = 64  # tiny_bert_config's max_position_embeddings


def with_label(dataset, row: int, value):
    labels = list(dataset["labels"])
    labels[row] = value
    return dataset.remove_columns("labels").add_column("labels", labels)


def build(tmp_out, train, eval_dataset=None, teacher=True, model_cls="BertForSequenceClassification", **kw):
    return DistillationTrainer(
        model=tiny_model(model_cls, seed=0),
        args=make_args(tmp_out, max_steps=2, **kw),
        teacher_model=tiny_model(model_cls, seed=1) if teacher else None,
        train_dataset=train,
        eval_dataset=eval_dataset,
    )


def setup_checks(train, eval_dataset, teachers=None, task="sequence", student=None):
    """check_setup as the trainer calls it, with the eval data passed in."""
    student = student or tiny_model(seed=0)
    teachers = [tiny_model(seed=1)] if teachers is None else teachers
    check_setup(student, teachers, make_args("unused"), train, task, eval_dataset=eval_dataset)


# ---- labels ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [7, 3])
def test_a_label_past_the_classes_is_an_error_at_construction_naming_column_value_and_row(tmp_out, value):
    train = with_label(tiny_classification_dataset(16), 5, value)
    with pytest.raises(
        DistillationConfigError,
        match=rf"the training data holds label {value} in column 'labels' at row 5, but the student's sequence head "
        r"has 3 classes \['neg', 'neu', 'pos'\] \(ids 0..2",
    ):
        build(tmp_out, train)


def test_minus_one_is_not_the_ignore_index(tmp_out):
    train = with_label(tiny_classification_dataset(16), 2, -1)
    with pytest.raises(
        DistillationConfigError,
        match=r"label -1 in column 'labels' at row 2.*-1 is not the ignore index.*-100",
    ):
        build(tmp_out, train)


def test_minus_100_and_every_valid_class_pass(tmp_out):
    train = with_label(tiny_classification_dataset(16), 3, -100)
    assert set(train["labels"]) <= {-100, 0, 1, 2}
    build(tmp_out, train)  # no error


def test_a_label_column_named_label_is_checked_too(tmp_out):
    train = tiny_classification_dataset(8).rename_column("labels", "label")
    labels = list(train["label"])
    labels[6] = 9
    train = train.remove_columns("label").add_column("label", labels)
    with pytest.raises(DistillationConfigError, match="label 9 in column 'label' at row 6"):
        build(tmp_out, train)


def test_token_labels_are_checked_per_token_and_name_the_row(tmp_out):
    data = tiny_classification_dataset(8, seq_len=8, seed=5)
    labels = [[i % 3 if m else -100 for i, m in enumerate(mask)] for mask in data["attention_mask"]]
    labels[4][1] = 3
    train = data.remove_columns("labels").add_column("labels", labels)
    with pytest.raises(
        DistillationConfigError, match="label 3 in column 'labels' at row 4.*token head has 3 classes"
    ):
        build(tmp_out, train, model_cls="BertForTokenClassification")


def test_a_label_out_of_range_in_a_plain_list_is_caught_by_sampling(tmp_out):
    rows = tiny_classification_dataset(12)
    examples = [dict(rows[i]) for i in range(len(rows))]
    examples[9]["labels"] = 7
    with pytest.raises(DistillationConfigError, match="label 7 in column 'labels' at row 9"):
        build(tmp_out, examples)


# ---- lengths and token ids -------------------------------------------------------------------------------------


class TensorRows(torch.utils.data.Dataset):
    """A map-style torch Dataset of tensors (no Arrow table, no column names)."""

    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return {k: torch.tensor(v) for k, v in self.rows[i].items()}


def _rows_with_a_long_one(n=12, long_row=7, length=MAX_POSITIONS + 6):
    rows = tiny_classification_dataset(n)
    examples = [dict(rows[i]) for i in range(n)]
    examples[long_row] = {
        "input_ids": [2] + [7] * (length - 1),
        "attention_mask": [1] * length,
        "labels": 1,
    }
    return examples


@pytest.mark.parametrize("container", [list, TensorRows])
def test_an_over_long_row_in_a_non_arrow_dataset_is_an_error_at_construction(tmp_out, container):
    train = container(_rows_with_a_long_one())
    with pytest.raises(
        DistillationConfigError,
        match=rf"the training data holds input_ids of length {MAX_POSITIONS + 6}, but the student .* position "
        rf"embeddings for {MAX_POSITIONS} tokens \(first at row 7\)",
    ):
        build(tmp_out, train)


def test_an_out_of_vocabulary_id_in_a_list_is_an_error_naming_the_row(tmp_out):
    examples = _rows_with_a_long_one(length=8)
    examples[3]["input_ids"] = [2, VOCAB + 5, 9]
    examples[3]["attention_mask"] = [1, 1, 1]
    with pytest.raises(
        DistillationConfigError,
        match=rf"token id {VOCAB + 5}, but the student's vocabulary has {VOCAB} .*row 3",
    ):
        build(tmp_out, examples)


def test_a_negative_token_id_is_an_error(tmp_out):
    train = tiny_classification_dataset(8)
    ids = [list(r) for r in train["input_ids"]]
    ids[2][3] = -100
    train = train.remove_columns("input_ids").add_column("input_ids", ids)
    with pytest.raises(DistillationConfigError, match="token id -100 \\(row 2\\) in input_ids"):
        build(tmp_out, train)


# ---- eval datasets: the same checks ------------------------------------------------------------------------------


def test_eval_data_labels_lengths_and_ids_are_checked_like_the_training_data():
    train = tiny_classification_dataset(8)
    with pytest.raises(
        DistillationConfigError, match="the eval data holds label 7 in column 'labels' at row 1"
    ):
        setup_checks(train, with_label(tiny_classification_dataset(4, seed=1), 1, 7))
    long_rows = _rows_with_a_long_one(n=4, long_row=2)
    with pytest.raises(
        DistillationConfigError, match=rf"the eval data holds input_ids of length {MAX_POSITIONS + 6}"
    ):
        setup_checks(train, long_rows)
    oov = tiny_classification_dataset(4, seed=2)
    ids = [list(r) for r in oov["input_ids"]]
    ids[0][1] = VOCAB
    oov = oov.remove_columns("input_ids").add_column("input_ids", ids)
    with pytest.raises(
        DistillationConfigError, match=rf"the eval data holds token id {VOCAB}, but the student's vocabulary"
    ):
        setup_checks(train, oov)


def test_each_dataset_of_an_eval_dict_is_checked_and_named():
    train = tiny_classification_dataset(8)
    evals = {
        "clean": tiny_classification_dataset(4, seed=1),
        "noisy": with_label(tiny_classification_dataset(4), 3, -1),
    }
    with pytest.raises(
        DistillationConfigError, match="the eval data 'noisy' holds label -1 in column 'labels' at row 3"
    ):
        setup_checks(train, evals)
    setup_checks(train, {"clean": evals["clean"]})  # no error


def test_an_uncached_eval_set_with_no_teacher_is_an_error():
    from hf_kd import cache_teacher_outputs

    teacher = tiny_model(seed=1)
    train = cache_teacher_outputs(teacher, tiny_classification_dataset(8), device="cpu")
    plain_eval = tiny_classification_dataset(4, seed=1)
    with pytest.raises(
        DistillationConfigError, match=r"the eval data carries no cached teacher outputs .*no teacher_model"
    ):
        setup_checks(train, plain_eval, teachers=[])
    cached_eval = cache_teacher_outputs(teacher, plain_eval, device="cpu")
    setup_checks(train, cached_eval, teachers=[])  # no error
    setup_checks(train, plain_eval)  # a live teacher can score it: no error


# ---- the trainer runs the eval checks at construction -----------------------------------------------------------


def test_the_trainer_checks_its_eval_dataset_at_construction(tmp_out):
    train = tiny_classification_dataset(8)
    with pytest.raises(
        DistillationConfigError, match="the eval data holds label 7 in column 'labels' at row 1"
    ):
        build(tmp_out, train, with_label(tiny_classification_dataset(4, seed=1), 1, 7))
    with pytest.raises(
        DistillationConfigError, match=rf"the eval data 'long' holds input_ids of length {MAX_POSITIONS + 6}"
    ):
        build(
            tmp_out,
            train,
            {"ok": tiny_classification_dataset(4), "long": _rows_with_a_long_one(n=4, long_row=2)},
        )


def test_the_trainer_refuses_an_uncached_eval_set_without_a_teacher(tmp_out):
    from hf_kd import cache_teacher_outputs

    train = cache_teacher_outputs(tiny_model(seed=1), tiny_classification_dataset(8), device="cpu")
    with pytest.raises(DistillationConfigError, match="the eval data carries no cached teacher outputs"):
        build(tmp_out, train, tiny_classification_dataset(4, seed=1), teacher=False)
