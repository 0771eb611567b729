"""Measuring compression: parameter counts and sizes against independent arithmetic, int8 quantization
against the float model, the teacher-vs-student comparison and the `hf-kd report` command. No timing is
asserted: latencies are only checked for their bookkeeping (keys, throughput = batch / median)."""

from __future__ import annotations

import argparse
import json
import os
import struct

import pytest
import torch
from conftest import LABELS, VOCAB, tiny_bert_config, tiny_model

from hf_kd.compression import (
    ModelMeasurement,
    add_report_arguments,
    compare_models,
    count_parameters,
    format_comparison_table,
    load_model,
    load_quantized,
    measure_model,
    measure_models,
    model_size_bytes,
    quantize_dynamic_int8,
    run_report_command,
    save_quantized,
)
from hf_kd.pruning import prune_heads

TYPE_VOCAB = 2  # BertConfig's default type_vocab_size
MAX_POSITIONS = 64


def bert_classifier_parameters(layers: int, hidden: int, intermediate: int, classes: int) -> tuple[int, int]:
    """(total, non-embedding) parameters of BertForSequenceClassification, counted by hand."""
    embedding_tables = (VOCAB + MAX_POSITIONS + TYPE_VOCAB) * hidden
    embeddings = embedding_tables + 2 * hidden  # + LayerNorm
    per_layer = (
        4 * (hidden * hidden + hidden)  # query, key, value, attention output
        + 2 * hidden  # attention LayerNorm
        + hidden * intermediate
        + intermediate  # intermediate dense
        + intermediate * hidden
        + hidden  # output dense
        + 2 * hidden  # output LayerNorm
    )
    pooler = hidden * hidden + hidden
    classifier = hidden * classes + classes
    total = embeddings + layers * per_layer + pooler + classifier
    return total, total - embedding_tables


def test_parameter_counts_match_the_architecture():
    model = tiny_model(num_layers=3, hidden=32)
    assert count_parameters(model) == bert_classifier_parameters(3, 32, 64, 3)
    # int8 weights count by their number of elements, like the float weights they replace.
    assert count_parameters(quantize_dynamic_int8(model)) == bert_classifier_parameters(3, 32, 64, 3)
    assert count_parameters(quantize_dynamic_int8(model, embeddings=True)) == bert_classifier_parameters(
        3, 32, 64, 3
    )


