"""Consistent augmentation: the teacher sees the student's view, views are seeded (a resume draws the same ones),
and special tokens and padding are never touched."""

from __future__ import annotations

import os

import pytest
import torch
from conftest import make_args, tiny_model
from datasets import Dataset

from hf_kd import DistillationTrainer, cache_teacher_outputs
from hf_kd.augment import TokenAugmenter, parse_augmentation
from hf_kd.validation import DistillationConfigError

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@pytest.fixture
def tokenizer(tmp_path):
    from transformers import BertTokenizerFast

    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(SPECIAL + [f"w{i}" for i in range(94)]) + "\n")
    return BertTokenizerFast(vocab=str(path))


def _data(tokenizer, n=8):
    g = torch.Generator().manual_seed(0)
    texts = [
        " ".join(f"w{int(i)}" for i in torch.randint(0, 94, (4 + k % 5,), generator=g)) for k in range(n)
    ]
    enc = tokenizer(texts, padding="max_length", max_length=12)
    return Dataset.from_dict({**enc, "labels": [k % 3 for k in range(n)]})


def test_spec_strings_parse_and_bad_ones_are_named():
    assert parse_augmentation("mask:0.1, delete:0.05") == {"mask": 0.1, "delete": 0.05}
    with pytest.raises(ValueError, match=r"\['shuffle'\] does not exist"):
        parse_augmentation("shuffle:0.1")
    with pytest.raises(ValueError, match="not a probability"):
        parse_augmentation("mask:1.5")


def test_views_touch_only_real_non_special_tokens_at_the_asked_rate(tokenizer):
    ids = torch.full((64, 40), 7)
    ids[:, 0], ids[:, 30] = 2, 3  # [CLS] ... [SEP]
    ids[:, 31:] = 0
    mask = (ids != 0).long()
    augmenter = TokenAugmenter({"mask": 0.2, "replace": 0.1}, 99, tokenizer.all_special_ids, 4, 0, seed=0)
    view = augmenter({"input_ids": ids, "attention_mask": mask}, 0, 0, 0)["input_ids"]
    assert torch.equal(view[:, [0, 30]], ids[:, [0, 30]]) and (view[:, 31:] == 0).all()
    body = view[:, 1:30]
    masked = (body == 4).float().mean().item()
    replaced = ((body != 4) & (body != 7)).float().mean().item()
    assert abs(masked - 0.2) < 0.03 and abs(replaced - 0.08) < 0.03  # replace applies where mask did not
    assert not torch.isin(body[(body != 4) & (body != 7)], torch.tensor(tokenizer.all_special_ids)).any()
    again = augmenter({"input_ids": ids, "attention_mask": mask}, 0, 0, 0)["input_ids"]
    other = augmenter({"input_ids": ids, "attention_mask": mask}, 1, 0, 0)["input_ids"]
    assert torch.equal(view, again) and not torch.equal(view, other)


def test_delete_packs_rows_and_swap_keeps_the_tokens(tokenizer):
    ids = torch.tensor([[2, 10, 11, 12, 13, 3, 0, 0]])
    mask = (ids != 0).long()
    types = torch.zeros_like(ids)
    deleter = TokenAugmenter({"delete": 1.0}, 99, tokenizer.all_special_ids, 4, 0)
    view = deleter({"input_ids": ids, "attention_mask": mask, "token_type_ids": types}, 0, 0, 0)
    assert view["input_ids"].tolist() == [[2, 3, 0, 0, 0, 0, 0, 0]]
    assert view["attention_mask"].tolist() == [[1, 1, 0, 0, 0, 0, 0, 0]]
    swapper = TokenAugmenter({"swap": 1.0}, 99, tokenizer.all_special_ids, 4, 0)
    assert swapper({"input_ids": ids, "attention_mask": mask}, 0, 0, 0)["input_ids"].tolist() == [
        [2, 11, 10, 13, 12, 3, 0, 0]
    ]


def _trainer(out, tokenizer, **kw):
    teacher = tiny_model(seed=1, num_layers=3, hidden=48)
    student = tiny_model(seed=2)
    args = make_args(out, augmentation="mask:0.15,replace:0.1,swap:0.1,delete:0.1", **kw)
    return DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=_data(tokenizer),
        processing_class=tokenizer,
    )


def test_teacher_and_student_see_the_same_view(tokenizer, tmp_out):
    trainer = _trainer(tmp_out, tokenizer, max_steps=2)
    seen = {"teacher": [], "student": []}
    for role, model in (("teacher", trainer.teacher), ("student", trainer.model)):
        model.bert.embeddings.word_embeddings.register_forward_hook(
            lambda m, args, out, role=role: seen[role].append(args[0].clone())
        )
    trainer.train()
    original = torch.tensor(_data(tokenizer)["input_ids"])
    assert len(seen["student"]) == len(seen["teacher"]) == 2
    for s, t in zip(seen["student"], seen["teacher"]):
        assert torch.equal(s, t)
    rows = {tuple(r) for r in original.tolist()}
    views = [tuple(r) for r in torch.cat(seen["student"]).tolist()]
    assert sum(v not in rows for v in views) >= len(views) // 2  # most rows are new views


@pytest.mark.slow
def test_a_resumed_run_draws_the_same_views_and_ends_where_the_uninterrupted_one_ends(tokenizer, tmp_path):
    full = _trainer(str(tmp_path / "full"), tokenizer, max_steps=4, save_strategy="no")
    full.train()
    part = _trainer(str(tmp_path / "part"), tokenizer, max_steps=4, save_strategy="steps", save_steps=2)
    part.train()
    resumed = _trainer(str(tmp_path / "part"), tokenizer, max_steps=4, save_strategy="steps", save_steps=2)
    resumed.train(resume_from_checkpoint=os.path.join(str(tmp_path / "part"), "checkpoint-2"))
    want = dict(full.model.named_parameters())
    for name, value in resumed.model.named_parameters():
        torch.testing.assert_close(value, want[name], rtol=1e-5, atol=1e-6, msg=name)


def test_augmentation_with_cached_teacher_outputs_is_refused(tokenizer, tmp_out):
    teacher = tiny_model(seed=1, num_layers=3, hidden=48)
    with pytest.raises(DistillationConfigError, match="a cache cannot know the view"):
        DistillationTrainer(
            model=tiny_model(seed=2),
            args=make_args(tmp_out, augmentation="mask:0.1"),
            train_dataset=cache_teacher_outputs(teacher, _data(tokenizer)),
            processing_class=tokenizer,
        )
