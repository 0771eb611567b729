"""The task pieces written for hf-kd rather than loaded from the Hub: seqeval-style entity scores, SQuAD's exact
match and F1 with the span post-processing, and word-to-sub-token label alignment. Each against values worked out
by hand."""

from __future__ import annotations

import numpy as np
import pytest

from hf_kd.metrics.entities import compute_entity_metrics, get_entities
from hf_kd.metrics.squad_style import best_answers, compute_squad_metrics, normalize_answer, token_f1
from hf_kd.tasks import _b_to_i, align_word_labels


def test_entities_follow_the_conlleval_chunk_rules():
    assert get_entities(["B-PER", "I-PER", "O", "B-LOC"]) == [("PER", 0, 1), ("LOC", 3, 3)]
    # An I- tag after O, or after another type, starts an entity (IOB1 / conlleval).
    assert get_entities(["O", "I-PER", "I-PER", "I-LOC"]) == [("PER", 1, 2), ("LOC", 3, 3)]
    assert get_entities(["B-PER", "B-PER"]) == [("PER", 0, 0), ("PER", 1, 1)]
    assert get_entities(["S-ORG", "B-ORG", "E-ORG"]) == [("ORG", 0, 0), ("ORG", 1, 2)]
    assert get_entities(["O", "O"]) == []


def test_entity_precision_recall_f1_are_micro_averaged_over_sentences():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-ORG", "I-ORG", "O"]]
    pred = [["B-PER", "I-PER", "O", "O"], ["O", "B-ORG", "O", "O"]]
    # Gold: PER 0-1, LOC 3, ORG 1-2. Predicted: PER 0-1 (right), ORG 1-1 (wrong end). 6 of 8 tags agree.
    metrics = compute_entity_metrics(pred, gold)
    assert metrics["precision"] == pytest.approx(1 / 2)
    assert metrics["recall"] == pytest.approx(1 / 3)
    assert metrics["f1"] == pytest.approx(2 * (1 / 2) * (1 / 3) / (1 / 2 + 1 / 3))
    assert metrics["accuracy"] == pytest.approx(6 / 8)


def test_entity_metrics_refuse_misaligned_sentences():
    with pytest.raises(ValueError, match="sentence 0 has 1 predicted tags and 2 reference tags"):
        compute_entity_metrics([["O"]], [["O", "O"]])


def test_squad_normalisation_and_scores():
    assert normalize_answer("The  Cat!") == "cat"
    assert token_f1("the black cat", "a cat") == pytest.approx(2 / 3)  # tokens {black, cat} against {cat}
    metrics = compute_squad_metrics(
        {"q1": "cat", "q2": "dog house"}, {"q1": ["The cat"], "q2": ["house", "big dog house"]}
    )
    # q1: exact. q2: best F1 against "big dog house" (precision 1, recall 2/3) = 0.8, no exact match.
    assert metrics == pytest.approx({"exact_match": 50.0, "f1": 100 * (1 + 0.8) / 2})


def test_best_answer_spans_the_windows_of_a_question_and_skips_tokens_outside_the_context():
    context = "abc def ghi"
    offsets = [
        [None, (0, 3), (4, 7), None],  # window 1: "abc def"
        [None, (4, 7), (8, 11), None],  # window 2: "def ghi"
    ]
    start = np.array(
        [[0.0, 1.0, 0.0, 9.0], [0.0, 0.0, 4.0, 0.0]]
    )  # 9.0 sits on a special token: never chosen
    end = np.array([[0.0, 0.0, 2.0, 0.0], [0.0, 0.0, 3.0, 0.0]])
    # Window 1's best span "abc def" scores 1 + 2; window 2's "ghi" scores 4 + 3 and wins.
    assert best_answers(start, end, ["q", "q"], offsets, {"q": context}) == {"q": "ghi"}
    # An end before the start is not a span: with only window 1, "def" (start 2) cannot end at token 1.
    start1 = np.array([[0.0, 0.0, 5.0, 0.0]])
    end1 = np.array([[0.0, 6.0, 1.0, 0.0]])
    assert best_answers(start1, end1, ["q"], offsets[:1], {"q": context}) == {"q": "def"}


def test_word_labels_reach_the_first_sub_token_or_every_sub_token():
    names = ["O", "B-PER", "I-PER"]
    word_ids = [None, 0, 1, 1, 2, None]  # [CLS] ann good ##ness runs [SEP]
    word_labels = [1, 1, 0]  # ann: B-PER, goodness: B-PER, runs: O
    assert align_word_labels(word_ids, word_labels, None) == [-100, 1, 1, -100, 0, -100]
    # label_all_tokens: the later piece of a B- word gets the matching I- tag, as run_ner does.
    assert _b_to_i(names) == [0, 2, 2]
    assert align_word_labels(word_ids, word_labels, _b_to_i(names)) == [-100, 1, 1, 2, 0, -100]
