"""PEFT students: only the adapter (plus head and projections) trains; saved as an adapter and merged."""

from __future__ import annotations

import os

import pytest
import torch
from conftest import tiny_classification_dataset, tiny_model

from hf_kd import DistillationConfig, DistillationConfigError, DistillationTrainer


def _teacher():
    teacher = tiny_model(seed=1, num_layers=4, hidden=48)
    with torch.no_grad():
        teacher.classifier.weight.mul_(30.0)  # sharpen the random teacher so the KD term is not ~0
    return teacher


def _args(tmp_out, **kw):
    defaults = dict(
        output_dir=tmp_out,
        use_cpu=True,
        per_device_train_batch_size=4,
        max_steps=4,
        learning_rate=5e-2,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        temperature=1.0,
        hidden_weight=1.0,
        teacher_dtype="float32",
    )
    return DistillationConfig(**{**defaults, **kw})


def _probe_inputs():
    data = tiny_classification_dataset(n=4, seed=9)
    return {k: torch.tensor(data[k]) for k in ("input_ids", "attention_mask")}


@pytest.mark.slow
def test_lora_student_trains_only_the_adapter_and_saves_both_ways(tmp_out, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    teacher = _teacher()
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    trainer = DistillationTrainer(
        model=tiny_model(seed=0),
        args=_args(tmp_out),
        train_dataset=tiny_classification_dataset(n=16),
        teacher_model=teacher,
        peft_config=True,
    )
    student = trainer.model
    assert isinstance(student, PeftModel)
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    trainable = {n for n, p in student.named_parameters() if p.requires_grad}
    # What trains: LoRA matrices, the (new) classification head peft keeps as modules_to_save, projections.
    assert trainable and all(
        "lora_" in n or "modules_to_save" in n or "hf_kd_projections" in n for n in trainable
    ), trainable
    assert any("hf_kd_projections" in n for n in trainable)  # hidden 32 -> 48

    trainer.train()

    after = dict(student.named_parameters())
    frozen = [n for n in before if n not in trainable]
    assert frozen and all(torch.equal(before[n], after[n]) for n in frozen)  # base weights untouched
    lora_b = [n for n in trainable if "lora_B" in n]  # lora_B starts at zero: any update shows
    assert lora_b and all(not torch.equal(before[n], after[n]) for n in lora_b)
    assert any(not torch.equal(before[n], after[n]) for n in trainable if "hf_kd_projections" in n)
    assert all(torch.equal(teacher_before[k], v) for k, v in trainer.teacher.state_dict().items())

    inputs = _probe_inputs()
    student.eval()
    with torch.no_grad():
        expected = student(**inputs).logits

    # 1. The adapter, loaded onto a fresh copy of the base student.
    adapter_dir = str(tmp_path / "adapter")
    trainer.save_model(adapter_dir)
    assert os.path.isfile(os.path.join(adapter_dir, "adapter_config.json"))
    from safetensors.torch import load_file

    saved = load_file(os.path.join(adapter_dir, "adapter_model.safetensors"))
    assert saved and not any("hf_kd_projections" in k for k in saved)  # projections are training-only
    reloaded = PeftModel.from_pretrained(tiny_model(seed=0), adapter_dir).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, expected)

    # 2. Merged into a full student that loads without peft.
    merged_dir = str(tmp_path / "merged")
    merged = trainer.save_merged_student(merged_dir)
    assert isinstance(trainer.model, PeftModel)  # merging worked on a copy
    full, info = AutoModelForSequenceClassification.from_pretrained(merged_dir, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    assert not any("lora" in k or "hf_kd" in k for k in full.state_dict())
    full.eval()
    merged.eval()
    with torch.no_grad():
        torch.testing.assert_close(full(**inputs).logits, merged(**inputs).logits)
        torch.testing.assert_close(full(**inputs).logits, expected, rtol=1e-4, atol=1e-5)


def test_a_peft_model_passed_as_model_keeps_its_own_config(tmp_out):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=["query"])
    student = get_peft_model(tiny_model(seed=0), config)
    trainer = DistillationTrainer(
        model=student,
        args=_args(tmp_out, hidden_weight=0.0),
        train_dataset=tiny_classification_dataset(n=8),
        teacher_model=_teacher(),
    )
    assert trainer.model is student and trainer.task == "sequence"
    trainable = [n for n, p in student.named_parameters() if p.requires_grad]
    assert any("query.lora_A" in n for n in trainable) and not any("value.lora" in n for n in trainable)


def test_peft_config_on_a_peft_model_is_refused(tmp_out):
    from peft import LoraConfig, get_peft_model

    student = get_peft_model(tiny_model(seed=0), LoraConfig(task_type="SEQ_CLS", target_modules=["query"]))
    with pytest.raises(DistillationConfigError, match="already a peft model"):
        DistillationTrainer(
            model=student,
            args=_args(tmp_out),
            train_dataset=tiny_classification_dataset(n=8),
            teacher_model=_teacher(),
            peft_config=True,
        )


def test_save_merged_needs_a_peft_student(tmp_out, tmp_path):
    trainer = DistillationTrainer(
        model=tiny_model(seed=0),
        args=_args(tmp_out, hidden_weight=0.0),
        train_dataset=tiny_classification_dataset(n=8),
        teacher_model=_teacher(),
    )
    with pytest.raises(DistillationConfigError, match="save_model"):
        trainer.save_merged_student(str(tmp_path / "merged"))
