"""Cached teacher outputs: same training as a live teacher, keyed so that stale logits are never reused."""

from __future__ import annotations

import os

import pytest
import torch
from conftest import VOCAB, tiny_classification_dataset, tiny_model
from datasets import Dataset, load_from_disk
from transformers import BertTokenizer, DataCollatorForTokenClassification, DataCollatorWithPadding

from hf_kd import DistillationConfig, DistillationTrainer, cache_teacher_outputs, teacher_fingerprint
from hf_kd.cache import TeacherCacheCollator, read_cache_metadata
from hf_kd.losses import topk_soft_target_loss
from hf_kd.validation import DistillationConfigError


def make_args(out, **kw):
    defaults = dict(
        output_dir=out, per_device_train_batch_size=4, report_to=[], use_cpu=True, save_strategy="no",
        logging_steps=1, learning_rate=1e-3, seed=0, disable_tqdm=True, max_steps=4, temperature=2.0, alpha=0.5,
        teacher_dtype="float32",  # cached float32 logits must equal the live teacher's
    )  # fmt: skip
    defaults.update(kw)
    return DistillationConfig(**defaults)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "vocab.txt"
    path.write_text(
        "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"t{i}" for i in range(5, VOCAB)])
    )
    return BertTokenizer(vocab=str(path))


def unpadded_token_dataset(n=12, seed=0) -> Dataset:
    """Variable-length examples with per-token labels, left for the collator to pad."""
    g = torch.Generator().manual_seed(seed)
    rows = {"input_ids": [], "attention_mask": [], "labels": []}
    for _ in range(n):
        length = int(torch.randint(3, 10, (1,), generator=g))
        rows["input_ids"].append([2] + torch.randint(5, VOCAB, (length - 1,), generator=g).tolist())
        rows["attention_mask"].append([1] * length)
        labels = torch.randint(0, 3, (length,), generator=g).tolist()
        labels[0] = -100  # e.g. [CLS]: real token, no label
        rows["labels"].append(labels)
    return Dataset.from_dict(rows)


def losses(trainer) -> list[tuple]:
    return [(h["loss"], h["loss_kd"], h["loss_ce"]) for h in trainer.state.log_history if "loss_kd" in h]


def assert_same_training(live, cached, init, steps=4):
    live_losses, cached_losses = losses(live), losses(cached)
    assert len(live_losses) == steps
    torch.testing.assert_close(torch.tensor(cached_losses), torch.tensor(live_losses), rtol=1e-5, atol=1e-6)
    for (name, p_live), p_cached in zip(live.model.named_parameters(), cached.model.parameters()):
        torch.testing.assert_close(p_cached, p_live, rtol=1e-5, atol=1e-6, msg=name)
    changed = [not torch.equal(p, q.to(p.device)) for p, q in zip(live.model.parameters(), init.parameters())]
    assert any(changed)  # the runs trained, so equality is not trivially "both did nothing"


@pytest.mark.slow
def test_cached_run_equals_live_run_sequence_classification(tmp_out):
    teacher = tiny_model(num_layers=2, seed=1)
    data = tiny_classification_dataset(n=16)
    init = tiny_model(num_layers=1, seed=2)

    live = DistillationTrainer(
        tiny_model(num_layers=1, seed=2), make_args(tmp_out), train_dataset=data, teacher_model=teacher
    )
    live.train()
    cached_data = cache_teacher_outputs(teacher, data, batch_size=5)
    assert cached_data["teacher_logits"][0].__len__() == 3
    cached = DistillationTrainer(
        tiny_model(num_layers=1, seed=2), make_args(tmp_out), train_dataset=cached_data, teacher_model=None
    )
    assert cached.teacher is None and cached.uses_cache
    cached.train()
    assert_same_training(live, cached, init)


