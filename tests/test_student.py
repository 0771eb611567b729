"""make_student: a shallower model of the teacher's class, initialised from the teacher's own weights."""

from __future__ import annotations

import logging
import re

import pytest
import torch
import transformers as tf

from hf_kd import make_student
from hf_kd.layer_map import resolve_layer_map

VOCAB = 99
LABELS = {0: "neg", 1: "neu", 2: "pos"}


def _configs() -> dict:
    common = dict(vocab_size=VOCAB, max_position_embeddings=64, num_labels=3, id2label=LABELS)
    return {
        "bert": tf.BertConfig(
            hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64, **common
        ),
        "roberta": tf.RobertaConfig(
            hidden_size=32,
            num_hidden_layers=4,
            num_attention_heads=4,
            intermediate_size=64,
            pad_token_id=1,
            **common,
        ),
        "distilbert": tf.DistilBertConfig(dim=32, n_layers=4, n_heads=4, hidden_dim=64, **common),
        "electra": tf.ElectraConfig(
            embedding_size=16,
            hidden_size=32,
            num_hidden_layers=4,
            num_attention_heads=4,
            intermediate_size=64,
            **common,
        ),
        "albert": tf.AlbertConfig(
            embedding_size=16,
            hidden_size=32,
            num_hidden_layers=4,
            num_attention_heads=4,
            intermediate_size=64,
            **common,
        ),
        "deberta-v2": tf.DebertaV2Config(
            hidden_size=32,
            num_hidden_layers=4,
            num_attention_heads=4,
            intermediate_size=64,
            relative_attention=True,
            pos_att_type=["p2c", "c2p"],
            position_buckets=16,
            norm_rel_ebd="layer_norm",
            **common,
        ),
    }


# layer container of each architecture, as its state-dict keys name it
CONTAINERS = {
    "bert": "bert.encoder.layer",
    "roberta": "roberta.encoder.layer",
    "distilbert": "distilbert.transformer.layer",
    "electra": "electra.encoder.layer",
    "albert": "albert.encoder.albert_layer_groups",
    "deberta-v2": "deberta.encoder.layer",
}


def _teacher(arch: str, head: str = "ForSequenceClassification", seed: int = 0):
    config = _configs()[arch]
    torch.manual_seed(seed)
    model = getattr(tf, type(config).__name__.replace("Config", head))(config).eval()
    model.config._name_or_path = f"tiny-{arch}-teacher"
    return model


def _expected_source_key(key: str, container: str, index_map: dict[int, int]) -> str:
    match = re.match(rf"^{re.escape(container)}\.(\d+)\.(.*)$", key)
    if not match:
        return key
    return f"{container}.{index_map[int(match.group(1))]}.{match.group(2)}"


def _assert_copied(student, teacher, container: str, index_map: dict[int, int]) -> None:
    s_state, t_state = student.state_dict(), teacher.state_dict()
    layer_keys = 0
    for key, value in s_state.items():
        source = _expected_source_key(key, container, index_map)
        layer_keys += key.startswith(container + ".")
        assert source in t_state, key
        assert torch.equal(value, t_state[source]), f"{key} differs from teacher {source}"
    assert layer_keys > 0


def _storages(model) -> set[int]:
    return {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()] if t.numel()}


