"""Fuzz of the configuration surface: random combinations of DistillationConfig values, with tiny teacher/student
pairs (same or different hidden sizes and depths, sometimes different label counts, sequence- or token-level
heads), either train for one step or raise one of our documented errors -- a `ValueError` raised by hf_kd whose
message names the offending setting -- and never an exception from deep inside PyTorch or Python.

Fixed budget: CASES cases from a seeded `random.Random`, the same in every run. `-s` prints the outcome counts.
"""

from __future__ import annotations

import math
import os
import random
import traceback
from collections import Counter

import pytest
import torch
from conftest import tiny_bert_config, tiny_classification_dataset

import hf_kd
from hf_kd import DistillationConfig, DistillationTrainer

CASES = 40
SEED = 3  # chosen so that the 40 cases mix all three outcomes (see the printed counts)
HF_KD_DIR = os.path.dirname(os.path.abspath(hf_kd.__file__))
NAN, INF = float("nan"), float("inf")

# name: (values that should train, values that must be refused or that a model pair may refuse)
CHOICES = {
    "alpha": ([0.0, 0.5, 1.0, 0.9], [-0.1, 1.5, NAN, INF, "0.5"]),
    "temperature": ([1.0, 2.0, 4.0, 0.5, 20.0], [0.0, -1.0, NAN, INF]),
    "alpha_schedule": (["constant", "linear", "cosine"], ["exponential", None]),
    "alpha_final": ([None, 0.0, 0.2, 1.0], [1.2, NAN]),
    "temperature_schedule": (["constant", "linear", "cosine"], ["step"]),
    "temperature_final": ([None, 1.0, 8.0], [0.0, -2.0, INF, NAN]),
    "hidden_weight": ([0.0, 0.5, 1.0], [-1.0, NAN, INF]),
    "attention_weight": ([0.0, 1.0], [-0.5, INF]),
    "embedding_weight": ([0.0, 1.0], [-2.0, NAN]),
    "hidden_loss": (["mse", "cosine"], ["l1", "MSE", None]),
    "layer_map": (
        ["uniform", "last", {1: 1}, {0: 0, 1: 1}, "1:1", '{"1": 1}'],
        [{3: 1}, {1: 9}, {-1: 1}, {}, "garbage", "{not json", "1:2:3", "1:x", {"a": 1}, "[1, 2]", 3, None],
    ),
    "kd_positions": (["labelled", "all"], ["some"]),
    "teacher_dtype": (["auto", "float32", "bfloat16", "float16"], ["int8"]),
    "nonfinite_policy": (["raise", "skip"], ["ignore"]),
    "projection_init": (["xavier", "identity"], ["zeros"]),
}
# Words one of which a message about a setting must contain: the setting's name, or the model it concerns.
NAMED = tuple(CHOICES) + ("teacher", "student", "layer", "label")


def _case(rng: random.Random) -> tuple[dict, dict]:
    # A few fields per case, mostly with sensible values, so that one bad value is not masked by another and
    # the combinations that do train are many and varied.
    config = {}
    for name, (good, bad) in CHOICES.items():
        if rng.random() < 0.4:
            config[name] = rng.choice(bad) if rng.random() < 0.12 else rng.choice(good)
    for kind, finals in (("alpha", [0.0, 0.2, 1.0]), ("temperature", [1.0, 8.0])):
        # A schedule mostly comes with its end value, else most cases would stop at that one error.
        if config.get(f"{kind}_schedule") in ("linear", "cosine") and f"{kind}_final" not in config:
            if rng.random() < 0.8:
                config[f"{kind}_final"] = rng.choice(finals)
    models = {
        "token": rng.random() < 0.25,
        "student_layers": rng.choice([1, 2]),
        "teacher_layers": rng.choice([1, 2, 3]),
        "teacher_hidden": rng.choice([32, 32, 48]),
        "teacher_labels": 3 if rng.random() < 0.85 else 2,
    }
    return config, models


def _models(spec: dict) -> tuple[torch.nn.Module, torch.nn.Module]:
    import transformers

    cls = getattr(
        transformers, "BertForTokenClassification" if spec["token"] else "BertForSequenceClassification"
    )
    torch.manual_seed(0)
    student = cls(tiny_bert_config(num_layers=spec["student_layers"], hidden=32))
    torch.manual_seed(1)
    teacher = cls(
        tiny_bert_config(
            num_layers=spec["teacher_layers"],
            hidden=spec["teacher_hidden"],
            num_labels=spec["teacher_labels"],
        )
    )
    return student, teacher


def _dataset(token: bool):
    data = tiny_classification_dataset(4, seq_len=8, seed=5)
    if not token:
        return data
    labels = [[int(i % 3) if m else -100 for i, m in enumerate(mask)] for mask in data["attention_mask"]]
    return data.remove_columns("labels").add_column("labels", labels)


def _assert_documented(err: BaseException, where: str) -> str:
    """Our error: a ValueError raised in hf_kd's own code, naming a setting or a model."""
    frames = traceback.extract_tb(err.__traceback__)
    origin = frames[-1].filename if frames else "?"
    assert isinstance(err, ValueError), f"{where}: {type(err).__name__} from {origin}: {err}"
    assert os.path.abspath(origin).startswith(HF_KD_DIR), f"{where}: raised in {origin}, not hf_kd: {err!r}"
    message = str(err)
    assert any(word in message for word in NAMED), f"{where}: message names no setting: {message!r}"
    return type(err).__name__


@pytest.mark.slow
def test_random_configurations_train_a_step_or_raise_our_errors(tmp_path):
    rng = random.Random(SEED)
    outcomes: Counter[str] = Counter()
    for i in range(CASES):
        config, spec = _case(rng)
        where = f"case {i}: {config} {spec}"
        try:
            args = DistillationConfig(
                output_dir=str(tmp_path / f"c{i}"),
                max_steps=1,
                per_device_train_batch_size=2,
                report_to=[],
                use_cpu=True,
                save_strategy="no",
                disable_tqdm=True,
                logging_steps=1,
                **config,
            )
        except Exception as err:  # noqa: BLE001 -- the assertion below is the test
            outcomes[f"config rejected ({_assert_documented(err, where)})"] += 1
            continue
        student, teacher = _models(spec)
        try:
            trainer = DistillationTrainer(
                model=student, args=args, teacher_model=teacher, train_dataset=_dataset(spec["token"])
            )
        except Exception as err:  # noqa: BLE001
            outcomes[f"trainer rejected ({_assert_documented(err, where)})"] += 1
            continue
        before = [p.detach().clone() for p in student.parameters()]
        trainer.train()
        assert trainer.state.global_step == 1, where
        losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
        assert losses and all(math.isfinite(v) for v in losses), where
        after = list(student.parameters())
        assert all(torch.isfinite(p).all() for p in after), where
        assert any(not torch.equal(a, b) for a, b in zip(after, before)), f"{where}: the step changed nothing"
        outcomes["trained one step"] += 1
    print(f"\nconfig fuzz: {CASES} cases: {dict(sorted(outcomes.items()))}")
    assert sum(outcomes.values()) == CASES
    # The budget exercises both sides: configurations that train and ones that are refused.
    assert outcomes["trained one step"] >= 5
    assert CASES - outcomes["trained one step"] >= 5