@pytest.mark.slow
def test_cached_run_equals_live_run_token_classification_with_padding(tmp_out, tokenizer):
    cls = "BertForTokenClassification"
    teacher = tiny_model(cls, num_layers=2, seed=1)
    data = unpadded_token_dataset()
    collator = DataCollatorForTokenClassification(tokenizer)
    init = tiny_model(cls, num_layers=1, seed=2)

    live = DistillationTrainer(
        tiny_model(cls, num_layers=1, seed=2), make_args(tmp_out, per_device_train_batch_size=3),
        train_dataset=data, teacher_model=teacher, data_collator=collator,
    )  # fmt: skip
    live.train()
    cached_data = cache_teacher_outputs(teacher, data, batch_size=5, tokenizer=tokenizer)
    # stored per example at its real tokens only: (L_i, C)
    first = cached_data[0]
    assert torch.tensor(first["teacher_logits"]).shape == (len(first["input_ids"]), 3)
    cached = DistillationTrainer(
        tiny_model(cls, num_layers=1, seed=2), make_args(tmp_out, per_device_train_batch_size=3),
        train_dataset=cached_data, teacher_model=None, data_collator=collator,
    )  # fmt: skip
    cached.train()
    assert_same_training(live, cached, init)


@pytest.mark.parametrize("cls", ["BertForSequenceClassification", "BertForTokenClassification"])
def test_cache_runs_longest_rows_first_and_stores_each_rows_own_values_in_row_order(tokenizer, cls):
    teacher = tiny_model(cls, num_layers=2, seed=1).eval()
    data = unpadded_token_dataset(n=11, seed=3)
    if cls == "BertForSequenceClassification":
        data = data.map(lambda e, i: {"labels": i % 3}, with_indices=True)
    lengths = [len(ids) for ids in data["input_ids"]]
    padded_to = []
    teacher.register_forward_pre_hook(
        lambda module, args, kwargs: padded_to.append(kwargs["input_ids"].shape[1]) or None, with_kwargs=True
    )
    cached = cache_teacher_outputs(teacher, data, batch_size=4, tokenizer=tokenizer)
    padded_to_cached = list(padded_to)
    # Batches in descending length: batch k is padded to the k*4-th longest row.
    longest_first = sorted(lengths, reverse=True)
    assert padded_to_cached == [longest_first[k] for k in range(0, len(lengths), 4)]
    # Each row's stored values equal the teacher on that row alone (no padding), in the dataset's row order.
    with torch.no_grad():
        for i, row in enumerate(data):
            alone = teacher(
                input_ids=torch.tensor([row["input_ids"]]), attention_mask=torch.tensor([row["attention_mask"]])
            ).logits[0]
            torch.testing.assert_close(torch.tensor(cached[i]["teacher_logits"]), alone, rtol=1e-5, atol=1e-5)
            assert cached[i]["input_ids"] == row["input_ids"]


def qa_dataset() -> Dataset:
    data = tiny_classification_dataset(n=8).remove_columns("labels")
    return data.map(lambda e, i: {"start_positions": i % 4, "end_positions": i % 4 + 2}, with_indices=True)


def mlm_dataset() -> Dataset:
    data = tiny_classification_dataset(n=8).remove_columns("labels")

    def mask_some(e):
        pairs = enumerate(zip(e["input_ids"], e["attention_mask"]))
        return {"labels": [i if j % 3 == 1 and m else -100 for j, (i, m) in pairs]}

    return data.map(mask_some)


@pytest.mark.slow
@pytest.mark.parametrize("head", ["qa", "mlm_topk_all"])
def test_cached_run_equals_live_run_qa_and_topk_masked_lm(tmp_out, head):
    """QA start/end logits, and masked-LM top-k log-probs with k = vocabulary size (the rest bucket is empty)."""
    cls, data, kw = {
        "qa": ("BertForQuestionAnswering", qa_dataset(), {"num_labels": 2}),
        "mlm_topk_all": ("BertForMaskedLM", mlm_dataset(), {}),
    }[head]
    teacher = tiny_model(cls, num_layers=2, seed=1, **kw)
    # float32 storage: this test is about exact equality with the live teacher (float16 is tested on its own).
    topk = {"top_k": VOCAB, "temperature": 2.0, "topk_dtype": "float32"} if head == "mlm_topk_all" else {}
    cached_data = cache_teacher_outputs(teacher, data, batch_size=3, **topk)
    runs = []
    for train, teacher_model in ((data, teacher), (cached_data, None)):
        trainer = DistillationTrainer(
            tiny_model(cls, num_layers=1, seed=2, **kw), make_args(tmp_out, max_steps=2), train_dataset=train,
            teacher_model=teacher_model,
        )  # fmt: skip
        trainer.train()
        runs.append(trainer)
    assert_same_training(*runs, tiny_model(cls, num_layers=1, seed=2, **kw), steps=2)


