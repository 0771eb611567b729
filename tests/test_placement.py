"""Teacher placement: the decision for each strategy, the replicate path for real, DeepSpeed and FSDP paths with
stand-ins, and the example launch configs.

Accelerate refuses to build a DeepSpeed Accelerator without deepspeed installed, and a single CPU process
never gets DistributedType.FSDP (it falls back to NO). So the DeepSpeed/FSDP decisions use a stand-in with the
two attributes `teacher_placement` reads (`distributed_type`, `state.deepspeed_plugin`), holding a real
`accelerate.utils.DeepSpeedPlugin`; deepspeed itself and FSDP's wrappers are replaced by recorders.
"""

from __future__ import annotations

import os
import sys
import types

import pytest
import torch
from accelerate.utils import DeepSpeedPlugin, DistributedType

from hf_kd.teacher import _deepspeed_inference_config, place_teacher, teacher_placement

EXAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples", "accelerate")


def _stand_in(distributed_type, deepspeed_plugin=None, fsdp_plugin=None, mixed_precision="no"):
    state = types.SimpleNamespace(deepspeed_plugin=deepspeed_plugin, fsdp_plugin=fsdp_plugin)
    return types.SimpleNamespace(
        distributed_type=distributed_type,
        state=state,
        device=torch.device("cpu"),
        mixed_precision=mixed_precision,
    )


def _teacher():
    from conftest import tiny_model

    return tiny_model(seed=1, num_layers=2, hidden=48)


@pytest.mark.parametrize(
    ("accelerator", "expected"),
    [
        (_stand_in(DistributedType.DEEPSPEED, DeepSpeedPlugin(zero_stage=3)), "deepspeed_zero3"),
        (_stand_in(DistributedType.DEEPSPEED, DeepSpeedPlugin(zero_stage=2)), "replicate"),
        (_stand_in(DistributedType.DEEPSPEED, DeepSpeedPlugin(zero_stage=0)), "replicate"),
        (_stand_in(DistributedType.FSDP), "fsdp"),
        (_stand_in(DistributedType.MULTI_GPU), "replicate"),
        (_stand_in(DistributedType.MULTI_CPU), "replicate"),
        (_stand_in(DistributedType.NO), "replicate"),
    ],
    ids=["zero3", "zero2", "zero0", "fsdp", "ddp-gpu", "ddp-cpu", "single"],
)
def test_placement_decision_per_strategy(accelerator, expected):
    assert teacher_placement(accelerator) == expected


def test_replicate_with_a_real_accelerator_freezes_casts_and_never_wraps():
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    teacher = _teacher()
    assert teacher_placement(accelerator) == "replicate"
    placed, placement = place_teacher(teacher, accelerator, "bfloat16")
    assert placement == "replicate" and placed is teacher  # the module itself: no DDP or other wrapper
    assert not placed.training
    assert all(not p.requires_grad and p.dtype == torch.bfloat16 for p in placed.parameters())
    assert all(p.device == accelerator.device for p in placed.parameters())
    assert not any(m is placed for m in accelerator._models)  # the Accelerator does not track it


def test_deepspeed_inference_config_drops_training_parts_and_resolves_auto():
    plugin = DeepSpeedPlugin(zero_stage=3)
    plugin.deepspeed_config.update(
        {
            "optimizer": {"type": "AdamW", "params": {"lr": "auto"}},
            "scheduler": {"type": "WarmupLR"},
            "bf16": {"enabled": "auto"},
            "fp16": {"enabled": "auto"},
        }
    )
    plugin.deepspeed_config["zero_optimization"].update(
        {
            "reduce_bucket_size": "auto",
            "stage3_prefetch_bucket_size": "auto",
            "stage3_param_persistence_threshold": "auto",
            "some_future_field": "auto",
        }
    )
    original = repr(plugin.deepspeed_config)
    accelerator = _stand_in(DistributedType.DEEPSPEED, plugin, mixed_precision="bf16")
    config = _deepspeed_inference_config(accelerator, _teacher())  # hidden size 48
    assert repr(plugin.deepspeed_config) == original  # the student's config is left alone
    for key in (
        "optimizer",
        "scheduler",
        "train_batch_size",
        "gradient_accumulation_steps",
        "gradient_clipping",
    ):
        assert key not in config
    assert config["train_micro_batch_size_per_gpu"] == 1
    zero = config["zero_optimization"]
    assert zero["stage"] == 3 and "offload_optimizer" not in zero
    assert zero["reduce_bucket_size"] == 48 * 48
    assert zero["stage3_prefetch_bucket_size"] == int(0.9 * 48 * 48)
    assert zero["stage3_param_persistence_threshold"] == 480
    assert "some_future_field" not in zero
    assert config["bf16"] == {"enabled": True} and config["fp16"] == {"enabled": False}

    def no_auto(value):
        return all(no_auto(v) for v in value.values()) if isinstance(value, dict) else value != "auto"

    assert no_auto(config)


