"""Attention-head pruning: the requested heads go, the rest of the model is unchanged, it saves and reloads,
and the scores that choose heads match direct computations."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import VOCAB, tiny_classification_dataset, tiny_model

from hf_kd.pruning import (
    head_importance_scores,
    head_magnitude_scores,
    load_pruned_model,
    prune_heads,
)

HIDDEN, HEADS = 32, 4
HEAD_DIM = HIDDEN // HEADS


def _batch(n: int = 6, length: int = 10, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "input_ids": torch.randint(5, VOCAB, (n, length), generator=g),
        "attention_mask": torch.ones(n, length, dtype=torch.long),
        "labels": torch.randint(0, 3, (n,), generator=g),
    }


def _silence_heads(model, heads: dict[int, list[int]]):
    """The reference: a copy whose given heads output zeros (their value rows and biases zeroed), which is
    what removing them from the output projection's input means."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        for layer, layer_heads in heads.items():
            value = model.bert.encoder.layer[layer].attention.self.value
            for h in layer_heads:
                value.weight[h * HEAD_DIM : (h + 1) * HEAD_DIM] = 0
                value.bias[h * HEAD_DIM : (h + 1) * HEAD_DIM] = 0
    return model


def _n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def test_pruning_removes_exactly_the_requested_heads():
    model = tiny_model().eval()
    reference = _silence_heads(model, {0: [1, 3], 1: [0]})
    before = _n_params(model)

    removed = prune_heads(model, {0: [1, 3], 1: [0]})

    assert removed == {0: [1, 3], 1: [0]}
    assert {int(k): v for k, v in model.config.pruned_heads.items()} == {0: [1, 3], 1: [0]}
    attn0, attn1 = (model.bert.encoder.layer[i].attention for i in (0, 1))
    for name in ("query", "key", "value"):
        assert getattr(attn0.self, name).weight.shape == (2 * HEAD_DIM, HIDDEN)
        assert getattr(attn1.self, name).weight.shape == (3 * HEAD_DIM, HIDDEN)
    assert attn0.output.dense.weight.shape == (HIDDEN, 2 * HEAD_DIM)
    assert attn1.output.dense.weight.shape == (HIDDEN, 3 * HEAD_DIM)
    # Per head: query/key/value lose head_dim rows of hidden weights plus head_dim biases each, the output
    # projection loses head_dim columns of hidden weights.
    per_head = 3 * (HEAD_DIM * HIDDEN + HEAD_DIM) + HIDDEN * HEAD_DIM
    assert before - _n_params(model) == 3 * per_head == 3 * 1048

    batch = _batch()
    with torch.no_grad():
        got = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        want = reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_heads_are_numbered_as_in_the_unpruned_model_across_calls():
    model = tiny_model().eval()
    reference = _silence_heads(model, {0: [1, 2]})
    prune_heads(model, {0: [1]})
    prune_heads(model, {0: [2, 1]})  # 1 is already gone: only 2 is new
    assert {int(k): v for k, v in model.config.pruned_heads.items()} == {0: [1, 2]}
    batch = _batch()
    with torch.no_grad():
        torch.testing.assert_close(
            model(input_ids=batch["input_ids"]).logits,
            reference(input_ids=batch["input_ids"]).logits,
            rtol=1e-5,
            atol=1e-6,
        )


def test_pruned_model_saves_and_reloads_with_its_shape(tmp_path):
    model = tiny_model().eval()
    prune_heads(model, {0: [0, 2], 1: [3]})
    model.save_pretrained(tmp_path)

    reloaded = load_pruned_model(tmp_path)

    assert reloaded.bert.encoder.layer[0].attention.self.query.weight.shape == (2 * HEAD_DIM, HIDDEN)
    assert reloaded.bert.encoder.layer[1].attention.output.dense.weight.shape == (HIDDEN, 3 * HEAD_DIM)
    assert {int(k): v for k, v in reloaded.config.pruned_heads.items()} == {0: [0, 2], 1: [3]}
    batch = _batch()
    with torch.no_grad():
        assert torch.equal(
            model(input_ids=batch["input_ids"]).logits, reloaded(input_ids=batch["input_ids"]).logits
        )


def test_a_layer_keeps_at_least_one_head():
    model = tiny_model()
    with pytest.raises(ValueError, match="no head"):
        prune_heads(model, {1: [0, 1, 2, 3]})
    with pytest.raises(ValueError, match="layers 0 to 1"):
        prune_heads(model, {2: [0]})
    with pytest.raises(ValueError, match="heads are numbered 0 to 3"):
        prune_heads(model, {0: [4]})