def test_collator_scatters_token_logits_to_real_positions(tokenizer):
    rows = [torch.arange(6.0).view(2, 3), torch.arange(12.0).view(4, 3) + 100]
    features = [
        {"input_ids": [2, 7], "attention_mask": [1, 1], "teacher_logits": rows[0].tolist()},
        {"input_ids": [2, 7, 8, 9], "attention_mask": [1, 1, 1, 1], "teacher_logits": rows[1].tolist()},
    ]
    for side in ("right", "left"):
        tokenizer.padding_side = side
        batch = TeacherCacheCollator(DataCollatorWithPadding(tokenizer))([dict(f) for f in features])
        logits = batch["teacher_logits"]
        assert logits.shape == (2, 4, 3) and logits.dtype == torch.float32
        real = batch["attention_mask"].bool()
        torch.testing.assert_close(logits[0][real[0]], rows[0])
        torch.testing.assert_close(logits[1], rows[1])
        assert (logits[0][~real[0]] == 0).all()
        assert "teacher_logits" not in features[0] or isinstance(features[0]["teacher_logits"], list)
    tokenizer.padding_side = "right"
    # sequence-level values stack to (B, C), with the default collator inside
    batch = TeacherCacheCollator()([{"input_ids": [1, 2], "teacher_logits": [0.5, 1.0]}] * 3)
    assert batch["teacher_logits"].shape == (3, 2)
    bad = [{"input_ids": [2, 7], "attention_mask": [1, 1], "teacher_logits": rows[1].tolist()}]
    with pytest.raises(ValueError, match="2 real tokens but 4 cached rows"):
        TeacherCacheCollator()(bad)


def test_changed_teacher_weights_change_fingerprint_and_are_rejected(tmp_out):
    teacher = tiny_model(num_layers=2, seed=1)
    data = tiny_classification_dataset(n=8)
    cached = cache_teacher_outputs(teacher, data, batch_size=8)
    before = teacher_fingerprint(teacher)
    assert teacher_fingerprint(tiny_model(num_layers=2, seed=1)) == before  # equal weights, equal fingerprint
    assert read_cache_metadata(cached)["teacher_fingerprint"] == before
    # the same teacher passes the check
    DistillationTrainer(
        tiny_model(num_layers=1, seed=2), make_args(tmp_out), train_dataset=cached, teacher_model=teacher
    )

    with torch.no_grad():
        teacher.classifier.bias[0] += 1e-3
    assert teacher_fingerprint(teacher) != before
    with pytest.raises(DistillationConfigError, match="different teacher.*cache_teacher_outputs"):
        DistillationTrainer(
            tiny_model(num_layers=1, seed=2), make_args(tmp_out), train_dataset=cached, teacher_model=teacher
        )


def test_cache_dir_reuses_same_key_and_misses_on_changes(tmp_path):
    teacher = tiny_model(num_layers=2, seed=1)
    data = tiny_classification_dataset(n=8)
    calls = []
    teacher.register_forward_hook(lambda *_: calls.append(1))

    first = cache_teacher_outputs(teacher, data, batch_size=4, cache_dir=tmp_path)
    assert len(calls) == 2 and len(os.listdir(tmp_path)) == 1
    again = cache_teacher_outputs(teacher, data, batch_size=4, cache_dir=tmp_path)
    assert len(calls) == 2  # a hit: no teacher forward
    assert again["teacher_logits"] == first["teacher_logits"]
    assert read_cache_metadata(again) == read_cache_metadata(first)

    cache_teacher_outputs(teacher, data.select(range(4)), batch_size=4, cache_dir=tmp_path)  # other data
    assert len(calls) == 3 and len(os.listdir(tmp_path)) == 2
    with torch.no_grad():
        teacher.classifier.bias[0] += 1.0
    changed = cache_teacher_outputs(teacher, data, batch_size=4, cache_dir=tmp_path)  # other weights
    assert len(calls) == 5 and len(os.listdir(tmp_path)) == 3
    diff = torch.tensor(changed["teacher_logits"]) - torch.tensor(first["teacher_logits"])
    torch.testing.assert_close(diff[:, 0], torch.ones(8))


