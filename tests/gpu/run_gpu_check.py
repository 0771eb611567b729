"""GPU check for hf-kd: fp16 and bf16 distillation on one CUDA device, teacher in half precision.

Run on a machine with one CUDA GPU:  python tests/gpu/run_gpu_check.py
Not part of the test suite (pyproject's pytest config skips tests/gpu). Needs no download: the teacher and
student are random BERTs built from configs, the data random token ids. Takes well under 2 minutes on an H100.

For each precision it trains a 6-layer, hidden-384 teacher-sized BERT into a 2-layer, hidden-256 student (logits
KD + CE + hidden-state MSE through 256 -> 384 projections), then checks that every logged loss is finite, the
student's weights and projections changed, the teacher's did not, the teacher ran in the requested dtype and the
student kept float32 master weights. It prints one row per precision and exits non-zero if any check failed.
"""

from __future__ import annotations

import math
import sys
import tempfile
import time

import torch

STEPS = 40
BATCH = 32
SEQ_LEN = 128
VOCAB = 30522
NUM_LABELS = 5
# (name, TrainingArguments precision flags, teacher_dtype)
RUNS = [
    ("fp32", {}, "float32"),
    ("fp16", {"fp16": True}, "float16"),
    ("bf16", {"bf16": True}, "bfloat16"),
]


def bert(layers: int, hidden: int, heads: int, seed: int):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * hidden,
        max_position_embeddings=512,
        num_labels=NUM_LABELS,
    )
    return BertForSequenceClassification(config)


