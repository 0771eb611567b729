"""Fixed distillation runs, one per head and teacher-target kind, whose logged loss components are pinned.

`tests/data/objective_golden.json` holds the values these cases gave before the distillation objective was moved
out of the trainer (`python tests/golden_cases.py` rewrites it). `test_objective.py` checks that the trainer still
logs the same components, in training (first step, before any update) and in evaluation, to rel 1e-6.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conftest import VOCAB, make_args, tiny_model  # noqa: E402

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "objective_golden.json")


def _rows(kind: str, n: int = 6, L: int = 9, C: int = 3, seed: int = 0) -> dict[str, list]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (n, L), generator=g)
    mask = torch.zeros(n, L, dtype=torch.long)
    for b in range(n):
        mask[b, : L - (b % 4)] = 1
    ids = ids.masked_fill(mask == 0, 0)
    rows = {"input_ids": ids.tolist(), "attention_mask": mask.tolist()}
    if kind == "sequence":
        rows["labels"] = torch.randint(0, C, (n,), generator=g).tolist()
    elif kind == "token":
        labels = torch.randint(0, C, (n, L), generator=g).masked_fill(mask == 0, -100)
        labels[:, 2] = -100
        rows["labels"] = labels.tolist()
    elif kind == "mlm":
        keep = (torch.rand(n, L, generator=g) < 0.4) & mask.bool()
        keep[:, 1] = True
        rows["labels"] = torch.where(keep, ids, torch.full_like(ids, -100)).tolist()
    elif kind == "causal":
        rows["labels"] = ids.masked_fill(mask == 0, -100).tolist()
    elif kind == "qa":
        rows["start_positions"] = torch.randint(0, 5, (n,), generator=g).tolist()
        rows["end_positions"] = (torch.tensor(rows["start_positions"]) + 1).tolist()
    return rows


def _sharpen(teacher):
    """Random tiny heads give near-uniform logits and a KD term near 0; a larger head gives a real one."""
    torch.manual_seed(3)
    with torch.no_grad():
        for name, p in teacher.named_parameters():
            if name.startswith(("classifier.", "qa_outputs.")):
                p.mul_(40.0)
            elif name == "cls.predictions.bias":
                p.copy_(3.0 * torch.randn_like(p))
    return teacher


def _pair(cls_name: str, **kw):
    if cls_name.endswith("QuestionAnswering"):
        kw.setdefault("num_labels", 2)
    teacher = tiny_model(cls_name, seed=1, num_layers=3, hidden=48, heads=4, **kw)
    student = tiny_model(cls_name, seed=2, num_layers=2, hidden=32, heads=4, **kw)
    return _sharpen(teacher), student


def _causal_pair():
    from transformers import BertConfig, BertLMHeadModel

    def build(seed, layers, hidden):
        torch.manual_seed(seed)
        cfg = BertConfig(
            vocab_size=VOCAB,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=4,
            intermediate_size=hidden * 2,
            max_position_embeddings=64,
            is_decoder=True,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
        return BertLMHeadModel(cfg)

    return _sharpen(build(1, 3, 48)), build(2, 2, 32)


HEAD_CLASSES = {
    "sequence": "BertForSequenceClassification",
    "token": "BertForTokenClassification",
    "qa": "BertForQuestionAnswering",
    "mlm": "BertForMaskedLM",
}

# name: (data kind, model pair, distillation settings, teacher-target kind)
CASES = {
    "sequence": ("sequence", "sequence", dict(temperature=2.5, alpha=0.3), "live"),
    "sequence_layers": (
        "sequence",
        "sequence",
        dict(temperature=2.0, alpha=0.5, hidden_weight=1.0, attention_weight=0.5, embedding_weight=0.3),
        "live",
    ),
    "sequence_cosine": (
        "sequence",
        "sequence",
        dict(temperature=2.0, alpha=0.5, hidden_weight=1.0, hidden_loss="cosine", layer_map="1:2,2:3"),
        "live",
    ),
    "token": ("token", "token", dict(temperature=3.0, alpha=0.4), "live"),
    "token_layers": ("token", "token", dict(temperature=2.0, alpha=0.4, hidden_weight=0.7), "live"),
    "qa": ("qa", "qa", dict(temperature=2.0, alpha=0.6), "live"),
    "mlm": ("mlm", "mlm", dict(temperature=2.0, alpha=0.5), "live"),
    "mlm_all": ("mlm", "mlm", dict(temperature=2.0, alpha=0.5, kd_positions="all"), "live"),
    "causal": ("causal", "causal", dict(temperature=1.5, alpha=0.5), "live"),
    "sequence_ensemble": ("sequence", "sequence", dict(temperature=2.0, alpha=0.7), "ensemble"),
    "qa_ensemble": ("qa", "qa", dict(temperature=2.0, alpha=0.7), "ensemble"),
    "sequence_cached": ("sequence", "sequence", dict(temperature=2.0, alpha=0.5), "cached"),
    "token_cached": ("token", "token", dict(temperature=2.0, alpha=0.5), "cached"),
    "qa_cached": ("qa", "qa", dict(temperature=2.0, alpha=0.5), "cached"),
    "mlm_topk": ("mlm", "mlm", dict(temperature=2.0, alpha=0.5), "topk"),
}


def build_case(name: str, out: str):
    """(trainer, dataset) for one case: a fresh teacher/student pair and 6 fixed rows."""
    from datasets import Dataset

    from hf_kd import DistillationTrainer, cache_teacher_outputs

    kind, head, settings, target = CASES[name]
    teacher, student = _causal_pair() if head == "causal" else _pair(HEAD_CLASSES[head])
    data = Dataset.from_dict(_rows(kind))
    teacher_model = teacher
    if target == "ensemble":
        second = _causal_pair()[0] if head == "causal" else _pair(HEAD_CLASSES[head])[0]
        torch.manual_seed(7)
        for p in second.parameters():
            p.data.add_(0.05 * torch.randn_like(p))
        teacher_model = [teacher, second]
    elif target in ("cached", "topk"):
        top_k = 5 if target == "topk" else None
        # float32 top-k storage, as the cache stored it when these values were pinned (float16 is now the default).
        extra = dict(top_k=top_k, temperature=settings["temperature"], topk_dtype="float32") if top_k else {}
        data = cache_teacher_outputs(teacher, data, batch_size=6, **extra)
        teacher_model = None
    args = make_args(
        out,
        per_device_train_batch_size=6,
        per_device_eval_batch_size=6,
        max_steps=1,
        learning_rate=1e-3,
        **settings,
    )
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher_model,
        teacher_weights=[0.6, 0.4] if target == "ensemble" else None,
        args=args,
        train_dataset=data,
        eval_dataset=data,
    )
    return trainer, data


def run_case(name: str) -> dict[str, float]:
    """Evaluation components (before training) and the first training step's logged components."""
    with tempfile.TemporaryDirectory() as out:
        trainer, _ = build_case(name, out)
        metrics = trainer.evaluate()
        trainer.train()
        logged = trainer.state.log_history[0]
    result = {k: v for k, v in metrics.items() if k.startswith("eval_loss") or k == "eval_teacher_agreement"}
    result.update({f"train_{k}": v for k, v in logged.items() if k == "loss" or k.startswith("loss_")})
    return result


if __name__ == "__main__":
    golden = {name: run_case(name) for name in CASES}
    os.makedirs(os.path.dirname(GOLDEN), exist_ok=True)
    with open(GOLDEN, "w") as f:
        json.dump(golden, f, indent=1, sort_keys=True)
    print(json.dumps(golden, indent=1, sort_keys=True))