def test_metadata_survives_disk_round_trip_and_dataset_operations(tmp_path):
    data = tiny_classification_dataset(n=8)
    data.info.description = "my data"
    cached = cache_teacher_outputs(tiny_model(num_layers=2, seed=1), data, top_k=2, temperature=3.0)
    meta = read_cache_metadata(cached)
    assert (
        meta["top_k"] == 2 and meta["temperature"] == 3.0 and meta["dataset_fingerprint"] == data._fingerprint
    )
    assert read_cache_metadata(data) is None and data.info.description == "my data"  # input left alone
    cached.save_to_disk(str(tmp_path / "c"))
    loaded = load_from_disk(str(tmp_path / "c"))
    assert read_cache_metadata(loaded) == meta
    for derived in (loaded.select([0, 1]), loaded.shuffle(seed=0), loaded.map(lambda e: e)):
        assert read_cache_metadata(derived) == meta


def test_topk_cache_holds_sorted_tempered_log_probs():
    teacher = tiny_model(num_layers=2, seed=1, num_labels=5)
    data = tiny_classification_dataset(n=6, num_labels=5)
    cached = cache_teacher_outputs(teacher, data, top_k=2, temperature=2.0, topk_dtype="float32")
    with torch.no_grad():
        logits = teacher(
            input_ids=torch.tensor(data["input_ids"]), attention_mask=torch.tensor(data["attention_mask"])
        ).logits
    expected = torch.log_softmax(logits / 2.0, -1).sort(-1, descending=True)
    torch.testing.assert_close(
        torch.tensor(cached["teacher_topk_log_probs"]), expected.values[:, :2], rtol=1e-5, atol=1e-5
    )
    assert torch.equal(torch.tensor(cached["teacher_topk_indices"]), expected.indices[:, :2])
    assert "teacher_logits" not in cached.column_names


