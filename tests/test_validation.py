"""Construction-time validation: each mistake is caught when the trainer is built, before any training step,
with a message that names the offending value and the way out."""

from __future__ import annotations

import pytest
import torch
from conftest import LABELS, VOCAB, tiny_bert_config, tiny_classification_dataset, tiny_model
from torch import nn
from transformers import (
    BertForMaskedLM,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertTokenizerFast,
    PretrainedConfig,
)
from transformers.modeling_outputs import SequenceClassifierOutput

from hf_kd import DistillationConfig, DistillationConfigError, DistillationTrainer


def _args(out: str, **kw) -> DistillationConfig:
    return DistillationConfig(
        output_dir=out,
        max_steps=1,
        per_device_train_batch_size=4,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        **kw,
    )


def _trainer(out, student, teacher, dataset=None, **kw):
    trainer_kw = {k: kw.pop(k) for k in ("processing_class", "teacher_tokenizer", "optimizers") if k in kw}
    return DistillationTrainer(
        model=student,
        args=_args(out, **kw),
        teacher_model=teacher,
        train_dataset=dataset if dataset is not None else tiny_classification_dataset(8),
        **trainer_kw,
    )


def _model_with(seed: int = 0, **config_changes) -> BertForSequenceClassification:
    config = tiny_bert_config()
    for name, value in config_changes.items():
        setattr(config, name, value)
    torch.manual_seed(seed)
    return BertForSequenceClassification(config)


# ---- vocabularies and tokenizers ---------------------------------------------------------------------------


def test_vocabulary_size_mismatch_for_mlm_names_both_sizes(tmp_out):
    teacher = tiny_model("BertForMaskedLM", seed=1)
    config = tiny_bert_config()
    config.vocab_size = VOCAB + 10
    student = BertForMaskedLM(config)
    with pytest.raises(
        DistillationConfigError, match=rf"student vocabulary has {VOCAB + 10} tokens but teacher has {VOCAB}"
    ):
        _trainer(tmp_out, student, teacher)


def _tokenizer(name: str, words: list[str]) -> BertTokenizerFast:
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    return BertTokenizerFast(vocab={t: i for i, t in enumerate(tokens)})


WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", ".", "!", ":", "3", "1"]


def test_tokenizers_that_map_text_to_different_ids_are_refused(tmp_path, tmp_out):
    student_tok = _tokenizer("s", WORDS)
    teacher_tok = _tokenizer("t", list(reversed(WORDS)))  # same words, other ids
    with pytest.raises(DistillationConfigError, match=r"tokenizers disagree on 'The quick brown fox") as err:
        _trainer(
            tmp_out,
            tiny_model(seed=0),
            tiny_model(seed=1),
            processing_class=student_tok,
            teacher_tokenizer=teacher_tok,
        )
    # The message shows both id sequences and the way out.
    expected_student_ids = student_tok("The quick brown fox jumps over the lazy dog.")["input_ids"]
    assert str(expected_student_ids[:12]) in str(err.value)
    assert "use the teacher's tokenizer for the student" in str(err.value)


def test_a_tokenizer_attached_to_the_teacher_is_checked_too(tmp_path, tmp_out):
    teacher = tiny_model(seed=1)
    teacher.tokenizer = _tokenizer("t", WORDS[::2] + WORDS[1::2])
    with pytest.raises(DistillationConfigError, match="tokenizers disagree"):
        _trainer(tmp_out, tiny_model(seed=0), teacher, processing_class=_tokenizer("s", WORDS))


def test_equal_tokenizers_pass(tmp_path, tmp_out):
    trainer = _trainer(
        tmp_out,
        tiny_model(seed=0),
        tiny_model(seed=1),
        processing_class=_tokenizer("s", WORDS),
        teacher_tokenizer=_tokenizer("t", WORDS),
    )
    assert trainer.teacher is not None


def test_token_ids_beyond_the_teachers_vocabulary_are_refused(tmp_out):
    teacher = _model_with(seed=1, vocab_size=50)  # the data holds ids up to VOCAB - 1 = 98
    dataset = tiny_classification_dataset(8)
    largest = max(max(row) for row in dataset["input_ids"])
    assert largest >= 50
    with pytest.raises(
        DistillationConfigError, match=rf"token id {largest}, but the teacher's vocabulary has 50"
    ):
        _trainer(tmp_out, tiny_model(seed=0), teacher, dataset)


