"""hf_kd.export: ONNX float32 and int8 export of a classifier, with a parity check and the card's deployment table."""

from __future__ import annotations

import csv
import os

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from hf_kd.cli import main  # noqa: E402
from hf_kd.export import (  # noqa: E402
    OnnxClassifier,
    export_onnx,
    onnx_input_names,
    parity_check,
    quantize_onnx_int8,
)
from hf_kd.model_card import DEPLOYMENT_START  # noqa: E402

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(95)]


def _tiny(seed: int = 0, hidden: int = 64, layers: int = 2) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(WORDS),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=4 * hidden,
        max_position_embeddings=64,
        num_labels=3,
        id2label={0: "a", 1: "b", 2: "c"},
        label2id={"a": 0, "b": 1, "c": 2},
    )
    return BertForSequenceClassification(config).eval()


def _tokenizer() -> BertTokenizer:
    return BertTokenizer(vocab={w: i for i, w in enumerate(WORDS)})


def _texts(n: int, seed: int = 0) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    return [
        " ".join(
            f"w{int(i)}"
            for i in torch.randint(0, 95, (int(torch.randint(3, 20, (1,), generator=g)),), generator=g)
        )
        for _ in range(n)
    ]


def test_inputs_are_those_the_model_uses():
    model = _tiny()
    assert onnx_input_names(model, _tokenizer()) == ["input_ids", "attention_mask", "token_type_ids"]
    model.config.type_vocab_size = 1  # RoBERTa-like: one token type, so no token_type_ids input
    assert onnx_input_names(model) == ["input_ids", "attention_mask"]


def test_float_onnx_logits_match_pytorch_at_other_batch_sizes_and_lengths(tmp_path):
    model, tokenizer = _tiny(), _tokenizer()
    path = export_onnx(model, tmp_path / "model.onnx", tokenizer)
    session = OnnxClassifier(path)
    for texts in (_texts(1), _texts(5, seed=1)):  # the export used batch 2, length 8: the axes are dynamic
        enc = tokenizer(texts, padding=True, return_tensors="pt")
        with torch.no_grad():
            expected = model(**enc).logits
        got = session(**enc)
        assert got.shape == expected.shape
        assert torch.allclose(got, expected, atol=1e-4, rtol=0)


def test_int8_runs_is_smaller_and_parity_reports_each_format(tmp_path):
    model, tokenizer = _tiny(hidden=128), _tokenizer()
    path = export_onnx(model, tmp_path / "model.onnx", tokenizer)
    int8 = quantize_onnx_int8(path, tmp_path / "model_int8.onnx")
    assert os.path.getsize(int8) < 0.5 * os.path.getsize(path)
    texts = _texts(20)
    labels = [i % 3 for i in range(20)]
    # one batch, as below: int8 activation scales depend on the batch
    report = parity_check(model, {"float": path, "int8": int8}, tokenizer, texts, labels, batch_size=20)
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        predictions = model(**enc).logits.argmax(-1)
    expected_accuracy = float((predictions == torch.tensor(labels)).float().mean())
    assert report["pytorch"]["accuracy"] == pytest.approx(expected_accuracy)
    assert report["float"]["max_abs_logit_diff"] < 1e-4
    assert report["float"]["argmax_agreement"] == 1.0
    assert report["float"]["accuracy"] == pytest.approx(expected_accuracy)
    int8_logits = OnnxClassifier(int8)(**enc)
    assert report["int8"]["max_abs_logit_diff"] == pytest.approx(
        float((int8_logits - model(**enc).logits.detach()).abs().max()), rel=1e-5
    )
    assert report["int8"]["accuracy"] == pytest.approx(
        float((int8_logits.argmax(-1) == torch.tensor(labels)).float().mean())
    )


def test_export_command_writes_both_files_and_the_cards_deployment_table(tmp_path, capsys):
    folder = tmp_path / "student"
    _tiny(hidden=128).save_pretrained(folder)
    _tokenizer().save_pretrained(folder)
    (folder / "README.md").write_text("# student\n\nexisting card text\n")
    data = tmp_path / "val.csv"
    with open(data, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for i, text in enumerate(_texts(12)):
            writer.writerow([text, "abc"[i % 3]])
    argv = [
        "export",
        str(folder),
        "--format",
        "onnx",
        "--int8",
        "--data",
        str(data),
        "--runs",
        "2",
        "--seq-len",
        "32",
    ]
    assert main(argv) == 0
    assert (folder / "onnx" / "model.onnx").is_file() and (folder / "onnx" / "model_int8.onnx").is_file()
    printed = capsys.readouterr().out
    card = (folder / "README.md").read_text()
    assert card.startswith("# student\n\nexisting card text")
    assert card.count(DEPLOYMENT_START) == 1 and "## Deployment" in card
    for row in (
        "| PyTorch float32 |",
        "| ONNX float32 | `onnx/model.onnx` |",
        "| ONNX int8 | `onnx/model_int8.onnx` |",
    ):
        assert row in printed and row in card
    assert "Parity on 12 examples (val.csv)" in card
    assert main(argv) == 0  # a second export replaces the section
    assert (folder / "README.md").read_text().count(DEPLOYMENT_START) == 1


def test_export_refuses_a_pytorch_int8_model(tmp_path):
    from hf_kd.compression import quantize_dynamic_int8

    with pytest.raises(ValueError, match="int8 layers.*export the float model"):
        export_onnx(quantize_dynamic_int8(_tiny()), tmp_path / "m.onnx")


def test_deployment_table_is_kept_in_the_card_context_for_a_rerendered_card(tmp_path):
    import json

    from hf_kd.model_card import CARD_CONTEXT_FILE, add_deployment_section

    (tmp_path / CARD_CONTEXT_FILE).write_text(json.dumps({"model_name": "s"}))
    deployment = {"rows": [], "data": "x"}
    add_deployment_section(tmp_path, deployment, "| Format |\n|---|")
    context = json.loads((tmp_path / CARD_CONTEXT_FILE).read_text())
    assert context["deployment"] == deployment and context["deployment_table"] == "| Format |\n|---|"
    assert context["model_name"] == "s"
    assert "## Deployment" in (tmp_path / "README.md").read_text()
