"""Worker for tests/test_faults.py: one distillation run, optionally SIGKILLed at a step, optionally resumed.

Run as a subprocess so that the kill is a real SIGKILL of a whole Python process (no finally blocks, no
atexit, files left as they were). Writes the final student (projections included) to --final when it ends.

    python kd_run.py --output-dir D --final F.safetensors [--kill-at N] [--resume]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402
from conftest import tiny_bert_config, tiny_classification_dataset, tiny_model  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import BertForSequenceClassification, TrainerCallback  # noqa: E402

from hf_kd import DistillationConfig, DistillationTrainer  # noqa: E402

MAX_STEPS = 10  # 24 examples at batch 4: 6 steps per epoch, so the run crosses an epoch boundary
SAVE_STEPS = 4


class KillAt(TrainerCallback):
    """SIGKILL this process at the end of optimizer step `step`: nothing after it runs, as with an OOM killer."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--final", required=True)
    parser.add_argument("--kill-at", type=int, default=None)
    parser.add_argument("--resume", action="store_true")
    opts = parser.parse_args()

    # Dropout > 0 in the student, so the result depends on the random state being restored on resume.
    config = tiny_bert_config(hidden=32)
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.1
    torch.manual_seed(0)
    student = BertForSequenceClassification(config)
    teacher = tiny_model(seed=1, hidden=48, num_layers=2)  # 48 != 32: hidden-size projections are trained
    args = DistillationConfig(
        output_dir=opts.output_dir,
        teacher_dtype="float32",  # compared with float32 runs; auto has its own tests
        max_steps=MAX_STEPS,
        save_steps=SAVE_STEPS,
        save_strategy="steps",
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        seed=123,
        alpha=0.8,
        alpha_schedule="linear",
        alpha_final=0.2,
        temperature=4.0,
        temperature_schedule="cosine",
        temperature_final=1.0,
        hidden_weight=1.0,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    callbacks = [KillAt(opts.kill_at)] if opts.kill_at is not None else []
    trainer = DistillationTrainer(
        model=student,
        args=args,
        teacher_model=teacher,
        train_dataset=tiny_classification_dataset(n=24, seed=3),
        callbacks=callbacks,
    )
    assert trainer.projections is not None, "the run must train hidden-size projections"
    trainer.train(resume_from_checkpoint=True if opts.resume else None)
    state = {k: v.detach().contiguous().cpu() for k, v in trainer.model.state_dict().items()}
    save_file(state, opts.final)


if __name__ == "__main__":
    main()