def test_deepspeed_zero3_path_hands_the_frozen_teacher_to_deepspeed(monkeypatch):
    calls = []

    class Engine:
        def __init__(self, model):
            self.module = model

    def initialize(model, config):
        calls.append((model, config))
        return Engine(model), None, None, None

    monkeypatch.setitem(sys.modules, "deepspeed", types.SimpleNamespace(initialize=initialize))
    accelerator = _stand_in(DistributedType.DEEPSPEED, DeepSpeedPlugin(zero_stage=3), mixed_precision="bf16")
    teacher = _teacher()
    teacher.train()
    engine, placement = place_teacher(teacher, accelerator, "bfloat16")
    assert placement == "deepspeed_zero3"
    assert len(calls) == 1 and calls[0][0] is teacher
    assert calls[0][1]["zero_optimization"]["stage"] == 3 and "optimizer" not in calls[0][1]
    assert engine.module is teacher and not teacher.training
    assert all(not p.requires_grad and p.dtype == torch.bfloat16 for p in teacher.parameters())


def test_deepspeed_zero3_without_deepspeed_says_how_to_fix_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "deepspeed", None)  # import deepspeed -> ImportError
    accelerator = _stand_in(DistributedType.DEEPSPEED, DeepSpeedPlugin(zero_stage=3))
    with pytest.raises(ImportError, match="pip install deepspeed"):
        place_teacher(_teacher(), accelerator)


def test_fsdp2_path_shards_each_transformer_block_and_the_root(monkeypatch):
    import torch.distributed.fsdp as fsdp
    from accelerate.utils import FullyShardedDataParallelPlugin

    sharded = []
    monkeypatch.setattr(fsdp, "fully_shard", lambda module, **options: sharded.append((module, options)))
    plugin = FullyShardedDataParallelPlugin(fsdp_version=2, reshard_after_forward=True)
    teacher = _teacher()
    placed, placement = place_teacher(teacher, _stand_in(DistributedType.FSDP, fsdp_plugin=plugin))
    assert placement == "fsdp" and placed is teacher and not teacher.training
    # Every block named in _no_split_modules (BERT: embeddings and each layer), in order, then the root.
    blocks = [m for m in teacher.modules() if type(m).__name__ in teacher._no_split_modules]
    assert all(layer in blocks for layer in teacher.bert.encoder.layer)
    assert [m for m, _ in sharded] == [*blocks, teacher]
    assert all(o["reshard_after_forward"] is True for _, o in sharded)
    assert all(not p.requires_grad for p in teacher.parameters())


@pytest.mark.parametrize(
    ("name", "distributed_type"),
    [("ddp", "MULTI_GPU"), ("fsdp", "FSDP"), ("deepspeed_zero3", "DEEPSPEED")],
)
def test_example_accelerate_configs_load(name, distributed_type):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(os.path.join(EXAMPLES, f"{name}.yaml"))
    assert config.distributed_type == getattr(DistributedType, distributed_type)
    assert config.num_processes > 1 and config.mixed_precision == "bf16"
    if name == "fsdp":
        assert config.fsdp_config["fsdp_version"] == 2
    if name == "deepspeed_zero3":
        assert config.deepspeed_config["zero_stage"] == 3


