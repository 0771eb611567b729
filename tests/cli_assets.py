"""Tiny offline assets for the command-line tests: a word-level tokenizer, tiny BERT teachers of every task built
from configs and saved to a folder, and small data files in each format."""

from __future__ import annotations

import csv
import json
import os
import random
import subprocess
import sys

WORDS = {
    "neg": ["bad", "awful", "poor", "sad"],
    "neu": ["table", "chair", "paper", "stone"],
    "pos": ["good", "great", "happy", "nice"],
}
FILLER = ["the", "a", "is", "was", "and", "it", "what", "word"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
SENTIMENTS = list(WORDS)
TAGS = ["O", "B-NEG", "I-NEG", "B-POS", "I-POS"]
NLI = ["entailment", "not_entailment"]
# Words the tokenizer splits into two pieces ("goodness" -> "good", "##ness"), to exercise label alignment.
SUFFIX = "##ness"


def tiny_tokenizer(folder: str):
    from transformers import BertTokenizerFast

    vocab = SPECIAL + FILLER + [w for words in WORDS.values() for w in words] + [SUFFIX]
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "vocab.txt")
    with open(path, "w") as f:
        f.write("\n".join(vocab) + "\n")
    return BertTokenizerFast(vocab=path, do_lower_case=True)


def save_teacher(
    folder: str,
    model_class: str,
    labels: list[str] | None = None,
    problem_type: str | None = None,
    layers: int = 2,
    seed: int = 0,
) -> str:
    """A random tiny BERT with a `model_class` head over `labels`, saved with the tokenizer: a teacher whose
    head is part of its weights (as after fine-tuning)."""
    import torch
    import transformers

    tokenizer = tiny_tokenizer(folder)
    torch.manual_seed(seed)
    extra = {}
    if labels is not None:
        extra = dict(
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={n: i for i, n in enumerate(labels)},
        )
    if problem_type:
        extra["problem_type"] = problem_type
    config = transformers.BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        **extra,
    )
    getattr(transformers, model_class)(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def sentence(rng: random.Random, label: str, n: int = 3) -> str:
    words = [rng.choice(WORDS[label]) for _ in range(n)] + rng.sample(FILLER, 2)
    rng.shuffle(words)
    return " ".join(words)


def write_csv(path: str, header: list[str], rows: list[list]) -> str:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_jsonl(path: str, rows: list[dict]) -> str:
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


def sentiment_rows(n: int, seed: int) -> list[list]:
    rng = random.Random(seed)
    return [[sentence(rng, SENTIMENTS[i % 3]), SENTIMENTS[i % 3]] for i in range(n)]


def pair_rows(n: int, seed: int) -> list[list]:
    """(sentence1, sentence2, label): entailment when both sentences carry the same sentiment."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a = SENTIMENTS[i % 3]
        b = a if i % 2 == 0 else SENTIMENTS[(i + 1) % 3]
        rows.append([sentence(rng, a), sentence(rng, b), NLI[0] if a == b else NLI[1]])
    return rows


def tagging_rows(n: int, seed: int) -> list[dict]:
    """Words tagged O, or B-/I- NEG/POS for sentiment words (a following "goodness"-style word continues it)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        tokens, tags = [], []
        for _ in range(rng.randint(4, 7)):
            kind = rng.choice(["O", "NEG", "POS"])
            if kind == "O":
                tokens.append(rng.choice(FILLER))
                tags.append("O")
            else:
                word = rng.choice(WORDS["neg" if kind == "NEG" else "pos"])
                tokens.append(word + ("ness" if rng.random() < 0.3 else ""))
                tags.append(f"B-{kind}")
                if rng.random() < 0.4:
                    tokens.append(rng.choice(WORDS["neg" if kind == "NEG" else "pos"]))
                    tags.append(f"I-{kind}")
        rows.append({"tokens": tokens, "ner_tags": tags})
    return rows


def squad_json(path: str, n: int, seed: int) -> str:
    """SQuAD's nested format: each context holds one sentiment word, the answer to "what word"."""
    rng = random.Random(seed)
    paragraphs = []
    for i in range(n):
        label = SENTIMENTS[i % 3]
        answer = rng.choice(WORDS[label])
        before = " ".join(rng.sample(FILLER, 3))
        after = " ".join(rng.sample(FILLER, 2))
        context = f"{before} {answer} {after}"
        paragraphs.append(
            {
                "context": context,
                "qas": [
                    {
                        "id": f"q{seed}-{i}",
                        "question": "what word is it",
                        "answers": [{"text": answer, "answer_start": len(before) + 1}],
                    }
                ],
            }
        )
    with open(path, "w") as f:
        json.dump({"version": "1.1", "data": [{"title": "tiny", "paragraphs": paragraphs}]}, f)
    return path


def text_lines(path: str, n: int, seed: int) -> str:
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(n):
            f.write(sentence(rng, SENTIMENTS[i % 3], 4) + "\n")
            if i % 5 == 0:
                f.write("\n")  # blank lines are not examples
    return path


def run_cli(*args: str, cwd: str | None = None) -> subprocess.CompletedProcess:
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",
    )
    return subprocess.run(
        [sys.executable, "-m", "hf_kd.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=600,
    )


# Flags that keep a test run to a few optimizer steps on 2 cores.
QUICK = [
    "--num_train_epochs",
    "1",
    "--per_device_train_batch_size",
    "8",
    "--per_device_eval_batch_size",
    "16",
    "--learning_rate",
    "1e-3",
    "--max_length",
    "32",
    "--save_strategy",
    "no",
    "--report_to",
    "none",
    "--use_cpu",
    "true",
    "--dataloader_num_workers",
    "0",
    "--seed",
    "1",
    "--latency_batch_sizes",
    "1",
]
