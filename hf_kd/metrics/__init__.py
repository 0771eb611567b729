"""Metrics that load offline.

`evaluate.load("accuracy")` fetches its script from the Hub, and the `evaluate` wheel ships none. So hf-kd ships
the scripts it uses, as `evaluate.Metric` subclasses computed by scikit-learn, in `hf_kd/metrics/<name>/<name>.py`,
and loads them by absolute path through `evaluate.load`.

    from hf_kd.metrics import compute_classification_metrics
    trainer = DistillationTrainer(..., compute_metrics=compute_classification_metrics)
    # eval_accuracy, eval_f1 (macro F1)
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import numpy as np

METRICS_DIR = os.path.dirname(os.path.abspath(__file__))
CLASSIFICATION_METRICS = ("accuracy", "f1")


def available_metrics() -> list[str]:
    """Names of the metric scripts shipped with hf-kd."""
    return sorted(
        name
        for name in os.listdir(METRICS_DIR)
        if os.path.isfile(os.path.join(METRICS_DIR, name, f"{name}.py"))
    )


def metric_path(name: str) -> str:
    """Absolute path of the folder holding the metric script `name`."""
    path = os.path.join(METRICS_DIR, name)
    if not os.path.isfile(os.path.join(path, f"{name}.py")):
        raise ValueError(
            f"hf-kd ships no metric {name!r}; it ships {available_metrics()}. For another metric, pass "
            "evaluate.load('/absolute/path/to/your_metric_dir') or a compute_metrics function of your own"
        )
    return path


def load_metric(name: str, **kwargs: Any) -> Any:
    """`evaluate.load` of a shipped metric script, by absolute path (no Hub access).

    Metrics are kept in memory with a unique experiment id, so several processes (DDP) computing at the same
    time do not share cache files.
    """
    import evaluate

    kwargs.setdefault("keep_in_memory", True)
    kwargs.setdefault("experiment_id", uuid.uuid4().hex)
    return evaluate.load(metric_path(name), **kwargs)


def load_classification_metrics(names: tuple[str, ...] = CLASSIFICATION_METRICS) -> Any:
    """The shipped metrics combined with `evaluate.combine` (accuracy and macro F1 by default)."""
    import evaluate

    return evaluate.combine([load_metric(name) for name in names])


def compute_classification_metrics(eval_pred: Any) -> dict[str, float]:
    """`compute_metrics` for `Trainer`: accuracy and macro F1 of the argmax of the logits.

    Accepts a `transformers.EvalPrediction` or a `(predictions, label_ids)` pair; logits of shape (N, C), or
    (N, L, C) for token-level heads, where positions labelled -100 are left out.
    """
    predictions, labels = eval_pred[0], eval_pred[1]
    if isinstance(predictions, tuple):  # models that also return hidden states: logits come first
        predictions = predictions[0]
    predictions = np.asarray(predictions)
    labels = np.asarray(labels)
    if predictions.ndim > labels.ndim:
        predictions = predictions.argmax(-1)  # (N, C) -> (N,)
    keep = labels != -100
    predictions, labels = predictions[keep], labels[keep]
    metrics = load_classification_metrics()
    result = metrics.compute(predictions=predictions.tolist(), references=labels.tolist())
    return {name: float(value) for name, value in result.items()}