# ---- teacher precision by measurement ---------------------------------------------------------------------


def _sharp_teacher(cls_name="BertForSequenceClassification"):
    """A tiny teacher with clear winners (a random one is near-uniform, where any rounding flips the argmax)."""
    from conftest import tiny_model

    teacher = tiny_model(cls_name, seed=1, num_layers=2, hidden=48)
    with torch.no_grad():
        teacher.classifier.weight.mul_(30.0)
    return teacher


def _batch(n=16, seq_len=12):
    from conftest import tiny_classification_dataset
    from transformers import default_data_collator

    return default_data_collator(list(tiny_classification_dataset(n=n, seq_len=seq_len, seed=5)))


def _expected_figures(teacher, bf16_teacher, batch, token_level=False):
    """Argmax agreement and mean KL(p_fp32 || p_bf16) per item, computed here from the two models directly."""
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        p = teacher(**inputs).logits.float()
        q = bf16_teacher(**inputs).logits.float()
    if token_level:
        keep = batch["attention_mask"].bool()
        p, q = p[keep], q[keep]
    agreement = (p.argmax(-1) == q.argmax(-1)).float().mean().item()
    kl = torch.nn.functional.kl_div(q.log_softmax(-1), p.log_softmax(-1), log_target=True, reduction="none")
    return agreement, kl.sum(-1).mean().item()


@pytest.mark.parametrize("requested", ["float32", "bfloat16", "float16"])
def test_forced_teacher_dtype_is_taken_without_a_check(requested, monkeypatch):
    import hf_kd.teacher as teacher_module

    monkeypatch.setattr(teacher_module, "_comparable_logits", lambda *a: pytest.fail("no check may run"))
    precision = teacher_module.resolve_teacher_dtype(_sharp_teacher(), _batch(), "cpu", requested)
    assert precision.dtype == getattr(torch, requested) and precision.agreement is None
    assert requested in precision.reason


@pytest.mark.parametrize("cls_name", ["BertForSequenceClassification", "BertForTokenClassification"])
def test_auto_picks_bfloat16_when_fast_and_in_agreement(cls_name, monkeypatch, caplog):
    import copy

    import hf_kd.teacher as teacher_module

    monkeypatch.setattr(teacher_module, "bf16_is_fast", lambda device: (True, "stand-in: fast bfloat16"))
    teacher, batch = _sharp_teacher(cls_name), _batch()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    with caplog.at_level("INFO", logger="hf_kd.teacher"):
        precision = teacher_module.resolve_teacher_dtype(teacher, batch, "cpu")
    agreement, kl = _expected_figures(
        teacher, copy.deepcopy(teacher).to(torch.bfloat16), batch, token_level="Token" in cls_name
    )
    assert precision.dtype == torch.bfloat16
    assert precision.agreement == pytest.approx(agreement) and agreement >= teacher_module.BF16_MIN_AGREEMENT
    assert precision.kl == pytest.approx(kl, rel=1e-4, abs=1e-9) and kl <= teacher_module.BF16_MAX_KL
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())  # the teacher is untouched
    assert any("bfloat16" in r.getMessage() and "agreement" in r.getMessage() for r in caplog.records)
    summary = precision.as_dict()
    assert summary["teacher_dtype"] == "bfloat16" and summary["bf16_argmax_agreement"] == precision.agreement


def test_auto_falls_back_to_float32_when_the_bf16_teacher_disagrees(monkeypatch, caplog):
    import copy

    import hf_kd.teacher as teacher_module

    def perturbed_copy(model):  # the bfloat16 copy gets its class scores scrambled
        clone = copy.deepcopy(model).to(torch.bfloat16)
        with torch.no_grad():
            clone.classifier.weight.copy_(clone.classifier.weight.flip(0))
        return clone

    monkeypatch.setattr(teacher_module, "bf16_is_fast", lambda device: (True, "stand-in: fast bfloat16"))
    monkeypatch.setattr(teacher_module, "_bfloat16_copy", perturbed_copy)
    teacher, batch = _sharp_teacher(), _batch()
    with caplog.at_level("WARNING", logger="hf_kd.teacher"):
        precision = teacher_module.resolve_teacher_dtype(teacher, batch, "cpu")
    agreement, kl = _expected_figures(teacher, perturbed_copy(teacher), batch)
    assert precision.dtype == torch.float32
    assert precision.agreement == pytest.approx(agreement) and agreement < teacher_module.BF16_MIN_AGREEMENT
    assert precision.kl == pytest.approx(kl, rel=1e-4)
    (record,) = [r for r in caplog.records if "keeping float32" in r.getMessage()]
    assert "disagrees" in record.getMessage() and f"{agreement:.4f}" in record.getMessage()