def dataset(n: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Random token ids, right-padded to SEQ_LEN, with labels: a plain list of examples (a map-style dataset
    the Trainer accepts), so that the `datasets` package is not needed on the GPU machine."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(SEQ_LEN // 4, SEQ_LEN + 1, (n,), generator=g)
    ids = torch.randint(1000, VOCAB, (n, SEQ_LEN), generator=g)
    mask = (torch.arange(SEQ_LEN)[None, :] < lengths[:, None]).long()
    ids = ids * mask  # right padding with id 0
    labels = torch.randint(0, NUM_LABELS, (n,), generator=g)
    return [{"input_ids": ids[i], "attention_mask": mask[i], "labels": labels[i]} for i in range(n)]


class StepTimer:
    """A TrainerCallback that times optimizer steps after the first few (CUDA warm-up, kernel selection)."""

    def __init__(self, skip: int = 5):
        from transformers import TrainerCallback

        timer = self

        class _Callback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                if state.global_step == skip:
                    torch.cuda.synchronize()
                    timer.start = time.perf_counter()

            def on_train_end(self, args, state, control, **kw):
                torch.cuda.synchronize()
                timer.seconds_per_step = (time.perf_counter() - timer.start) / max(
                    state.global_step - skip, 1
                )

        self.callback = _Callback()
        self.start = 0.0
        self.seconds_per_step = float("nan")


def run(name: str, precision: dict, teacher_dtype: str, train_data, out_dir: str) -> dict:
    from hf_kd import DistillationConfig, DistillationTrainer

    teacher = bert(6, 384, 12, seed=1)
    with torch.no_grad():  # a random teacher is near-uniform; sharpen it so the KD term carries signal
        teacher.classifier.weight.mul_(20.0)
    teacher_before = {k: v.detach().to(torch.float32).clone() for k, v in teacher.state_dict().items()}
    student = bert(2, 256, 8, seed=0)
    student_before = {k: v.detach().clone() for k, v in student.state_dict().items()}
    args = DistillationConfig(
        output_dir=out_dir,
        per_device_train_batch_size=BATCH,
        max_steps=STEPS,
        learning_rate=1e-4,
        logging_steps=5,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        seed=0,
        teacher_dtype=teacher_dtype,
        temperature=2.0,
        alpha=0.5,
        hidden_weight=1.0,
        dataloader_num_workers=0,
        **precision,
    )
    timer = StepTimer()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    trainer = DistillationTrainer(
        model=student, args=args, train_dataset=train_data, teacher_model=teacher, callbacks=[timer.callback]
    )
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # keep the output to the table; losses are checked below
    trainer.train()
    peak = torch.cuda.max_memory_allocated()

    problems = []
    logs = [h for h in trainer.state.log_history if "loss" in h]
    values = [h[k] for h in logs for k in h if k.startswith("loss")]
    if not logs or not all(math.isfinite(v) for v in values):
        problems.append(f"non-finite logged loss: {logs}")
    if trainer.nonfinite_skipped:
        problems.append(f"{trainer.nonfinite_skipped} micro-batches skipped as non-finite")
    model = trainer.accelerator.unwrap_model(trainer.model)
    if next(model.parameters()).device.type != "cuda":
        problems.append("student is not on the GPU")
    if any(p.dtype != torch.float32 for p in model.parameters()):
        problems.append("student master weights are not float32")
    after = model.state_dict()
    if all(torch.equal(student_before[k].to(after[k].device), after[k]) for k in student_before):
        problems.append("student weights did not change")
    projections = [k for k in after if "hf_kd_projections" in k]
    if not projections:
        problems.append("no hidden-size projections were trained")
    t = trainer.teacher
    expected = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[teacher_dtype]
    if any(p.dtype != expected for p in t.parameters()):
        problems.append(f"teacher is not in {teacher_dtype}")
    if any(p.requires_grad for p in t.parameters()):
        problems.append("teacher has trainable parameters")
    tol = 0.0 if teacher_dtype == "float32" else 1e-2  # compare after the cast to the teacher's dtype
    for k, v in t.state_dict().items():
        before = teacher_before[k].to(v.dtype).to(torch.float32).to(v.device)
        if not torch.allclose(v.float(), before, atol=tol, rtol=0):
            problems.append(f"teacher weight {k} changed")
            break
    row = {
        "precision": name,
        "teacher_dtype": teacher_dtype,
        "steps": trainer.state.global_step,
        "s_per_step": timer.seconds_per_step,
        "loss_kd": logs[-1].get("loss_kd", float("nan")) if logs else float("nan"),
        "loss": logs[-1]["loss"] if logs else float("nan"),
        "peak_mib": peak / 2**20,
        "problems": problems,
    }
    del trainer, model, teacher, student
    torch.cuda.empty_cache()
    return row


def main() -> int:
    if not torch.cuda.is_available():
        print("No CUDA device: this check needs one GPU (see tests/gpu/README.md).")
        return 2
    import transformers

    import hf_kd

    print(
        f"device: {torch.cuda.get_device_name(0)}; torch {torch.__version__}, transformers "
        f"{transformers.__version__}, hf_kd {hf_kd.__version__}"
    )
    print(
        f"teacher BERT 6x384, student BERT 2x256 (projected to 384), batch {BATCH}, length {SEQ_LEN}, "
        f"{STEPS} steps, logits KD + CE + hidden MSE"
    )
    train_data = dataset(BATCH * STEPS)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, precision, teacher_dtype in RUNS:
            if name == "bf16" and not torch.cuda.is_bf16_supported():
                print("bf16: not supported on this GPU, skipped")
                continue
            rows.append(run(name, precision, teacher_dtype, train_data, tmp))

    header = f"{'precision':<9} {'teacher':<9} {'steps':>5} {'s/step':>8} {'loss':>8} {'loss_kd':>9} {'peak MiB':>9}  result"
    print(header)
    print("-" * len(header))
    for r in rows:
        verdict = "ok" if not r["problems"] else "FAIL: " + "; ".join(r["problems"])
        print(
            f"{r['precision']:<9} {r['teacher_dtype']:<9} {r['steps']:>5} {r['s_per_step']:>8.4f} "
            f"{r['loss']:>8.4f} {r['loss_kd']:>9.4f} {r['peak_mib']:>9.1f}  {verdict}"
        )
    failed = [r["precision"] for r in rows if r["problems"]]
    print("GPU CHECK " + ("FAILED: " + ", ".join(failed) if failed else "PASSED"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
