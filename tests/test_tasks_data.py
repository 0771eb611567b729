"""`hf_kd.tasks.prepare_task_data`: what each task makes of raw rows, checked token by token (no training)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import cli_assets as A
import pytest
from datasets import Dataset, DatasetDict
from transformers import BertConfig

from hf_kd import cli
from hf_kd.tasks import prepare_task_data


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return A.tiny_tokenizer(str(tmp_path_factory.mktemp("tok")))


def _args(**overrides):
    values = dict(
        text_column=None,
        text_pair_column=None,
        label_column=None,
        labels_are_ids=False,
        label_all_tokens=False,
        question_column="question",
        context_column="context",
        answer_column="answers",
        doc_stride=2,
        max_answer_length=30,
        mlm_probability=0.15,
        max_length=32,
        max_train_samples=None,
        max_eval_samples=None,
    )
    values.update(overrides)
    return SimpleNamespace(**values)


def _config(labels=None, **extra):
    kwargs = {}
    if labels is not None:
        kwargs = dict(id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)})
    return BertConfig(**kwargs, **extra)


def test_token_tags_from_csv_style_cells_reach_the_first_sub_token(tokenizer):
    raw = DatasetDict(
        train=Dataset.from_dict({"tokens": ["bad goodness the"], "ner_tags": ["B-NEG B-POS O"]})
    )
    row = prepare_task_data("token-classification", raw, tokenizer, _config(A.TAGS), _args()).datasets[
        "train"
    ][0]
    assert tokenizer.convert_ids_to_tokens(row["input_ids"]) == [
        "[CLS]",
        "bad",
        "good",
        "##ness",
        "the",
        "[SEP]",
    ]
    assert row["labels"] == [-100, 1, 3, -100, 0, -100]  # B-NEG, B-POS, (##ness ignored), O
    every = prepare_task_data(
        "token-classification", raw, tokenizer, _config(A.TAGS), _args(label_all_tokens=True)
    ).datasets["train"][0]
    assert every["labels"] == [-100, 1, 3, 4, 0, -100]  # ##ness gets I-POS


def test_words_and_tags_of_different_lengths_are_named(tokenizer):
    raw = DatasetDict(train=Dataset.from_dict({"tokens": [["bad", "the"]], "ner_tags": [["O"]]}))
    with pytest.raises(ValueError, match="2 words and 1 tags"):
        prepare_task_data("token-classification", raw, tokenizer, _config(A.TAGS), _args())


def test_sentence_pairs_are_encoded_as_pairs(tokenizer):
    raw = DatasetDict(
        train=Dataset.from_dict(
            {"sentence1": ["good nice"], "sentence2": ["bad"], "label": ["not_entailment"]}
        )
    )
    row = prepare_task_data("text-classification", raw, tokenizer, _config(A.NLI), _args()).datasets["train"][
        0
    ]
    assert tokenizer.convert_ids_to_tokens(row["input_ids"]) == [
        "[CLS]",
        "good",
        "nice",
        "[SEP]",
        "bad",
        "[SEP]",
    ]
    assert row["token_type_ids"] == [0, 0, 0, 0, 1, 1] and row["labels"] == 1


def test_multi_label_cells_become_multi_hot_rows_and_scores_floats(tokenizer):
    raw = DatasetDict(train=Dataset.from_dict({"text": ["good bad"], "labels": ["pos,neg"]}))
    config = _config(A.SENTIMENTS, problem_type="multi_label_classification")
    row = prepare_task_data("text-classification", raw, tokenizer, config, _args()).datasets["train"][0]
    assert row["labels"] == [1.0, 0.0, 1.0]
    raw = DatasetDict(train=Dataset.from_dict({"text": ["good"], "score": [3.5]}))
    row = prepare_task_data("text-classification", raw, tokenizer, _config(num_labels=1), _args()).datasets[
        "train"
    ][0]
    assert row["labels"] == pytest.approx(3.5)


def test_answer_positions_point_at_the_answer_in_every_window_that_holds_it(tokenizer, tmp_path):
    from hf_kd.data import read_data_file

    path = A.squad_json(str(tmp_path / "squad.json"), 3, 0)
    raw = DatasetDict(train=read_data_file(path))
    contexts = {r["id"]: (r["context"], r["answers"]["text"][0]) for r in raw["train"]}
    # 4 question tokens + 3 special tokens leave 5 context tokens a window: 6-word contexts need two windows.
    data = prepare_task_data(
        "question-answering", raw, tokenizer, _config(), _args(max_length=12, doc_stride=2)
    )
    features = data.datasets["train"]
    assert len(features) > len(raw["train"])
    for row in features:
        tokens = tokenizer.convert_ids_to_tokens(row["input_ids"])
        start, end = row["start_positions"], row["end_positions"]
        if start == 0:  # the answer lies outside this window: the CLS position, as in SQuAD 2.0 practice
            assert end == 0
            continue
        assert " ".join(tokens[start : end + 1]) in {answer for _, answer in contexts.values()}
        assert tokens.index("[SEP]") < start  # inside the context, after the question


def test_answer_start_that_misses_the_answer_is_named(tokenizer, tmp_path):
    path = tmp_path / "bad.jsonl"
    row = {
        "id": "q1",
        "question": "what",
        "context": "the good one",
        "answers": {"text": ["good"], "answer_start": [0]},
    }
    path.write_text(json.dumps(row) + "\n")
    from hf_kd.data import read_data_file

    raw = DatasetDict(train=read_data_file(str(path)))
    with pytest.raises(ValueError, match="answer_start 0 does not point at the answer 'good'"):
        prepare_task_data("question-answering", raw, tokenizer, _config(), _args())


def test_a_teacher_config_without_architectures_is_judged_by_its_weights(tmp_path):
    folder = A.save_teacher(str(tmp_path / "teacher"), "BertForSequenceClassification", A.SENTIMENTS)
    config_file = tmp_path / "teacher" / "config.json"
    config = json.loads(config_file.read_text())
    config.pop("architectures")
    config_file.write_text(json.dumps(config))
    command = cli.parse_command("distill", ["--output_dir", str(tmp_path / "out")])
    teacher = cli.load_teacher(command, "text-classification", folder)
    assert teacher.config.id2label == dict(enumerate(A.SENTIMENTS))


def test_dataset_name_reads_a_datasets_folder_with_its_split_names(tmp_path):
    # load_dataset on a folder of files reads offline, as it reads a Hub dataset: splits named by the files.
    folder = tmp_path / "sentiment"
    folder.mkdir()
    A.write_csv(str(folder / "train.csv"), ["text", "label"], A.sentiment_rows(20, 0))
    A.write_csv(str(folder / "test.csv"), ["text", "label"], A.sentiment_rows(6, 1))
    command = cli.parse_command(
        "distill",
        ["--dataset_name", str(folder), "--validation_size", "0.25", "--output_dir", str(tmp_path / "o")],
    )
    raw = cli.load_raw_data(command, "text-classification")
    assert {k: len(v) for k, v in raw.items()} == {"train": 15, "validation": 5, "test": 6}
    # TRL's --dataset_train_split picks another split to train on.
    command = cli.parse_command(
        "distill",
        ["--dataset_name", str(folder), "--dataset_train_split", "test", "--output_dir", str(tmp_path / "o")],
    )
    held = cli.load_raw_data(command, None)
    texts = list(held["train"]["text"]) + list(held["validation"]["text"])
    assert sorted(texts) == sorted(r[0] for r in A.sentiment_rows(6, 1))
    missing = cli.parse_command(
        "distill",
        ["--dataset_name", str(folder), "--dataset_train_split", "dev", "--output_dir", str(tmp_path / "o")],
    )
    with pytest.raises(
        cli.CommandError, match=r"'dev' is not a split of .* its splits are \['train', 'test'\]"
    ):
        cli.load_raw_data(missing, None)
