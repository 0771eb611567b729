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