def test_auto_keeps_float32_on_a_cpu_without_bf16_instructions(monkeypatch):
    import hf_kd.teacher as teacher_module

    monkeypatch.setattr(teacher_module, "_cpu_flags", lambda: {"avx2", "fma"})
    assert teacher_module.bf16_is_fast("cpu")[0] is False
    precision = teacher_module.resolve_teacher_dtype(_sharp_teacher(), _batch(), "cpu")
    assert precision.dtype == torch.float32 and precision.agreement is None
    assert "neither amx_bf16 nor avx512_bf16" in precision.reason
    for flags in ({"avx512_bf16"}, {"amx_bf16", "amx_tile"}):
        monkeypatch.setattr(teacher_module, "_cpu_flags", lambda flags=flags: flags)
        assert teacher_module.bf16_is_fast("cpu")[0] is True


def test_place_teacher_casts_to_the_measured_dtype():
    from accelerate import Accelerator

    from hf_kd.teacher import TeacherPrecision

    teacher = _sharp_teacher()
    measured = TeacherPrecision(torch.bfloat16, 1.0, 0.0, "stand-in measurement")
    placed, placement = place_teacher(teacher, Accelerator(cpu=True), "auto", measured)
    assert placement == "replicate" and all(p.dtype == torch.bfloat16 for p in placed.parameters())
    kept, _ = place_teacher(
        _sharp_teacher(), Accelerator(cpu=True), "auto"
    )  # auto, nothing measured: as loaded
    assert all(p.dtype == torch.float32 for p in kept.parameters())


def test_auto_on_this_machine_follows_its_cpu_flags():
    """No stand-in: whatever this CPU has, auto measures (bfloat16 instructions) or keeps float32 (none)."""
    from hf_kd.teacher import BF16_MIN_AGREEMENT, bf16_is_fast, resolve_teacher_dtype

    flags = open("/proc/cpuinfo").read().split() if os.path.exists("/proc/cpuinfo") else []
    has_bf16 = "avx512_bf16" in flags or "amx_bf16" in flags
    assert bf16_is_fast("cpu")[0] is has_bf16
    precision = resolve_teacher_dtype(_sharp_teacher(), _batch(), "cpu")
    if has_bf16:
        assert precision.dtype == torch.bfloat16 and precision.agreement >= BF16_MIN_AGREEMENT
    else:
        assert precision.dtype == torch.float32 and precision.agreement is None


# ---- DistillationTrainer resolves teacher_dtype="auto" at set-up -------------------------------------------


def _auto_trainer(out, teacher, monkeypatch, fast=True, **kw):
    from conftest import make_args, tiny_classification_dataset, tiny_model

    import hf_kd.teacher as teacher_module
    from hf_kd import DistillationTrainer

    monkeypatch.setattr(teacher_module, "bf16_is_fast", lambda device: (fast, "stand-in: fast bfloat16"))
    return DistillationTrainer(
        model=tiny_model(seed=2, num_layers=1, hidden=32),
        teacher_model=teacher,
        args=make_args(out, teacher_dtype="auto", **kw),
        train_dataset=tiny_classification_dataset(n=12, seq_len=12, seed=5),
    )