# ---- label spaces ---------------------------------------------------------------------------------------


def test_label_count_mismatch(tmp_out):
    teacher = tiny_model(seed=1, num_labels=2)
    with pytest.raises(
        DistillationConfigError, match=r"student has 3 labels \['neg', 'neu', 'pos'\] but teacher has 2"
    ):
        _trainer(tmp_out, tiny_model(seed=0), teacher)


def test_label_order_mismatch_names_both_orders_and_the_fix(tmp_out):
    order = ["pos", "neg", "neu"]
    teacher = _model_with(
        seed=1, id2label=dict(enumerate(order)), label2id={n: i for i, n in enumerate(order)}
    )
    with pytest.raises(DistillationConfigError, match="same labels in a different order") as err:
        _trainer(tmp_out, tiny_model(seed=0), teacher)
    assert "['neg', 'neu', 'pos']" in str(err.value) and "['pos', 'neg', 'neu']" in str(err.value)
    assert "id2label={0: 'pos', 1: 'neg', 2: 'neu'}" in str(err.value)


def test_label_name_mismatch(tmp_out):
    names = ["bad", "meh", "good"]
    teacher = _model_with(
        seed=1, id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)}
    )
    with pytest.raises(
        DistillationConfigError, match=r"student labels \['neg', 'neu', 'pos'\] differ from teacher"
    ):
        _trainer(tmp_out, tiny_model(seed=0), teacher)


@pytest.mark.parametrize("role", ["student", "teacher"])
def test_label2id_that_is_not_the_inverse_of_id2label(tmp_out, role):
    broken = {"neg": 2, "neu": 1, "pos": 0}  # id2label says 0 -> neg
    models = {"student": tiny_model(seed=0), "teacher": tiny_model(seed=1)}
    models[role] = _model_with(seed=2, label2id=broken)
    with pytest.raises(
        DistillationConfigError, match=rf"the {role}'s label2id .* disagrees with its id2label"
    ) as err:
        _trainer(tmp_out, models["student"], models["teacher"])
    assert "set label2id={'neg': 0, 'neu': 1, 'pos': 2}" in str(err.value)


def test_dataset_class_labels_in_another_order_than_the_students_id2label(tmp_out):
    from datasets import ClassLabel

    dataset = tiny_classification_dataset(8)
    ordered = dataset.cast_column("labels", ClassLabel(names=["neg", "neu", "pos"]))
    _trainer(tmp_out, tiny_model(seed=0), tiny_model(seed=1), ordered)  # same order: fine
    permuted = dataset.cast_column("labels", ClassLabel(names=["pos", "neg", "neu"]))
    with pytest.raises(
        DistillationConfigError, match=r"encodes the classes as \['pos', 'neg', 'neu'\] but the student"
    ):
        _trainer(tmp_out, tiny_model(seed=0), tiny_model(seed=1), permuted)


# ---- intermediate layers ------------------------------------------------------------------------------


class LogitsOnly(nn.Module):
    """A classifier whose forward cannot return hidden states or attentions (no such argument, no **kwargs)."""

    def __init__(self) -> None:
        super().__init__()
        self.config = tiny_bert_config()
        self.embed = nn.Embedding(VOCAB, 8)
        self.head = nn.Linear(8, len(LABELS))

    def forward(self, input_ids=None, attention_mask=None, labels=None):
        return SequenceClassifierOutput(logits=self.head(self.embed(input_ids).mean(1)))


class NoLayerCount(LogitsOnly):
    """Accepts any keyword, but its config does not say how many layers it has."""

    def __init__(self) -> None:
        super().__init__()
        self.config = PretrainedConfig(num_labels=3, id2label=dict(enumerate(LABELS)))

    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
        h = self.embed(input_ids)  # (B, L, 8)
        return SequenceClassifierOutput(logits=self.head(h.mean(1)), hidden_states=(h,))


@pytest.mark.parametrize(
    ("weights", "argument"),
    [({"hidden_weight": 1.0}, "output_hidden_states"), ({"attention_weight": 1.0}, "output_attentions")],
)
def test_intermediate_losses_from_a_model_that_cannot_return_them(tmp_out, weights, argument):
    with pytest.raises(
        DistillationConfigError, match=rf"LogitsOnly.forward takes no {argument} argument"
    ) as err:
        _trainer(tmp_out, LogitsOnly(), tiny_model(seed=1), **weights)
    assert "set " in str(err.value) and "to 0" in str(err.value)


