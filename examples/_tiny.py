"""Tiny, offline stand-ins for the examples' `--tiny` mode: a word-level tokenizer, tiny BERT teachers built
from configs (random weights, no download), and small synthetic datasets. Real runs never use this file."""

from __future__ import annotations

import os
import random
import tempfile

WORDS = {
    "neg": ["bad", "awful", "poor", "sad", "broken", "slow"],
    "neu": ["table", "chair", "paper", "stone", "window", "door"],
    "pos": ["good", "great", "happy", "fine", "nice", "fast"],
}
FILLER = ["the", "a", "is", "was", "and", "it"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def tiny_tokenizer():
    """A BertTokenizerFast over a 28-word vocabulary, written to a temporary folder."""
    from transformers import BertTokenizerFast

    folder = tempfile.mkdtemp(prefix="hf_kd_tiny_")
    vocab = SPECIAL + FILLER + [w for words in WORDS.values() for w in words]
    path = os.path.join(folder, "vocab.txt")
    with open(path, "w") as f:
        f.write("\n".join(vocab) + "\n")
    return BertTokenizerFast(vocab=path, do_lower_case=True)


def tiny_bert(model_class: str, tokenizer, labels: list[str], num_layers: int = 2, seed: int = 0):
    """A randomly initialised BERT with `num_layers` layers of width 32 and a head over `labels`."""
    import torch
    import transformers

    torch.manual_seed(seed)
    config = transformers.BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={n: i for i, n in enumerate(labels)},
    )
    return getattr(transformers, model_class)(config)


def sentiment_rows(n: int, seed: int = 0) -> dict[str, list]:
    """Sentences whose label is the class of their content words."""
    rng = random.Random(seed)
    labels = list(WORDS)
    rows = {"text": [], "label": []}
    for i in range(n):
        label = i % len(labels)
        words = [rng.choice(WORDS[labels[label]]) for _ in range(3)] + rng.sample(FILLER, 2)
        rng.shuffle(words)
        rows["text"].append(" ".join(words))
        rows["label"].append(label)
    return rows


def tagging_rows(n: int, seed: int = 0) -> dict[str, list]:
    """Word sequences tagged O for filler words and B-NEG / B-NEU / B-POS for content words."""
    rng = random.Random(seed)
    tags = ["O", "B-NEG", "B-NEU", "B-POS"]
    rows = {"tokens": [], "ner_tags": []}
    for _ in range(n):
        tokens, labels = [], []
        for _ in range(rng.randint(4, 8)):
            if rng.random() < 0.5:
                tokens.append(rng.choice(FILLER))
                labels.append(0)
            else:
                k = rng.randrange(3)
                tokens.append(rng.choice(list(WORDS.values())[k]))
                labels.append(k + 1)
        rows["tokens"].append(tokens)
        rows["ner_tags"].append(labels)
    return {**rows, "tag_names": tags}
