"""make_student with a narrower width: weight selection (Xu et al., ICLR 2024) from the teacher's tensors."""

from __future__ import annotations

import re

import pytest
import torch
import transformers as tf

from hf_kd import make_student

VOCAB = 99
LABELS = {0: "neg", 1: "neu", 2: "pos"}
COMMON = dict(vocab_size=VOCAB, max_position_embeddings=64, num_labels=3, id2label=LABELS)
# hidden 48 in 6 heads of 8, FFN 96
BERT_LIKE = dict(hidden_size=48, num_hidden_layers=4, num_attention_heads=6, intermediate_size=96, **COMMON)


def _teacher(arch: str = "bert", seed: int = 0, head: str = "ForSequenceClassification"):
    configs = {
        "bert": lambda: tf.BertConfig(**BERT_LIKE),
        "roberta": lambda: tf.RobertaConfig(pad_token_id=1, **BERT_LIKE),
        "electra": lambda: tf.ElectraConfig(embedding_size=48, **BERT_LIKE),
        "electra-factorised": lambda: tf.ElectraConfig(embedding_size=16, **BERT_LIKE),
        "distilbert": lambda: tf.DistilBertConfig(dim=48, n_layers=4, n_heads=6, hidden_dim=96, **COMMON),
    }
    config = configs[arch]()
    torch.manual_seed(seed)
    name = type(config).__name__.replace("Config", head)
    model = getattr(tf, name)(config).eval()
    with torch.no_grad():  # LayerNorm gains and biases away from 1 and 0, so that a wrong slice shows
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def _ids(n: int = 3, length: int = 9) -> torch.Tensor:
    return torch.randint(5, VOCAB, (n, length), generator=torch.Generator().manual_seed(1))


# Rules written out independently of hf_kd.student: which axis of which tensor indexes what.
BERT_AXES = [
    (r"attention\.self\.(query|key|value)\.weight$", ("heads", "hidden")),
    (r"attention\.self\.(query|key|value)\.bias$", ("heads",)),
    (r"attention\.output\.dense\.weight$", ("hidden", "heads")),
    (r"intermediate\.dense\.weight$", ("ffn", "hidden")),
    (r"intermediate\.dense\.bias$", ("ffn",)),
    (r"layer\.\d+\.output\.dense\.weight$", ("hidden", "ffn")),
]
DISTILBERT_AXES = [
    (r"attention\.(q|k|v)_lin\.weight$", ("heads", "hidden")),
    (r"attention\.(q|k|v)_lin\.bias$", ("heads",)),
    (r"attention\.out_lin\.weight$", ("hidden", "heads")),
    (r"ffn\.lin1\.weight$", ("ffn", "hidden")),
    (r"ffn\.lin1\.bias$", ("ffn",)),
    (r"ffn\.lin2\.weight$", ("hidden", "ffn")),
]


def _expected(teacher, student, axes_rules, container: str, hidden_axes_elsewhere: set[int]):
    """Each student tensor, cut from the teacher's with the index sets the student's config records."""
    record = student.config.hf_kd_weight_selection
    teacher_layers = [t - 1 for t in student.config.hf_kd_teacher_layers]
    head_dim = teacher.config.hidden_size // teacher.config.num_attention_heads
    hidden = torch.tensor(record["hidden"])
    t_state = teacher.state_dict()
    for key, value in student.state_dict().items():
        m = re.match(rf"^{re.escape(container)}\.(\d+)\.", key)
        source, layer = key, None
        if m:
            layer = int(m.group(1))
            source = key.replace(f"{container}.{layer}.", f"{container}.{teacher_layers[layer]}.", 1)
        tensor = t_state[source]
        kinds = next((k for pattern, k in axes_rules if re.search(pattern, key)), None)
        if kinds is None:
            kinds = tuple("hidden" if n in hidden_axes_elsewhere else None for n in tensor.shape)
        for axis, kind in enumerate(kinds):
            if kind == "hidden":
                index = hidden
            elif kind == "heads":
                heads = record["heads"][str(layer)]
                index = torch.tensor([h * head_dim + i for h in heads for i in range(head_dim)])
            elif kind == "ffn":
                index = torch.tensor(record["ffn"][str(layer)])
            else:
                continue
            tensor = tensor.index_select(axis, index)
        yield key, value, tensor