def test_topk_with_all_classes_equals_full_kd_loss(tmp_out):
    teacher = tiny_model(num_layers=2, seed=1)
    data = tiny_classification_dataset(n=8)
    T = 2.0
    topk = cache_teacher_outputs(teacher, data, top_k=3, temperature=T, topk_dtype="float32")
    student_logits = torch.randn(8, 3, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        teacher_logits = teacher(
            input_ids=torch.tensor(data["input_ids"]), attention_mask=torch.tensor(data["attention_mask"])
        ).logits
    # direct formula: T^2 * sum_c p_t (log p_t - log p_s)
    p_t = torch.softmax(teacher_logits / T, -1)
    direct = (T**2 * (p_t * (p_t.log() - torch.log_softmax(student_logits / T, -1))).sum(-1)).mean()
    got = topk_soft_target_loss(
        student_logits,
        torch.tensor(topk["teacher_topk_log_probs"]),
        torch.tensor(topk["teacher_topk_indices"]),
        T,
    )
    torch.testing.assert_close(got, direct, rtol=1e-4, atol=1e-5)

    # and through the trainer: the first logged KD term equals that of a full-logit cache
    full = cache_teacher_outputs(teacher, data)
    runs = []
    for cached in (topk, full):
        trainer = DistillationTrainer(
            tiny_model(num_layers=1, seed=2),
            make_args(tmp_out, max_steps=1, temperature=T),
            train_dataset=cached,
        )
        trainer.train()
        runs.append(losses(trainer)[0])
    torch.testing.assert_close(torch.tensor(runs[0]), torch.tensor(runs[1]), rtol=1e-4, atol=1e-5)


def test_topk_cache_rejects_other_temperature_and_schedules(tmp_out):
    cached = cache_teacher_outputs(
        tiny_model(num_layers=2, seed=1), tiny_classification_dataset(n=8), top_k=2, temperature=2.0
    )
    student = tiny_model(num_layers=1, seed=2)
    with pytest.raises(DistillationConfigError, match=r"temperature 2.0 but this run uses temperature=4.0"):
        DistillationTrainer(student, make_args(tmp_out, temperature=4.0), train_dataset=cached)
    with pytest.raises(DistillationConfigError, match="temperature_schedule='linear'.*top_k=None"):
        DistillationTrainer(
            student,
            make_args(tmp_out, temperature_schedule="linear", temperature_final=1.0),
            train_dataset=cached,
        )
    with pytest.raises(ValueError, match="pass temperature="):
        cache_teacher_outputs(tiny_model(num_layers=2, seed=1), tiny_classification_dataset(n=4), top_k=2)


def test_cache_class_count_must_match_student(tmp_out):
    # Labels 0..1 fit the 2-class student, so the only mismatch is the cache's 3 classes.
    data = tiny_classification_dataset(n=8, num_labels=2)
    cached = cache_teacher_outputs(tiny_model(num_layers=2, seed=1), data)
    student = tiny_model(num_layers=1, seed=2, num_labels=2)
    with pytest.raises(
        DistillationConfigError, match="cached teacher logits have 3 classes but the student has 2"
    ):
        DistillationTrainer(student, make_args(tmp_out, alpha=1.0), train_dataset=cached)


def test_cached_logits_cannot_feed_intermediate_losses(tmp_out):
    cached = cache_teacher_outputs(tiny_model(num_layers=2, seed=1), tiny_classification_dataset(n=8))
    with pytest.raises(DistillationConfigError, match="need a live teacher"):
        DistillationTrainer(
            tiny_model(num_layers=1, seed=2), make_args(tmp_out, hidden_weight=1.0), train_dataset=cached
        )


def test_uncached_eval_data_without_teacher_says_what_to_do(tmp_out):
    data = tiny_classification_dataset(n=8)
    cached = cache_teacher_outputs(tiny_model(num_layers=2, seed=1), data)
    # Given at construction, the uncached eval set is refused there, before any step...
    with pytest.raises(
        DistillationConfigError, match="eval data carries no cached teacher outputs.*no teacher_model"
    ):
        DistillationTrainer(
            tiny_model(num_layers=1, seed=2), make_args(tmp_out, per_device_eval_batch_size=4),
            train_dataset=cached, eval_dataset=data,
        )  # fmt: skip
    # ...and passed to evaluate() later, it is refused when evaluation reads it.
    trainer = DistillationTrainer(
        tiny_model(num_layers=1, seed=2),
        make_args(tmp_out, per_device_eval_batch_size=4),
        train_dataset=cached,
    )
    with pytest.raises(DistillationConfigError, match="no cached teacher logits and no teacher_model"):
        trainer.evaluate(eval_dataset=data)


def test_dataset_dict_caches_each_split_and_iterable_is_refused():
    from datasets import DatasetDict

    teacher = tiny_model(num_layers=2, seed=1)
    splits = DatasetDict(
        train=tiny_classification_dataset(n=6), test=tiny_classification_dataset(n=4, seed=1)
    )
    cached = cache_teacher_outputs(teacher, splits)
    for name, part in splits.items():
        assert read_cache_metadata(cached[name])["dataset_fingerprint"] == part._fingerprint
        with torch.no_grad():
            expected = teacher(
                input_ids=torch.tensor(part["input_ids"]), attention_mask=torch.tensor(part["attention_mask"])
            ).logits
        torch.testing.assert_close(torch.tensor(cached[name]["teacher_logits"]), expected)
    with pytest.raises(TypeError, match="map-style datasets.Dataset"):
        cache_teacher_outputs(teacher, splits["train"].to_iterable_dataset())


# ---- storage, integrity and several processes -------------------------------------------------------------


def test_topk_float16_storage_rounds_only_and_saves_two_bytes_per_value():
    teacher = tiny_model(num_layers=2, seed=1, num_labels=5)
    data = tiny_classification_dataset(n=6, num_labels=5)
    half = cache_teacher_outputs(teacher, data, top_k=2, temperature=2.0)  # float16 is the default
    full = cache_teacher_outputs(teacher, data, top_k=2, temperature=2.0, topk_dtype="float32")
    assert half.features["teacher_topk_log_probs"].feature.dtype == "float16"
    want = torch.tensor(full["teacher_topk_log_probs"])
    torch.testing.assert_close(
        torch.tensor(half["teacher_topk_log_probs"]), want.half().float(), rtol=0, atol=0
    )
    assert half["teacher_topk_indices"] == full["teacher_topk_indices"]
    # 2 values per example at 2 bytes instead of 4; indices and list offsets are the same in both.
    saved = read_cache_metadata(full)["bytes_per_example"] - read_cache_metadata(half)["bytes_per_example"]
    assert saved == pytest.approx(2 * 2)
    assert read_cache_metadata(half)["cache_key"] != read_cache_metadata(full)["cache_key"]


def test_content_hash_depends_on_values_not_on_how_rows_are_split():
    from datasets import concatenate_datasets

    from hf_kd.cache import content_hash

    cached = cache_teacher_outputs(tiny_model(num_layers=2, seed=1), tiny_classification_dataset(n=8))
    split = concatenate_datasets([cached.select(range(3)), cached.select(range(3, 8))])
    assert content_hash(split) == content_hash(cached) == read_cache_metadata(cached)["content_hash"]
    nudged = cached.map(lambda e, i: {"teacher_logits": [v + (1e-3 if i == 5 else 0) for v in e["teacher_logits"]]},
                        with_indices=True)  # fmt: skip
    assert content_hash(nudged) != content_hash(cached)


def _saved_cache(tmp_path):
    teacher = tiny_model(num_layers=2, seed=1)
    data = tiny_classification_dataset(n=40)
    first = cache_teacher_outputs(teacher, data, cache_dir=tmp_path)
    (path,) = [os.path.join(tmp_path, d) for d in os.listdir(tmp_path)]
    return teacher, data, first, path


def _truncate_arrow(path):
    arrow = os.path.join(path, "data-00000-of-00001.arrow")
    with open(arrow, "r+b") as f:
        f.truncate(os.path.getsize(arrow) // 2)


def test_saved_cache_is_one_memory_mapped_arrow_file(tmp_path):
    from datasets.table import MemoryMappedTable

    _, _, first, path = _saved_cache(tmp_path)
    assert sorted(os.listdir(path)) == ["data-00000-of-00001.arrow", "dataset_info.json", "state.json"]
    assert isinstance(first.data, MemoryMappedTable)
    assert [os.path.basename(f["filename"]) for f in first.cache_files] == ["data-00000-of-00001.arrow"]


def test_truncated_cache_file_is_rebuilt_with_a_warning_naming_the_path(tmp_path, caplog):
    teacher, data, first, path = _saved_cache(tmp_path)
    expected = list(first["teacher_logits"])
    del first
    _truncate_arrow(path)
    with pytest.raises(OSError, match="Expected to be able to read"):  # what a plain load gives
        load_from_disk(path)["teacher_logits"]
    with caplog.at_level("WARNING", logger="hf_kd.cache"):
        rebuilt = cache_teacher_outputs(teacher, data, cache_dir=tmp_path)
    assert any(
        path in r.getMessage() and "Expected to be able to read" in r.getMessage() for r in caplog.records
    )
    assert rebuilt["teacher_logits"] == expected
    assert load_from_disk(path)["teacher_logits"] == expected  # the folder itself was repaired


def test_truncated_cache_file_raises_when_asked_to(tmp_path):
    from hf_kd.cache import TeacherCacheError

    teacher, data, first, path = _saved_cache(tmp_path)
    del first
    _truncate_arrow(path)
    with pytest.raises(TeacherCacheError, match=f"{path}.*Expected to be able to read.*on_corrupt='rebuild'"):
        cache_teacher_outputs(teacher, data, cache_dir=tmp_path, on_corrupt="raise")


def test_garbled_values_in_a_valid_cache_are_caught_by_the_content_hash(tmp_path, caplog):
    import shutil

    from hf_kd.cache import TeacherCacheError

    teacher, data, first, path = _saved_cache(tmp_path)
    expected = list(first["teacher_logits"])
    # Same metadata (and so the recorded hash), one value changed, written as a perfectly valid dataset.
    garbled = first.map(lambda e, i: {"teacher_logits": [9.0, 9.0, 9.0] if i == 7 else e["teacher_logits"]},
                        with_indices=True)  # fmt: skip
    garbled.save_to_disk(path + ".tmp")
    del first, garbled
    shutil.rmtree(path)
    os.replace(path + ".tmp", path)
    assert load_from_disk(path)["teacher_logits"][7] == [9.0, 9.0, 9.0]
    with pytest.raises(TeacherCacheError, match=f"{path}.*hash"):
        cache_teacher_outputs(teacher, data, cache_dir=tmp_path, on_corrupt="raise")
    with caplog.at_level("WARNING", logger="hf_kd.cache"):
        rebuilt = cache_teacher_outputs(teacher, data, cache_dir=tmp_path)
    assert any(path in r.getMessage() and "hash" in r.getMessage() for r in caplog.records)
    assert rebuilt["teacher_logits"] == expected


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_process_cache_equals_one_process_cache_and_is_one_shard_per_process(tmp_path):
    """torchrun, 2 processes: each writes its half as one Arrow file; rank 0 joins them under the 1-process key."""
    import importlib.util
    import json
    import socket
    import subprocess
    import sys

    worker = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts", "cache_worker.py")
    spec = importlib.util.spec_from_file_location("cache_worker", worker)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    teacher, data, kwargs = module.cache_case()
    one = cache_teacher_outputs(teacher, data, cache_dir=tmp_path / "one", **kwargs)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(port), worker, "--cache-dir", str(tmp_path / "two")]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-5000:]

    (name_one,) = os.listdir(tmp_path / "one")
    names_two = sorted(os.listdir(tmp_path / "two"))
    assert names_two == sorted([name_one, "report-rank0.json", "report-rank1.json"])  # same key, no leftovers
    path = tmp_path / "two" / name_one
    assert sorted(os.listdir(path)) == [
        "data-00000-of-00002.arrow", "data-00001-of-00002.arrow", "dataset_info.json", "state.json",
    ]  # fmt: skip
    two = load_from_disk(str(path))
    # Rows 0-5 from process 0, rows 6-12 from process 1, in order.
    from datasets import Dataset

    halves = [Dataset.from_file(str(path / f"data-0000{r}-of-00002.arrow")) for r in (0, 1)]
    assert [len(h) for h in halves] == [6, 7]
    assert halves[0]["input_ids"] == data["input_ids"][:6] and halves[1]["input_ids"] == data["input_ids"][6:]
    assert two._fingerprint == one._fingerprint
    meta_one, meta_two = read_cache_metadata(one), read_cache_metadata(two)
    assert meta_two == meta_one  # key, content hash, bytes per example, task, ...
    assert two["input_ids"] == one["input_ids"]
    for column in ("teacher_topk_log_probs", "teacher_topk_indices"):
        for a, b in zip(two[column], one[column]):
            torch.testing.assert_close(torch.tensor(a), torch.tensor(b), rtol=1e-3, atol=1e-3)
    for rank in (0, 1):
        with open(tmp_path / "two" / f"report-rank{rank}.json") as f:
            report = json.load(f)
        assert report["world_size"] == 2 and report["rows"] == 13
        assert report["cache_files"] == ["data-00000-of-00002.arrow", "data-00001-of-00002.arrow"]
        assert report["metadata"] == meta_one
