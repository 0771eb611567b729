"""One distillation run under DDP, DeepSpeed ZeRO-3, FSDP1 or FSDP2 on CPU processes (gloo); see tests/test_sharded.py.

Run: torchrun --nproc_per_node 2 tests/scripts/sharded_worker.py --mode zero3 --out DIR

Teacher: 4-layer BERT, hidden 48. Student: 2-layer BERT, hidden 32. Loss: logits KD + CE + hidden-state MSE through
learned 32 -> 48 projections. The dataset is exactly one global batch (2 processes x 4 examples), so every
optimizer step sees the same 8 examples under every strategy.

Every process writes DIR/rank{r}.json (log history, the distributed type, per-rank and full parameter counts of
the student and the teacher) and DIR/rank{r}.safetensors (the whole student, gathered from its shards, projections
included).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))  # tests/, for conftest
sys.path.insert(0, HERE)  # for accelerate_cpu_fsdp

GLOBAL_BATCH = 8
# ZeRO-3 for tiny models: with the default persistence threshold, parameters below about 10 x hidden stay whole
# on every rank; 0 partitions them all. torch_adam keeps DeepSpeed's CPU Adam extension out of the run.
ZERO3_CONFIG = {
    "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
    "train_micro_batch_size_per_gpu": "auto",
    "train_batch_size": "auto",
    "gradient_accumulation_steps": "auto",
    "gradient_clipping": "auto",
    "optimizer": {
        "type": "AdamW",
        "params": {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto", "torch_adam": True},
    },
}


def strategy_args(mode: str, out: str) -> dict:
    """TrainingArguments fields for `mode` under torchrun (accelerate launch passes the same through its flags)."""
    if mode == "zero3":
        path = os.path.join(out, "zero3.json")
        with open(path, "w") as f:
            json.dump(ZERO3_CONFIG, f)
        return {"deepspeed": path}
    if mode in ("fsdp1", "fsdp2"):
        # The optimizer must see the original parameters (hf-kd's projections sit beside the blocks).
        config = {"fsdp_version": int(mode[-1]), "transformer_layer_cls_to_wrap": ["BertLayer"]}
        if mode == "fsdp1":
            config.update({"use_orig_params": "true", "sync_module_states": "false"})
        return {"fsdp": "full_shard", "fsdp_config": config}
    return {}


def local_numel(module) -> int:
    """Parameters this rank holds: ZeRO-3 partitions (ds_tensor), FSDP2 local shards, FSDP1 flat-parameter shards."""
    total = 0
    for p in module.parameters():
        if hasattr(p, "ds_tensor"):
            total += p.ds_tensor.numel()
        elif hasattr(p, "to_local"):
            total += p.to_local().numel()
        else:
            total += p.numel()
    return total


def gathered_state(trainer, mode: str) -> dict:
    """The whole student's weights on every rank, from whatever shards it is in."""
    model = trainer.model_wrapped
    if mode == "zero3":
        import deepspeed

        module = trainer.accelerator.unwrap_model(model)
        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
            return {k: v.detach().float().clone().contiguous() for k, v in module.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=False))
    return {k.removeprefix("module."): v.detach().float().clone().contiguous() for k, v in state.items()}


def run(out: str, mode: str, steps: int = 3) -> None:
    if mode in ("fsdp1", "fsdp2"):
        import accelerate_cpu_fsdp

        accelerate_cpu_fsdp.apply()
    import torch
    from conftest import tiny_classification_dataset, tiny_model
    from safetensors.torch import save_file

    from hf_kd import DistillationConfig, DistillationTrainer
    from hf_kd.distributed import shutdown_distributed

    teacher = tiny_model(seed=1, num_layers=4, hidden=48)
    with torch.no_grad():  # a random tiny teacher is near-uniform; sharpen it so the KD term is not ~0
        teacher.classifier.weight.mul_(30.0)
    student = tiny_model(seed=0, num_layers=2, hidden=32)
    teacher_full = sum(p.numel() for p in teacher.parameters())
    launched_by_accelerate = os.environ.get("ACCELERATE_USE_DEEPSPEED") or os.environ.get(
        "ACCELERATE_USE_FSDP"
    )
    args = DistillationConfig(
        output_dir=out,
        teacher_dtype="float32",  # compared with float32 runs; auto has its own tests
        use_cpu=True,
        per_device_train_batch_size=GLOBAL_BATCH // 2,
        max_steps=steps,
        learning_rate=1e-2,
        lr_scheduler_type="constant",
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=0,
        temperature=1.0,
        alpha=0.5,
        hidden_weight=1.0,
        disable_tqdm=True,
        ddp_find_unused_parameters=False,
        **({} if launched_by_accelerate and mode != "zero3" else strategy_args(mode, out)),
    )
    trainer = DistillationTrainer(
        model=student,
        args=args,
        train_dataset=tiny_classification_dataset(n=GLOBAL_BATCH, seq_len=12, seed=3),
        teacher_model=teacher,
    )
    student_full = sum(p.numel() for p in trainer.model.parameters())  # projections included, not yet sharded
    trainer.train()

    rank = trainer.args.process_index
    save_file(gathered_state(trainer, mode), os.path.join(out, f"rank{rank}.safetensors"))
    report = {
        "rank": rank,
        "world_size": trainer.args.world_size,
        "distributed_type": str(trainer.accelerator.distributed_type),
        "teacher_placement": trainer.teacher_placement,
        "log_history": trainer.state.log_history,
        "student_local": local_numel(trainer.model_wrapped),
        "student_full": student_full,
        "teacher_local": local_numel(trainer.teacher),
        "teacher_full": teacher_full,
    }
    if mode in ("fsdp1", "fsdp2"):
        import accelerate_cpu_fsdp

        report["accelerate_native_distributed_type"] = accelerate_cpu_fsdp.NATIVE["distributed_type"]
        report["fsdp_version"] = trainer.accelerator.state.fsdp_plugin.fsdp_version
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(report, f)
    del trainer, student, teacher
    shutdown_distributed()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--mode", choices=["ddp", "zero3", "fsdp1", "fsdp2"], required=True)
    parser.add_argument("--steps", type=int, default=3)
    a = parser.parse_args()
    run(a.out, a.mode, a.steps)