@pytest.mark.parametrize(
    "arch,container",
    [
        ("bert", "bert.encoder.layer"),
        ("roberta", "roberta.encoder.layer"),
        ("electra", "electra.encoder.layer"),
        ("distilbert", "distilbert.transformer.layer"),
    ],
)
@pytest.mark.parametrize("selection", ["magnitude", "even"])
def test_every_narrow_tensor_is_the_teacher_tensor_cut_by_the_recorded_index_sets(arch, container, selection):
    teacher = _teacher(arch)
    student = make_student(teacher, num_layers=2, hidden_size=32, intermediate_size=40, selection=selection)
    assert student.config.hidden_size == 32 and student.config.num_attention_heads == 4  # heads of 8 kept
    rules = DISTILBERT_AXES if arch == "distilbert" else BERT_AXES
    checked = 0
    for key, value, expected in _expected(teacher, student, rules, container, {48}):
        assert value.shape == expected.shape, key
        assert torch.equal(value, expected), key
        checked += 1
    assert checked == len(student.state_dict())
    record = student.config.hf_kd_weight_selection
    assert len(record["hidden"]) == 32 and len(set(record["hidden"])) == 32
    assert all(len(h) == 4 for h in record["heads"].values())
    assert all(len(f) == 40 for f in record["ffn"].values())
    assert student(input_ids=_ids()).logits.shape == (3, 3)


def test_even_selection_takes_evenly_spaced_indices():
    student = make_student(_teacher(), num_layers=2, hidden_size=24, intermediate_size=32, selection="even")
    record = student.config.hf_kd_weight_selection
    assert record["hidden"] == [2 * i for i in range(24)]  # i * 48 // 24
    assert record["heads"]["0"] == [0, 2, 4]  # 3 of 6 heads
    assert record["ffn"]["1"] == [3 * i for i in range(32)]  # i * 96 // 32


def test_magnitude_selection_keeps_the_largest_heads_and_neurons():
    teacher = _teacher()
    layer = teacher.bert.encoder.layer[5 - 1 - 1]  # teacher layer 4 (index 3): the student's last layer
    with torch.no_grad():
        layer.attention.self.query.weight[8:16] *= 50  # head 1
        layer.intermediate.dense.weight[7] *= 50  # neuron 7
        for module in teacher.modules():  # hidden dimension 5 carries large weights everywhere
            if isinstance(module, torch.nn.LayerNorm):
                module.weight[5] = 100.0
    student = make_student(teacher, num_layers=2, hidden_size=8, intermediate_size=4, selection="magnitude")
    record = student.config.hf_kd_weight_selection
    assert 1 in record["heads"]["1"] and 7 in record["ffn"]["1"] and 5 in record["hidden"]


def test_importance_selection_uses_the_gradient_on_head_and_neuron_masks():
    from hf_kd.pruning import mask_gradient_scores

    teacher = _teacher()
    batches = [{"input_ids": _ids(4), "labels": torch.tensor([0, 1, 2, 1])}]
    student = make_student(
        teacher, num_layers=2, hidden_size=16, intermediate_size=8, selection="auto", dataloader=batches
    )
    record = student.config.hf_kd_weight_selection
    assert record["rule"] == "importance"
    layer = teacher.bert.encoder.layer[3]  # the student's layer 1
    heads, ffn = mask_gradient_scores(
        teacher, batches, [layer.attention.output.dense, layer.output.dense], [8, 1]
    )
    assert record["heads"]["1"] == sorted(heads.argsort(descending=True)[:2].tolist())
    assert record["ffn"]["1"] == sorted(ffn.argsort(descending=True)[:8].tolist())


@pytest.mark.parametrize("arch", ["bert", "distilbert", "electra-factorised"])
def test_equal_widths_reproduce_the_teacher_exactly(arch):
    teacher = _teacher(arch)
    full = {"hidden_size": 48, "num_attention_heads": 6, "intermediate_size": 96}
    student = make_student(teacher, num_layers=4, **full).eval()
    # the weight-selection path ran, with every index kept in order
    assert student.config.hf_kd_weight_selection["hidden"] == list(range(48))
    assert student.config.hf_kd_weight_selection["heads"]["3"] == list(range(6))
    ids = _ids()
    with torch.no_grad():
        assert torch.equal(student(input_ids=ids).logits, teacher(input_ids=ids).logits)


