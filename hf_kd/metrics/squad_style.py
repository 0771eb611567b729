"""Extractive question answering scored as SQuAD v1.1 scores it: exact match and token F1, offline.

`evaluate.load("squad")` fetches its script from the Hub (the `evaluate` wheel ships none), so hf-kd carries the
official rules: answers are normalised (lower case, punctuation and the articles a/an/the removed, whitespace
collapsed), a prediction scores the best exact match and the best F1 over the gold answers of its question, and
both are averaged over questions and given in percent.

`best_answers` turns start and end logits over the features of a question (one feature per doc-stride window of a
long context) into the answer text, as the Transformers question-answering examples do.
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces (the official SQuAD v1.1 normalisation)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(truth))


def token_f1(prediction: str, truth: str) -> float:
    """F1 of the bags of normalised tokens."""
    pred, gold = normalize_answer(prediction).split(), normalize_answer(truth).split()
    common = collections.Counter(pred) & collections.Counter(gold)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def compute_squad_metrics(
    predictions: Mapping[str, str], answers: Mapping[str, Sequence[str]]
) -> dict[str, float]:
    """`exact_match` and `f1` in percent, averaged over the questions of `answers` ({id: [gold texts]}).

    A question without a prediction scores 0. A question without gold answers is left out (SQuAD v1.1 has none).
    """
    scored = {qid: golds for qid, golds in answers.items() if golds}
    if not scored:
        raise ValueError(
            "no question has a gold answer: SQuAD-style scores need answers ({'text': [...], 'answer_start': "
            "[...]}) in the evaluation data"
        )
    em = f1 = 0.0
    for qid, golds in scored.items():
        prediction = predictions.get(qid, "")
        em += max(exact_match(prediction, g) for g in golds)
        f1 += max(token_f1(prediction, g) for g in golds)
    return {"exact_match": 100.0 * em / len(scored), "f1": 100.0 * f1 / len(scored)}


def best_answers(
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    example_ids: Sequence[str],
    offsets: Sequence[Sequence[Any]],
    contexts: Mapping[str, str],
    n_best: int = 20,
    max_answer_length: int = 30,
) -> dict[str, str]:
    """{question id: answer text} from the logits of every feature (one row per feature, (F, L) each).

    Feature f belongs to question `example_ids[f]`; `offsets[f][i]` is the (start, end) character span of token
    i in the context, or None for tokens outside the context (question, special tokens, padding). Per question,
    the span with the highest start + end logit over all its features wins, among spans that lie in the context,
    start no later than they end, and are at most `max_answer_length` tokens long.
    """
    best: dict[str, tuple[float, str]] = {}
    for f, qid in enumerate(example_ids):
        feature_offsets = offsets[f]
        n = len(feature_offsets)
        starts = np.asarray(start_logits[f][:n], dtype=np.float64)  # (L,)
        ends = np.asarray(end_logits[f][:n], dtype=np.float64)  # (L,)
        for i in np.argsort(starts)[::-1][:n_best]:
            if feature_offsets[i] is None:
                continue
            for j in np.argsort(ends)[::-1][:n_best]:
                if feature_offsets[j] is None or j < i or j - i + 1 > max_answer_length:
                    continue
                score = float(starts[i] + ends[j])
                if qid not in best or score > best[qid][0]:
                    text = contexts[qid][feature_offsets[i][0] : feature_offsets[j][1]]
                    best[qid] = (score, text)
    return {qid: text for qid, (_, text) in best.items()}