@pytest.mark.parametrize("arch", list(CONTAINERS))
def test_student_copies_selected_layers_embeddings_and_head(arch):
    teacher = _teacher(arch)
    student = make_student(teacher, num_layers=2)

    assert type(student) is type(teacher)
    assert student.config.num_hidden_layers == 2
    # 4 -> 2 spreads to teacher layers 2 and 4 (round(m * 4 / 2))
    assert student.config.hf_kd_teacher_layers == [2, 4]
    if arch == "albert":
        # one shared group: the student keeps it (index 0 -> 0) and runs it twice
        index_map = {0: 0}
        assert student.config.num_hidden_groups == 1
    else:
        index_map = {0: 1, 1: 3}
    _assert_copied(student, teacher, CONTAINERS[arch], index_map)

    ids = torch.randint(5, VOCAB, (2, 7))
    with torch.no_grad():
        logits = student(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()
    assert not _storages(student) & _storages(teacher)
    assert student.config.hf_kd_teacher == f"tiny-{arch}-teacher"


def test_albert_student_computes_teacher_function_with_fewer_repeats():
    """With one shared group, a 2-layer ALBERT student equals a 2-layer run of the teacher's weights."""
    teacher = _teacher("albert")
    student = make_student(teacher, num_layers=2).eval()
    reference = tf.AlbertForSequenceClassification(
        tf.AlbertConfig(**{**teacher.config.to_dict(), "num_hidden_layers": 2})
    )
    reference.load_state_dict(teacher.state_dict())
    ids = torch.randint(5, VOCAB, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(student(input_ids=ids).logits, reference.eval()(input_ids=ids).logits)


def test_default_selection_is_the_uniform_layer_map():
    assert list(resolve_layer_map("uniform", 6, 12).values()) == [2, 4, 6, 8, 10, 12]
    teacher = _teacher("bert")
    for n, expected in ((1, [4]), (2, [2, 4]), (3, [1, 3, 4]), (4, [1, 2, 3, 4])):
        assert make_student(teacher, num_layers=n).config.hf_kd_teacher_layers == expected


def test_explicit_layers_override_the_spread():
    teacher = _teacher("bert")
    student = make_student(teacher, layers=[1, 3])
    assert student.config.hf_kd_teacher_layers == [1, 3]
    _assert_copied(student, teacher, CONTAINERS["bert"], {0: 0, 1: 2})
    with pytest.raises(ValueError, match=r"layers=\[0, 5\].*1 to 4"):
        make_student(teacher, layers=[0, 5])
    with pytest.raises(ValueError, match="num_layers=5"):
        make_student(teacher, num_layers=5)


def test_masked_lm_student_keeps_its_own_tied_decoder():
    teacher = _teacher("bert", "ForMaskedLM")
    student = make_student(teacher, num_layers=2)
    assert torch.equal(student.cls.predictions.decoder.weight, teacher.cls.predictions.decoder.weight)
    # tied inside the student, never to the teacher
    assert (
        student.cls.predictions.decoder.weight.data_ptr()
        == student.bert.embeddings.word_embeddings.weight.data_ptr()
    )
    assert not _storages(student) & _storages(teacher)
    with torch.no_grad():
        student.bert.embeddings.word_embeddings.weight.add_(1.0)
    assert not torch.equal(
        student.bert.embeddings.word_embeddings.weight, teacher.bert.embeddings.word_embeddings.weight
    )


def test_origin_survives_save_and_load(tmp_path):
    student = make_student(_teacher("distilbert"), num_layers=2)
    student.save_pretrained(tmp_path)
    loaded = tf.AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert loaded.config.hf_kd_teacher == "tiny-distilbert-teacher"
    assert loaded.config.hf_kd_teacher_layers == [2, 4]
    assert loaded.config.n_layers == 2


def test_smaller_hidden_size_is_random_and_logged(caplog):
    teacher = _teacher("bert")
    with caplog.at_level(logging.WARNING, logger="hf_kd.student"):
        student = make_student(
            teacher, num_layers=2, hidden_size=16, num_attention_heads=2, intermediate_size=24, init="random"
        )
    assert student.bert.embeddings.word_embeddings.weight.shape == (VOCAB, 16)
    assert student.bert.encoder.layer[0].intermediate.dense.weight.shape == (24, 16)
    assert student.classifier.weight.shape == (3, 16)
    assert "randomly initialised" in caplog.text and "bert.embeddings" in caplog.text
    ids = torch.randint(5, VOCAB, (2, 7))
    assert student(input_ids=ids).logits.shape == (2, 3)


def test_intermediate_size_override_copies_what_still_fits(caplog):
    teacher = _teacher("bert")
    with caplog.at_level(logging.WARNING, logger="hf_kd.student"):
        student = make_student(teacher, num_layers=2, intermediate_size=48, init="random")
    s_layer, t_layer = student.bert.encoder.layer[1], teacher.bert.encoder.layer[3]
    assert torch.equal(s_layer.attention.self.query.weight, t_layer.attention.self.query.weight)
    assert torch.equal(
        student.bert.embeddings.word_embeddings.weight, teacher.bert.embeddings.word_embeddings.weight
    )
    assert s_layer.intermediate.dense.weight.shape == (48, 32)
    assert "layer 1 intermediate" in caplog.text and "layer 1 attention" not in caplog.text


def test_head_count_change_makes_attention_random():
    teacher = _teacher("bert")
    student = make_student(teacher, num_layers=2, num_attention_heads=2, init="random")
    s_layer, t_layer = student.bert.encoder.layer[1], teacher.bert.encoder.layer[3]
    # same shapes, but heads would split differently: attention re-initialised, the rest copied
    assert not torch.equal(s_layer.attention.self.query.weight, t_layer.attention.self.query.weight)
    assert torch.equal(s_layer.intermediate.dense.weight, t_layer.intermediate.dense.weight)


def test_unsupported_architecture_names_the_supported_ones():
    config = tf.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=32)
    with pytest.raises(
        ValueError, match=r"GPT2LMHeadModel.*bert, roberta, distilbert, electra, albert, deberta-v2"
    ):
        make_student(tf.GPT2LMHeadModel(config), num_layers=1)


def test_albert_with_several_groups_keeps_the_groups_its_layers_use():
    config = _configs()["albert"]
    config.num_hidden_groups = 2  # layers 1-2 run group 0, layers 3-4 group 1
    torch.manual_seed(0)
    teacher = tf.AlbertForSequenceClassification(config).eval()
    student = make_student(teacher, num_layers=2)  # layers 2 and 4: groups 0 and 1
    assert student.config.num_hidden_groups == 2
    _assert_copied(student, teacher, CONTAINERS["albert"], {0: 0, 1: 1})
    late = make_student(teacher, layers=[3, 4])  # both in group 1
    assert late.config.num_hidden_groups == 1
    _assert_copied(late, teacher, CONTAINERS["albert"], {0: 1})
    with pytest.raises(ValueError, match=r"layer groups \[0, 1, 1\].*cannot reproduce"):
        make_student(teacher, layers=[1, 3, 4])