def test_logit_distillation_from_such_a_model_is_fine(tmp_out):
    trainer = _trainer(tmp_out, LogitsOnly(), tiny_model(seed=1))
    assert trainer.layer_pairs == []


def test_intermediate_losses_need_a_layer_count(tmp_out):
    with pytest.raises(DistillationConfigError, match="NoLayerCount has no num_hidden_layers in its config"):
        _trainer(tmp_out, NoLayerCount(), tiny_model(seed=1), hidden_weight=1.0)


@pytest.mark.parametrize(
    ("layer_map", "message"),
    [
        ({3: 2}, r"names student layer 3, but the student has layers 0..2"),
        ({1: 7}, r"names teacher layer 7, but the teacher has layers 0..4"),
        ({-1: 2}, r"names student layer -1"),
    ],
)
def test_layer_map_out_of_range_through_the_trainer(tmp_out, layer_map, message):
    with pytest.raises(ValueError, match=message):
        _trainer(
            tmp_out,
            tiny_model(seed=0),
            tiny_model(seed=1, num_layers=4),
            hidden_weight=1.0,
            layer_map=layer_map,
        )


# ---- the teacher must not be trained ---------------------------------------------------------------------


def test_teacher_that_is_the_student(tmp_out):
    student = tiny_model(seed=0)
    with pytest.raises(DistillationConfigError, match="same object as the student"):
        _trainer(tmp_out, student, student)


def test_teacher_inside_the_student(tmp_out):
    student, teacher = tiny_model(seed=0), tiny_model(seed=1)
    student.my_teacher = (
        teacher  # its parameters are now student.parameters(), so the optimizer would get them
    )
    with pytest.raises(
        DistillationConfigError, match=r"teacher is a submodule of the student \(student.my_teacher\)"
    ):
        _trainer(tmp_out, student, teacher)


def test_teacher_sharing_weights_with_the_student(tmp_out):
    student, teacher = tiny_model(seed=0), tiny_model(seed=1)
    teacher.bert.embeddings = student.bert.embeddings
    with pytest.raises(DistillationConfigError, match=r"share \d+ parameter tensors"):
        _trainer(tmp_out, student, teacher)


def test_optimizer_holding_teacher_parameters(tmp_out):
    student, teacher = tiny_model(seed=0), tiny_model(seed=1)
    optimizer = torch.optim.AdamW([*student.parameters(), *teacher.parameters()], lr=1e-3)
    n_teacher = len(list(teacher.parameters()))
    with pytest.raises(DistillationConfigError, match=rf"holds {n_teacher} parameter tensors of the teacher"):
        _trainer(tmp_out, student, teacher, optimizers=(optimizer, None))


def test_optimizer_over_the_student_alone_is_accepted_and_used(tmp_out):
    student, teacher = tiny_model(seed=0), tiny_model(seed=1)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
    trainer = _trainer(tmp_out, student, teacher, optimizers=(optimizer, None))
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in student.state_dict().items()}
    trainer.train()
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in teacher_before.items())
    assert any(not torch.equal(v, student.state_dict()[k]) for k, v in student_before.items())


# ---- sequence lengths -----------------------------------------------------------------------------------


def test_data_longer_than_the_students_position_table(tmp_out):
    dataset = tiny_classification_dataset(8, seq_len=80)  # the tiny models have 64 positions
    with pytest.raises(
        DistillationConfigError, match=r"input_ids of length 80, but the student .* 64 tokens"
    ) as err:
        _trainer(tmp_out, tiny_model(seed=0), tiny_model(seed=1), dataset)
    assert "truncation=True, max_length=64" in str(err.value)


def test_data_longer_than_the_teachers_position_table(tmp_out):
    student = _model_with(seed=0, max_position_embeddings=128)
    dataset = tiny_classification_dataset(8, seq_len=80)
    with pytest.raises(DistillationConfigError, match=r"length 80, but the teacher"):
        _trainer(tmp_out, student, tiny_model(seed=1), dataset)