def test_size_is_the_safetensors_file_float32_data_plus_header(tmp_path):
    model = tiny_model(num_layers=2, hidden=32)
    total, _ = bert_classifier_parameters(2, 32, 64, 3)
    size = model_size_bytes(model)
    # A safetensors file is an 8-byte little-endian header length, the JSON header, then the raw tensors.
    model.save_pretrained(tmp_path)
    with open(tmp_path / "model.safetensors", "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
    assert size == 8 + header_len + 4 * total


def _trained_a_bit(hidden: int = 64):
    """A tiny classifier trained until its logits separate the classes (label = first token id mod 3), so
    that int8 rounding has real margins to respect and a broken quantization would flip predictions."""
    torch.manual_seed(0)
    from transformers import BertForSequenceClassification

    model = BertForSequenceClassification(tiny_bert_config(num_layers=2, hidden=hidden, heads=4))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, VOCAB, (128, 8), generator=g)
    labels = ids[:, 1] % 3
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(30):
        batch = slice((step % 4) * 32, (step % 4 + 1) * 32)
        loss = model(input_ids=ids[batch], labels=labels[batch]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval(), ids, labels


@pytest.mark.slow
def test_int8_predictions_agree_with_float_and_the_file_is_smaller(tmp_path):
    model, ids, labels = _trained_a_bit()
    quantized = quantize_dynamic_int8(model)
    with torch.no_grad():
        float_logits = model(input_ids=ids).logits
        int8_logits = quantized(input_ids=ids).logits
    float_pred = float_logits.argmax(-1)
    assert float_pred.unique().numel() == 3  # the check means something: the model predicts every class
    assert (float_pred == labels).float().mean() > 0.8  # it did learn
    agreement = (int8_logits.argmax(-1) == float_pred).float().mean().item()
    assert agreement >= 0.9
    assert not torch.equal(int8_logits, float_logits)  # the weights really are int8
    # The float model is left as it was.
    assert all(type(m).__name__ != "DynamicQuantizedLinear" for m in model.modules())

    float_size, int8_size = model_size_bytes(model), model_size_bytes(quantized)
    # Linear weights go from 4 bytes to 1; embeddings, LayerNorms and biases stay float32.
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert int8_size < float_size - 2.5 * linear
    # With the word table in int8 too (1 byte per entry plus a float scale and offset per row).
    with_embeddings = quantize_dynamic_int8(model, embeddings=True)
    word = model.get_input_embeddings().weight.numel()
    assert model_size_bytes(with_embeddings) < int8_size - 2.5 * word
    with torch.no_grad():
        agreement = (with_embeddings(input_ids=ids).logits.argmax(-1) == float_pred).float().mean().item()
    assert agreement >= 0.9


def test_int8_save_and_load_give_identical_outputs(tmp_path):
    model = tiny_model(seed=2).eval()
    prune_heads(model, {1: [0, 3]})  # pruned and quantized compose
    quantized = quantize_dynamic_int8(model)
    save_quantized(quantized, tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "hf_kd_int8.json", "int8_state_dict.pt"]

    for reloaded in (load_quantized(tmp_path), load_model(str(tmp_path))):
        ids = torch.randint(5, VOCAB, (4, 10), generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            assert torch.equal(reloaded(input_ids=ids).logits, quantized(input_ids=ids).logits)
        assert reloaded.bert.encoder.layer[1].attention.self.query.weight().shape == (16, 32)
    with pytest.raises(ValueError, match="no int8 layers"):
        save_quantized(model, tmp_path / "float")

    with_embeddings = quantize_dynamic_int8(model, embeddings=True)
    save_quantized(with_embeddings, tmp_path / "emb")
    reloaded = load_quantized(tmp_path / "emb")
    assert type(reloaded.bert.embeddings.word_embeddings).__name__ == "Embedding"  # the quantized one
    assert type(reloaded.bert.embeddings.word_embeddings).__module__.startswith("torch.ao.nn.quantized")
    ids = torch.randint(5, VOCAB, (4, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids).logits, with_embeddings(input_ids=ids).logits)


def test_measure_model_bookkeeping():
    model = tiny_model().train()
    m = measure_model(model, "tiny", batch_sizes=(1, 3), seq_len=16, warmup=1, runs=2, device="cpu")
    assert (m.name, m.seq_len, m.device, m.threads) == ("tiny", 16, "cpu", torch.get_num_threads())
    assert (m.num_parameters, m.num_non_embedding_parameters) == bert_classifier_parameters(2, 32, 64, 3)
    assert m.size_bytes == model_size_bytes(model)
    assert sorted(m.latency_ms) == [1, 3] and all(v > 0 for v in m.latency_ms.values())
    for b in (1, 3):
        assert m.throughput[b] == pytest.approx(b * 1000.0 / m.latency_ms[b])
    assert model.training  # mode restored
    assert json.loads(json.dumps(m.to_dict()))["latency_ms"].keys() == {"1", "3"}

    with pytest.raises(ValueError, match="max_position_embeddings=64"):
        measure_model(model, seq_len=65, runs=1, device="cpu")
    with pytest.raises(ValueError, match="CPU only"):
        measure_model(quantize_dynamic_int8(model), runs=1, device="cuda:0")


def test_time_interleaved_times_every_call_once_per_round(monkeypatch):
    import types

    from hf_kd import compression

    clock, order = [0.0], []
    monkeypatch.setattr(compression, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))

    def call(name, durations):
        it = iter(durations)

        def run():
            order.append(name)
            clock[0] += next(it) / 1000.0

        return run

    # "a" and "b" slow down alike in the third round (a busy moment): both see it.
    times = compression.time_interleaved(
        {"a": call("a", [9, 3, 3, 30, 3]), "b": call("b", [9, 1, 1, 10, 1])}, warmup=1, runs=4
    )
    assert order == ["a", "b"] * 5
    assert times["a"] == pytest.approx([3, 3, 30, 3]) and times["b"] == pytest.approx([1, 1, 10, 1])
    with pytest.raises(ValueError, match="runs=0"):
        compression.time_interleaved({"a": lambda: None}, runs=0)


def test_median_latency_gives_each_runner_its_own_inputs_and_the_median_of_its_rounds(monkeypatch):
    import types

    from hf_kd import compression
    from hf_kd.export import runner_input_names

    clock, seen = [0.0], {}
    monkeypatch.setattr(compression, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))

    class Session:  # an ONNX session stand-in: it names its own inputs
        input_names = ["input_ids", "attention_mask"]

        def __init__(self, durations):
            self.durations = iter(durations)

        def __call__(self, **inputs):
            seen.setdefault("session", set()).add(tuple(sorted(inputs)))
            clock[0] += next(self.durations) / 1000.0

    model = tiny_model(seed=0)  # BERT, type_vocab_size 2: its exported graph takes token_type_ids too
    model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.setdefault("model", set()).add(tuple(sorted(kwargs))) or None,
        with_kwargs=True,
    )
    medians = compression.median_latency(
        {"model": model, "session": Session([50, 4, 8, 6])},
        model.config,
        batch_size=3,
        seq_len=5,
        warmup=1,
        runs=3,
        input_names=runner_input_names,
    )
    assert seen["session"] == {("attention_mask", "input_ids")}
    assert seen["model"] == {("attention_mask", "input_ids", "token_type_ids")}
    assert medians["session"] == pytest.approx(6.0)  # median of the timed 4, 8, 6; the 50 was the warm-up
    assert set(medians) == {"model", "session"}


