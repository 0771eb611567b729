"""Entity-level precision, recall and F1 of tag sequences, as seqeval computes them, offline.

`evaluate.load("seqeval")` fetches its script from the Hub, and the `seqeval` package is one more dependency for
thirty lines of rules, so hf-kd carries them. Chunks are read with the CoNLL-2000 `conlleval` rules that seqeval's
default mode uses: a chunk starts at `B-X` (or `S-X`), or at `I-X` / `E-X` after an `O` or a tag of another type,
and ends before the next tag that starts a chunk, an `O`, or a tag of another type. So IOB1, IOB2 and IOBES tags
all work, and a stray `I-PER` after `O` counts as the start of a `PER` entity, as in conlleval.

A predicted entity is correct when its type, first and last token equal a gold entity's.

    compute_entity_metrics([["B-PER", "I-PER", "O"]], [["B-PER", "O", "O"]])
    # {"precision": 0.0, "recall": 0.0, "f1": 0.0, "accuracy": 0.666...}
"""

from __future__ import annotations

from collections.abc import Sequence

Entity = tuple[str, int, int]  # (type, first token, last token)


def _split_tag(tag: str) -> tuple[str, str]:
    """("B", "PER") from "B-PER"; ("O", "") from "O"; a tag without a prefix keeps its first letter as one."""
    if tag in ("O", ""):
        return "O", ""
    return tag[0], tag[1:].split("-", maxsplit=1)[-1] or "_"


def _ends(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    """Whether the chunk holding the previous token ends before this one."""
    if prev_tag in ("E", "S"):
        return True
    if prev_tag in ("B", "I") and tag in ("B", "S", "O"):
        return True
    return prev_tag not in ("O", ".") and prev_type != type_


def _starts(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    """Whether a chunk starts at this token."""
    if tag in ("B", "S"):
        return True
    if prev_tag in ("E", "S", "O") and tag in ("E", "I"):
        return True
    return tag not in ("O", ".") and prev_type != type_


def get_entities(tags: Sequence[str]) -> list[Entity]:
    """The chunks of one tag sequence as (type, first, last), in order."""
    entities: list[Entity] = []
    prev_tag, prev_type, begin = "O", "", 0
    for i, tag in enumerate([*tags, "O"]):  # the sentinel closes a chunk that runs to the end
        tag_, type_ = _split_tag(tag)
        if _ends(prev_tag, tag_, prev_type, type_):
            entities.append((prev_type, begin, i - 1))
        if _starts(prev_tag, tag_, prev_type, type_):
            begin = i
        prev_tag, prev_type = tag_, type_
    return entities


def compute_entity_metrics(
    predictions: Sequence[Sequence[str]], references: Sequence[Sequence[str]]
) -> dict[str, float]:
    """Micro-averaged entity precision, recall and F1 over all sentences, and token accuracy.

    A sentence with no predicted (or gold) entity adds nothing to the precision (recall) denominator; with no
    entities at all the scores are 0, as seqeval's with `zero_division=0`.
    """
    if len(predictions) != len(references):
        raise ValueError(
            f"{len(predictions)} predicted sequences against {len(references)} reference sequences: pass one "
            "prediction per reference sentence"
        )
    predicted = gold = correct = tokens = right = 0
    for k, (pred, ref) in enumerate(zip(predictions, references)):
        if len(pred) != len(ref):
            raise ValueError(
                f"sentence {k} has {len(pred)} predicted tags and {len(ref)} reference tags: align both to the "
                "same words"
            )
        p, g = set(get_entities(pred)), set(get_entities(ref))
        predicted, gold, correct = predicted + len(p), gold + len(g), correct + len(p & g)
        tokens += len(ref)
        right += sum(a == b for a, b in zip(pred, ref))
    precision = correct / predicted if predicted else 0.0
    recall = correct / gold if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "accuracy": right / tokens if tokens else 0.0,
    }
