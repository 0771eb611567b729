"""One distillation run, launched by tests/test_distributed.py with torchrun, accelerate launch, or in-process.

Run: torchrun --nproc_per_node 2 tests/scripts/distill_worker.py --out DIR [--per-device 4 --accum 1 --steps 4]

Teacher: 4-layer BERT, hidden 48. Student: 2-layer BERT, hidden 32. Loss: logits KD + CE + hidden-state MSE
through learned 32 -> 48 projections. Every process writes DIR/rank{r}.json (log history, placement facts) and
DIR/rank{r}.safetensors (the trained student, projections included).

Data order: the dataset holds exactly one global batch (per_device x accumulation x processes = 8 examples), so
every optimizer step sees all 8 examples, whatever the sampler's permutation and however the distributed
sampler deals them to processes. The per-step loss is a sum over items divided by the step's item counts, so
it does not depend on which process holds which example; only float summation order differs. Examples have
different lengths (right padding to a fixed 12 tokens), so the two processes hold different token counts: that
is what tests the cross-process normalisation of the token-level hidden-state loss.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # tests/, for conftest

GLOBAL_BATCH = 8


def run(
    out: str,
    per_device: int = 4,
    accum: int = 1,
    steps: int = 4,
    bf16: bool = False,
    fsdp_teacher_check: bool = False,
    transfer: bool = False,
):
    import torch
    from conftest import tiny_classification_dataset, tiny_model
    from safetensors.torch import save_file

    from hf_kd import DistillationConfig, DistillationTrainer
    from hf_kd.distributed import shutdown_distributed

    teacher = tiny_model(seed=1, num_layers=4, hidden=48)
    with torch.no_grad():  # a random tiny teacher is near-uniform; sharpen it so the KD term is not ~0
        teacher.classifier.weight.mul_(30.0)
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = tiny_model(seed=0, num_layers=2, hidden=32)
    args = DistillationConfig(
        output_dir=out,
        teacher_dtype="float32",  # compared with float32 runs; auto has its own tests
        use_cpu=True,
        per_device_train_batch_size=per_device,
        gradient_accumulation_steps=accum,
        max_steps=steps,
        learning_rate=1e-2,
        lr_scheduler_type="constant",
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=0,
        bf16=bf16,
        temperature=1.0,
        alpha=0.5,
        hidden_weight=1.0,
        disable_tqdm=True,
    )
    trainer = DistillationTrainer(
        model=student,
        args=args,
        train_dataset=tiny_classification_dataset(n=GLOBAL_BATCH, seq_len=12, seed=3),
        teacher_model=teacher,
        # --transfer: a transfer set of 8 more rows whose labels are dropped, one per labelled row in each batch.
        unlabeled_dataset=tiny_classification_dataset(n=GLOBAL_BATCH, seq_len=12, seed=4)
        if transfer
        else None,
    )
    trainer.train()

    from torch.nn.parallel import DistributedDataParallel

    rank = trainer.args.process_index
    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    state = {k: v.detach().float().cpu().contiguous() for k, v in unwrapped.state_dict().items()}
    save_file(state, os.path.join(out, f"rank{rank}.safetensors"))
    report = {
        "rank": rank,
        "world_size": trainer.args.world_size,
        "log_history": trainer.state.log_history,
        "teacher_is_ddp": isinstance(trainer.teacher, DistributedDataParallel),
        "student_is_ddp": isinstance(trainer.model_wrapped, DistributedDataParallel),
        "teacher_device": str(next(trainer.teacher.parameters()).device),
        "teacher_placement": trainer.teacher_placement,
        "teacher_unchanged": all(
            torch.equal(teacher_before[k], v) for k, v in trainer.teacher.state_dict().items()
        ),
        "teacher_requires_grad": any(p.requires_grad for p in trainer.teacher.parameters()),
    }
    if fsdp_teacher_check:
        report.update(_fsdp2_teacher_check(trainer.teacher))
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(report, f)
    del trainer, student, teacher, unwrapped
    shutdown_distributed()
    return report


def _fsdp2_teacher_check(replicated) -> dict:
    """Shard a copy of the teacher with hf_kd's FSDP path (FSDP2 on gloo) and compare it with the replica.

    The stand-in Accelerator carries only what `_shard_with_fsdp` reads: a real FSDP2 plugin and the device.
    """
    import copy
    import types

    import torch
    from accelerate.utils import FullyShardedDataParallelPlugin

    from hf_kd.teacher import _shard_with_fsdp, freeze

    plugin = FullyShardedDataParallelPlugin(fsdp_version=2)
    accelerator = types.SimpleNamespace(
        state=types.SimpleNamespace(fsdp_plugin=plugin), device=torch.device("cpu")
    )
    sharded = _shard_with_fsdp(freeze(copy.deepcopy(replicated)), accelerator)
    ids = torch.randint(5, 99, (3, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        expected = replicated(input_ids=ids, attention_mask=mask).logits
        got = sharded(input_ids=ids, attention_mask=mask).logits
    local = sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in sharded.parameters())
    return {
        "fsdp_max_abs_diff": (expected - got).abs().max().item(),
        "fsdp_local_params": local,
        "fsdp_full_params": sum(p.numel() for p in replicated.parameters()),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--per-device", type=int, default=4)
    parser.add_argument("--accum", type=int, default=1)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--fsdp-teacher-check", action="store_true")
    parser.add_argument("--transfer", action="store_true")
    a = parser.parse_args()
    run(a.out, a.per_device, a.accum, a.steps, a.bf16, a.fsdp_teacher_check, a.transfer)