def test_trainer_auto_checks_the_first_batch_and_runs_a_bfloat16_teacher(tmp_out, monkeypatch, caplog):
    import copy

    from conftest import tiny_classification_dataset

    teacher = _sharp_teacher()
    reference = copy.deepcopy(teacher)
    seen = []
    teacher.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(kwargs["input_ids"]), with_kwargs=True
    )
    with caplog.at_level("INFO", logger="hf_kd.teacher"):
        trainer = _auto_trainer(tmp_out, teacher, monkeypatch)
    # The check ran the float32 teacher on the first 4 training examples, in dataset order.
    first = tiny_classification_dataset(n=12, seq_len=12, seed=5)[:4]
    assert torch.equal(seen[0], torch.tensor(first["input_ids"]))
    agreement, kl = _expected_figures(
        reference, copy.deepcopy(reference).to(torch.bfloat16), {k: torch.tensor(v) for k, v in first.items()}
    )
    (precision,) = trainer.teacher_precision
    assert precision.dtype == torch.bfloat16 and precision.agreement == pytest.approx(agreement)
    assert precision.kl == pytest.approx(kl, rel=1e-4, abs=1e-9)
    assert all(p.dtype == torch.bfloat16 for p in trainer.teacher.parameters())
    assert any("bfloat16" in r.getMessage() and f"{agreement:.4f}" in r.getMessage() for r in caplog.records)
    (summary,) = trainer.distillation_summary()["teacher_precision"]
    assert summary["teacher_dtype"] == "bfloat16" and summary["bf16_argmax_agreement"] == precision.agreement

    # Training runs the bfloat16 teacher; the card's recipe states the decision and its figures.
    trainer.args.max_steps = 2
    trainer.train()
    readme = trainer.create_model_card(latency_batch_sizes=(1,), latency_seq_len=8)
    line = next(line for line in str(readme).splitlines() if line.startswith("- Teacher precision"))
    assert "bfloat16" in line and f"{agreement:.4f}" in line


def test_trainer_auto_falls_back_to_float32_when_a_perturbed_bf16_teacher_disagrees(
    tmp_out, monkeypatch, caplog
):
    import copy

    import hf_kd.teacher as teacher_module

    def perturbed_copy(model):
        clone = copy.deepcopy(model).to(torch.bfloat16)
        with torch.no_grad():
            clone.classifier.weight.copy_(clone.classifier.weight.flip(0))
        return clone

    monkeypatch.setattr(teacher_module, "_bfloat16_copy", perturbed_copy)
    with caplog.at_level("WARNING", logger="hf_kd.teacher"):
        trainer = _auto_trainer(tmp_out, _sharp_teacher(), monkeypatch)
    (precision,) = trainer.teacher_precision
    assert precision.dtype == torch.float32 and precision.agreement < teacher_module.BF16_MIN_AGREEMENT
    assert all(p.dtype == torch.float32 for p in trainer.teacher.parameters())
    assert any("keeping float32" in r.getMessage() for r in caplog.records)
    assert "disagrees" in trainer.distillation_summary()["teacher_precision"][0]["reason"]


def test_trainer_auto_keeps_float32_without_fast_bf16_and_keeps_a_teacher_loaded_in_bf16(
    tmp_out, monkeypatch
):
    trainer = _auto_trainer(tmp_out, _sharp_teacher(), monkeypatch, fast=False)
    assert trainer.teacher_precision[0].dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in trainer.teacher.parameters())
    loaded_half = _sharp_teacher().to(torch.float16)
    trainer = _auto_trainer(tmp_out, loaded_half, monkeypatch)
    assert (
        trainer.teacher_precision[0].dtype == torch.float16 and trainer.teacher_precision[0].agreement is None
    )
    assert all(p.dtype == torch.float16 for p in trainer.teacher.parameters())


def test_trainer_forced_dtype_is_cast_without_a_check(tmp_out, monkeypatch):
    from conftest import make_args, tiny_classification_dataset, tiny_model

    import hf_kd.teacher as teacher_module
    from hf_kd import DistillationTrainer

    monkeypatch.setattr(teacher_module, "_comparable_logits", lambda *a: pytest.fail("no check may run"))
    trainer = DistillationTrainer(
        model=tiny_model(seed=2, num_layers=1, hidden=32),
        teacher_model=_sharp_teacher(),
        args=make_args(tmp_out, teacher_dtype="bfloat16"),
        train_dataset=tiny_classification_dataset(n=12, seq_len=12, seed=5),
    )
    assert trainer.teacher_precision[0].reason == "teacher_dtype='bfloat16' was asked for"
    assert all(p.dtype == torch.bfloat16 for p in trainer.teacher.parameters())