def test_length_check_sees_rows_selected_from_a_longer_dataset(tmp_out):
    # After select(), the Arrow table still holds every row: only the selected rows count.
    from datasets import concatenate_datasets

    short = tiny_classification_dataset(8, seq_len=12)
    long = tiny_classification_dataset(2, seq_len=80)
    long = long.remove_columns("input_ids").add_column("input_ids", [[3] * 80, [4] * 80])
    mixed = concatenate_datasets([short, long.cast(short.features)]).flatten_indices()
    assert len(mixed) == 10
    _trainer(tmp_out, tiny_model(seed=0), tiny_model(seed=1), mixed.select(range(8)))  # no error
    with pytest.raises(DistillationConfigError, match="length 80"):
        _trainer(tmp_out, tiny_model(seed=0), tiny_model(seed=1), mixed.select(range(10)))


def test_tokenizer_max_length_beyond_the_position_table_warns_when_the_data_cannot_be_read(
    tmp_out, caplog, monkeypatch
):
    # A plain list of examples has no Arrow column to measure, and only a sample of its rows is read (4 of 8 here):
    # the tokenizer's model_max_length is then the only hint, and longer inputs are possible but not certain, so
    # it is a warning.
    import logging

    import hf_kd.validation

    monkeypatch.setattr(hf_kd.validation, "SAMPLED_ROWS", 4)
    rows = tiny_classification_dataset(8)
    examples = [rows[i] for i in range(len(rows))]
    tokenizer = _tokenizer("s", WORDS)
    tokenizer.model_max_length = 512
    with caplog.at_level(logging.WARNING, logger="hf_kd.validation"):
        DistillationTrainer(
            model=tiny_model(seed=0),
            args=_args(tmp_out),
            teacher_model=tiny_model(seed=1),
            train_dataset=examples,
            processing_class=tokenizer,
        )
    messages = [r.getMessage() for r in caplog.records if r.name == "hf_kd.validation"]
    assert any("model_max_length=512 exceeds the student's position limit of 64" in m for m in messages)


# ---- cached teacher logits ------------------------------------------------------------------------------


def test_cached_logits_from_another_teacher_are_refused(tmp_out):
    from hf_kd import cache_teacher_outputs

    dataset = cache_teacher_outputs(tiny_model(seed=1), tiny_classification_dataset(8), device="cpu")
    with pytest.raises(DistillationConfigError, match="made by a different teacher"):
        _trainer(tmp_out, tiny_model(seed=0), tiny_model(seed=2), dataset)
    _trainer(tmp_out, tiny_model(seed=0), tiny_model(seed=1), dataset)  # the right teacher passes


def test_cached_logits_with_another_number_of_classes_are_refused(tmp_out):
    from hf_kd import cache_teacher_outputs

    dataset = cache_teacher_outputs(tiny_model(seed=1), tiny_classification_dataset(8), device="cpu")
    dataset = dataset.map(lambda row: {"labels": row["labels"] % 2})  # labels valid for the 2-class student
    student = tiny_model(seed=0, num_labels=2)
    with pytest.raises(DistillationConfigError, match="3 classes but the student has 2"):
        _trainer(tmp_out, student, None, dataset, alpha=1.0)


def test_cached_token_logits_on_another_padding_are_refused(tmp_out):
    from datasets import Dataset

    from hf_kd import cache_teacher_outputs

    rows = tiny_classification_dataset(8)
    labels = [[1 if m else -100 for m in mask] for mask in rows["attention_mask"]]
    dataset = Dataset.from_dict(
        {"input_ids": rows["input_ids"], "attention_mask": rows["attention_mask"], "labels": labels}
    )
    teacher = tiny_model("BertForTokenClassification", seed=1)
    cached = cache_teacher_outputs(teacher, dataset, device="cpu")
    student = tiny_model("BertForTokenClassification", seed=0)
    _trainer(tmp_out, student, None, cached)  # as made: fits
    # The same cache on data padded differently (every position real): the stored rows no longer line up.
    repadded = cached.remove_columns("attention_mask").add_column("attention_mask", [[1] * 12] * 8)
    short = min(sum(m) for m in rows["attention_mask"])
    assert short < 12
    with pytest.raises(
        DistillationConfigError, match=r"cached teacher_logits of example \d+ cover \d+ positions"
    ):
        _trainer(tmp_out, BertForTokenClassification(tiny_bert_config()), None, repadded)