def test_electra_factorised_embeddings_keep_their_width_and_the_projection_is_cut():
    teacher = _teacher("electra-factorised")
    student = make_student(teacher, num_layers=2, hidden_size=24)
    hidden = torch.tensor(student.config.hf_kd_weight_selection["hidden"])
    assert student.config.embedding_size == 16
    assert torch.equal(
        student.electra.embeddings.word_embeddings.weight, teacher.electra.embeddings.word_embeddings.weight
    )
    assert torch.equal(
        student.electra.embeddings_project.weight, teacher.electra.embeddings_project.weight[hidden]
    )


def test_masked_lm_student_ties_its_decoder_to_the_cut_embeddings():
    teacher = _teacher(head="ForMaskedLM")
    student = make_student(teacher, num_layers=2, hidden_size=24)
    hidden = torch.tensor(student.config.hf_kd_weight_selection["hidden"])
    decoder = student.get_output_embeddings().weight
    assert decoder.data_ptr() == student.get_input_embeddings().weight.data_ptr()
    assert torch.equal(decoder, teacher.get_input_embeddings().weight[:, hidden])


def test_narrow_student_loads_back_from_save_pretrained(tmp_path):
    student = make_student(_teacher(), num_layers=2, hidden_size=24)
    student.save_pretrained(tmp_path)
    loaded = tf.AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert loaded.config.hidden_size == 24 and loaded.config.intermediate_size == 48
    assert loaded.config.hf_kd_init == "select"
    assert loaded.config.hf_kd_weight_selection == student.config.hf_kd_weight_selection
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=_ids()).logits, student.eval()(input_ids=_ids()).logits)


def test_random_init_keeps_the_same_narrow_shapes_without_teacher_weights():
    teacher = _teacher()
    selected = make_student(teacher, num_layers=2, hidden_size=24)
    random = make_student(
        teacher, num_layers=2, hidden_size=24, num_attention_heads=3, intermediate_size=48, init="random"
    )
    assert {k: v.shape for k, v in random.state_dict().items()} == {
        k: v.shape for k, v in selected.state_dict().items()
    }
    assert random.config.hf_kd_init == "random"
    assert not hasattr(random.config, "hf_kd_weight_selection")
    hidden = torch.tensor(selected.config.hf_kd_weight_selection["hidden"])
    word = teacher.bert.embeddings.word_embeddings.weight[:, hidden]
    assert not torch.equal(random.bert.embeddings.word_embeddings.weight, word)


@pytest.mark.parametrize(
    "config,match",
    [
        (
            tf.AlbertConfig(
                embedding_size=16,
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=4,
                intermediate_size=64,
                **COMMON,
            ),
            r"AlbertForSequenceClassification.*ALBERT factorises.*init='random'",
        ),
        (
            tf.DebertaV2Config(
                hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, **COMMON
            ),
            r"DebertaV2ForSequenceClassification.*DeBERTa-v2.*init='random'",
        ),
    ],
)
def test_albert_and_deberta_v2_name_the_random_init_way_out(config, match):
    model = getattr(tf, type(config).__name__.replace("Config", "ForSequenceClassification"))(config)
    with pytest.raises(ValueError, match=match):
        make_student(model, num_layers=1, hidden_size=16)
    narrow = make_student(
        model, num_layers=1, hidden_size=16, num_attention_heads=2, intermediate_size=32, init="random"
    )
    assert narrow.config.hidden_size == 16


def test_head_size_change_is_refused_with_the_matching_head_count():
    with pytest.raises(
        ValueError, match=r"heads of size 12.*teacher's heads have size 8.*num_attention_heads=3"
    ):
        make_student(_teacher(), num_layers=2, hidden_size=24, num_attention_heads=2)
    with pytest.raises(ValueError, match=r"not a multiple of the teacher's head size 8"):
        make_student(_teacher(), num_layers=2, hidden_size=20)
    with pytest.raises(ValueError, match=r"hidden_size=64.*1\.\.48.*init='random'"):
        make_student(_teacher(), num_layers=2, hidden_size=64)


def test_importance_without_data_names_the_rules_that_need_none():
    with pytest.raises(ValueError, match=r"needs dataloader.*'magnitude' or 'even'"):
        make_student(_teacher(), num_layers=2, hidden_size=24, selection="importance")