def test_magnitude_scores_are_the_norm_of_each_heads_weight_slices():
    model = tiny_model(seed=3)
    scores = head_magnitude_scores(model)
    attn = model.bert.encoder.layer[1].attention
    h = 2
    rows = slice(h * HEAD_DIM, (h + 1) * HEAD_DIM)
    direct = torch.cat(
        [
            attn.self.query.weight[rows].flatten(),
            attn.self.key.weight[rows].flatten(),
            attn.self.value.weight[rows].flatten(),
            attn.output.dense.weight[:, rows].flatten(),
        ]
    ).norm()
    assert scores.shape == (2, HEADS)
    torch.testing.assert_close(scores[1, h], direct.detach(), rtol=1e-5, atol=0)

    # A number of heads: the globally smallest ones go.
    with torch.no_grad():
        model.bert.encoder.layer[0].attention.self.key.weight[3 * HEAD_DIM : 4 * HEAD_DIM] *= 0.01
    assert prune_heads(model, 1, method="magnitude") == {0: [3]}
    assert torch.isnan(head_magnitude_scores(model)[0, 3])  # gone heads never score again


def test_importance_is_the_gradient_of_the_loss_wrt_a_head_gate():
    """Michel et al.'s score |dL/d gate_h| against a finite difference: scaling head h's value rows and bias
    by s scales its context exactly by s, so dL/ds at s = 1 is dL/d gate_h."""
    model = tiny_model(seed=1).double().eval()
    batch = _batch(n=8, seed=2)
    scores = head_importance_scores(model, [batch], normalize=False)

    def loss_with_head_scaled(layer: int, head: int, s: float) -> float:
        m = copy.deepcopy(model)
        value = m.bert.encoder.layer[layer].attention.self.value
        with torch.no_grad():
            value.weight[head * HEAD_DIM : (head + 1) * HEAD_DIM] *= s
            value.bias[head * HEAD_DIM : (head + 1) * HEAD_DIM] *= s
            return m(**batch).loss.item()

    eps = 1e-4
    for layer, head in [(0, 0), (0, 3), (1, 2)]:
        fd = (loss_with_head_scaled(layer, head, 1 + eps) - loss_with_head_scaled(layer, head, 1 - eps)) / (
            2 * eps
        )
        assert scores[layer, head].item() == pytest.approx(abs(fd), rel=1e-3, abs=1e-7)
    assert all(p.grad is None for p in model.parameters())  # scoring leaves parameter gradients alone

    normalized = head_importance_scores(model, [batch])
    torch.testing.assert_close(normalized, scores / scores.norm(dim=1, keepdim=True), rtol=1e-6, atol=1e-9)


def test_prune_by_importance_takes_the_least_important_heads():
    model = tiny_model(seed=1)
    batch = _batch(n=8, seed=2)
    scores = head_importance_scores(model, [batch])
    removed = prune_heads(model, 3, method="importance", dataloader=[batch])
    flat = sorted((scores[layer, h].item(), layer, h) for layer in range(2) for h in range(HEADS))
    expected: dict[int, list[int]] = {}
    for _, layer, h in flat[:3]:
        expected.setdefault(layer, []).append(h)
    assert removed == {layer: sorted(v) for layer, v in expected.items()}
    with pytest.raises(ValueError, match="dataloader"):
        prune_heads(tiny_model(), 1, method="importance")


@pytest.mark.slow
def test_distillation_from_the_unpruned_model_trains_the_pruned_one(tmp_out):
    from hf_kd import DistillationConfig, DistillationTrainer

    teacher = tiny_model(seed=0)
    student = copy.deepcopy(teacher)
    prune_heads(student, {0: [0, 1], 1: [2]})
    before = {k: v.clone() for k, v in student.state_dict().items()}
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    args = DistillationConfig(
        output_dir=tmp_out,
        teacher_dtype="float32",  # compared with float32 runs; auto has its own tests
        max_steps=3,
        per_device_train_batch_size=8,
        learning_rate=1e-2,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
        temperature=2.0,
        alpha=0.5,
    )
    DistillationTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=tiny_classification_dataset(16)
    ).train()
    after = student.state_dict()
    assert after["bert.encoder.layer.0.attention.self.query.weight"].shape == (2 * HEAD_DIM, HIDDEN)
    assert not torch.equal(
        before["bert.encoder.layer.0.attention.self.query.weight"],
        after["bert.encoder.layer.0.attention.self.query.weight"],
    )
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in teacher_before.items())