def test_measure_models_interleaves_the_models_and_keeps_each_ones_bookkeeping():
    teacher, student = tiny_model(seed=0).train(), tiny_model(seed=1, num_layers=1).eval()
    order = []
    for name, model in (("teacher", teacher), ("student", student)):
        model.register_forward_pre_hook(lambda module, args, name=name: order.append(name))
    measured = measure_models(
        {"teacher": teacher, "student": student},
        batch_sizes=(1, 2),
        seq_len=8,
        warmup=1,
        runs=2,
        device="cpu",
    )
    # Per batch size: 1 warm-up round and 2 timed ones, each running the teacher then the student.
    assert order == ["teacher", "student"] * 6
    assert measured["student"].num_parameters == count_parameters(student)[0]
    assert measured["teacher"].size_bytes == model_size_bytes(teacher)
    assert all(sorted(m.latency_ms) == [1, 2] for m in measured.values())
    assert teacher.training and not student.training  # modes restored


def _measurement(name, params, size, latency):
    return ModelMeasurement(
        name, params, params - 10, size, 128, "cpu", latency, {b: b * 1000 / v for b, v in latency.items()}, 2
    )


def test_compare_models_ratios():
    teacher = _measurement("teacher", 1000, 4000, {1: 10.0, 32: 200.0})
    student = _measurement("student", 250, 1000, {1: 4.0, 32: 50.0})
    result = compare_models(teacher, student, teacher_score=0.96, student_score=0.94)
    assert result["parameter_ratio"] == 4.0
    assert result["non_embedding_parameter_ratio"] == pytest.approx(990 / 240)
    assert result["parameters_removed_share"] == 0.75
    assert result["size_ratio"] == 4.0
    assert result["speedup"] == {1: 2.5, 32: 4.0}
    assert result["score_kept"] == pytest.approx(0.94 / 0.96)
    assert "score_kept" not in compare_models(teacher, student)

    table = format_comparison_table([teacher, student], {"teacher": 0.96, "student": 0.94})
    lines = table.splitlines()
    assert lines[0].startswith(
        "| Model | Params | Non-emb. params | Size (MB) | Latency b1 (ms) | Latency b32 (ms)"
    )
    assert lines[3] == "| student | 250 | 240 | 0.00 | 4.00 | 50.00 | 2.50x | 4.00x | 0.9400 | 97.9% |"


def _save_tiny(path, layers: int, seed: int):
    from transformers import BertTokenizer

    model = tiny_model(num_layers=layers, seed=seed)
    model.save_pretrained(path)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(VOCAB - 5)]
    BertTokenizer(vocab={w: i for i, w in enumerate(words)}).save_pretrained(path)
    return model


@pytest.mark.slow
def test_report_prints_counts_and_accuracy_that_match_direct_computation(tmp_path, capsys):
    _save_tiny(tmp_path / "teacher", layers=3, seed=0)
    _save_tiny(tmp_path / "student", layers=1, seed=1)
    g = torch.Generator().manual_seed(0)
    rows = [
        {
            "text": " ".join(f"w{int(i)}" for i in torch.randint(0, 94, (int(n),), generator=g)),
            "label": LABELS[k % 3],
        }
        for k, n in enumerate(torch.randint(3, 12, (10,), generator=g))
    ]
    data = tmp_path / "test.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    parser = add_report_arguments(argparse.ArgumentParser())
    args = parser.parse_args(
        [
            str(tmp_path / "teacher"),
            str(tmp_path / "student"),
            "--data",
            str(data),
            "--int8",
            "--batch-sizes",
            "1",
            "2",
            "--seq-len",
            "16",
            "--runs",
            "1",
            "--warmup",
            "0",
            "--device",
            "cpu",
        ]
    )

    result = run_report_command(args)

    printed = capsys.readouterr().out
    names = [m["name"] for m in result["measurements"]]
    assert names == ["teacher", "student", "student int8"]
    expected = {
        "teacher": bert_classifier_parameters(3, 32, 64, 3),
        "student": bert_classifier_parameters(1, 32, 64, 3),
    }
    expected["student int8"] = expected["student"]
    for m in result["measurements"]:
        assert (m["num_parameters"], m["num_non_embedding_parameters"]) == expected[m["name"]]
        total = expected[m["name"]][0]
        assert f"| {m['name']} | {total / 1e3:.1f}K |" in printed

    # Accuracy, computed one text at a time (no padding) with the saved model and tokenizer.
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    for name in ("teacher", "student"):
        model = AutoModelForSequenceClassification.from_pretrained(tmp_path / name).eval()
        tokenizer = AutoTokenizer.from_pretrained(tmp_path / name)
        with torch.no_grad():
            hits = [
                model(**tokenizer(r["text"], return_tensors="pt")).logits.argmax(-1).item()
                == LABELS.index(r["label"])
                for r in rows
            ]
        assert result["scores"][name] == pytest.approx(sum(hits) / len(rows))
    assert result["comparisons"][0]["parameter_ratio"] == pytest.approx(
        expected["teacher"][0] / expected["student"][0]
    )