def test_trainer_auto_keeps_bfloat16_only_if_every_process_agrees(tmp_out, monkeypatch, caplog):
    """The vote across processes: a stand-in Accelerator whose reduction reports that the other process's check
    failed (sum of votes 1 of 2) turns this process's bfloat16 into float32."""
    trainer = _auto_trainer(tmp_out, _sharp_teacher(), monkeypatch)
    assert trainer.teacher_precision[0].dtype == torch.bfloat16
    votes = []
    trainer.accelerator = types.SimpleNamespace(
        num_processes=2,
        device=torch.device("cpu"),
        reduce=lambda t, reduction: votes.append((t.item(), reduction)) or t,  # the other process voted 0
    )
    with caplog.at_level("WARNING", logger="hf_kd.trainer"):
        precision = trainer._teacher_precision(_sharp_teacher(), trainer._first_batch())
    assert votes == [(1.0, "sum")] and precision.dtype == torch.float32
    assert "another process" in precision.reason and precision.agreement is not None
    trainer.accelerator.reduce = lambda t, reduction: t * 2  # both processes voted bfloat16
    assert trainer._teacher_precision(_sharp_teacher(), trainer._first_batch()).dtype == torch.bfloat16


# ---- bf16=True on a CPU that emulates bfloat16 is warned about ----------------------------------------------


@pytest.mark.parametrize("flags, warned", [({"avx2", "fma"}, True), ({"avx2", "avx512_bf16"}, False)])
def test_bf16_autocast_on_a_cpu_without_native_bfloat16_is_warned_about(tmp_path, monkeypatch, caplog, flags, warned):
    from conftest import make_args, tiny_classification_dataset, tiny_model

    import hf_kd.teacher as teacher_module
    from hf_kd import DistillationTrainer

    monkeypatch.setattr(teacher_module, "_cpu_flags", lambda: flags)
    with caplog.at_level("WARNING", logger="hf_kd.teacher"):
        DistillationTrainer(
            model=tiny_model(seed=2, num_layers=1, hidden=32),
            teacher_model=tiny_model(seed=1),
            args=make_args(str(tmp_path), bf16=True, teacher_dtype="float32"),
            train_dataset=tiny_classification_dataset(n=8, seq_len=8, seed=5),
        )
    messages = [r.getMessage() for r in caplog.records if "bf16=True" in r.getMessage()]
    assert bool(messages) is warned
    if warned:
        assert "neither amx_bf16 nor avx512_bf16" in messages[0] and "drop bf16" in messages[0]
    caplog.clear()
    with caplog.at_level("WARNING", logger="hf_kd.teacher"):  # float32 training: nothing to say
        assert teacher_module.warn_if_autocast_is_emulated(make_args(str(tmp_path), bf16=False)) is False
    assert not caplog.records


@pytest.mark.slow
def test_hf_kd_finetune_with_bf16_on_an_emulating_cpu_warns(tmp_path, monkeypatch, caplog):
    import cli_assets as A

    import hf_kd.teacher as teacher_module
    from hf_kd import cli

    monkeypatch.setattr(teacher_module, "_cpu_flags", lambda: {"avx2"})
    pretrained = A.save_teacher(str(tmp_path / "pretrained"), "BertForSequenceClassification", A.SENTIMENTS)
    train = A.write_csv(str(tmp_path / "train.csv"), ["sentence", "label"], A.sentiment_rows(16, 0))
    with caplog.at_level("WARNING", logger="hf_kd.teacher"):
        code = cli.main(
            ["finetune", "--model_name_or_path", pretrained, "--train_file", train, "--output_dir",
             str(tmp_path / "out"), "--bf16", *A.QUICK]
        )  # fmt: skip
    assert code == 0
    assert any("bf16=True on this CPU" in r.getMessage() for r in caplog.records)
