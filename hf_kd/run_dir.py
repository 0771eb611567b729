"""The output directory of a run: refused when it holds another run, resumed when it holds this one.

A run records its settings in `hf_kd_run.json` once every check has passed. Started again with the same settings
(bookkeeping such as logging, saving or the schedule's length aside), it resumes from the last complete checkpoint
in its output directory, as transformers' run_glue.py does. Anything else in a non-empty output directory is refused
unless `--overwrite_output_dir`, which removes the earlier run's checkpoints and results (never other files).
"""

from __future__ import annotations

import os
from typing import Any

from .cli_args import Command, CommandError

# Fields that do not change what a run computes: a restart that differs only in these is the same run.
RUN_BOOKKEEPING = {
    "output_dir",
    "overwrite_output_dir",
    "resume_from_checkpoint",
    "logging_dir",
    "logging_steps",
    "logging_strategy",
    "logging_first_step",
    "report_to",
    "run_name",
    "disable_tqdm",
    "save_steps",
    "save_strategy",
    "save_total_limit",
    "eval_steps",
    "dataloader_num_workers",
    "push_to_hub",
    "hub_model_id",
    "hub_token",
    "hub_strategy",
    "hub_private_repo",
    "num_train_epochs",
    "max_steps",
    "license",
    "local_rank",  # differs between the processes of one launch
}
RUN_FILE = "hf_kd_run.json"


def run_fingerprint(command: Command) -> dict[str, Any]:
    """The settings that define a run (not where it logs or how often it saves), JSON-ready."""
    import dataclasses
    import json

    values: dict[str, Any] = {"command": command.name}
    for part in (command.model, command.data):
        values.update(dataclasses.asdict(part))
    values.update(command.training.to_dict())
    values = {k: v for k, v in values.items() if k not in RUN_BOOKKEEPING and not k.startswith("_")}
    return json.loads(json.dumps(values, default=str, sort_keys=True))


def _run_files(output_dir: str) -> list[str]:
    return sorted(os.listdir(output_dir)) if os.path.isdir(output_dir) else []


def prepare_output_dir(command: Command) -> str | bool | None:
    """Check `output_dir` before anything runs, and say what `train()` resumes from.

    An empty or missing directory starts a new run. A directory holding this same run (its `hf_kd_run.json`
    records the same settings) resumes from its last complete checkpoint, as run_glue does. Anything else is
    refused unless `--overwrite_output_dir`, which removes the earlier run's checkpoints and results first.
    """
    import json
    import shutil

    from .checkpoints import checkpoints_newest_first, last_complete_checkpoint

    training = command.training
    output_dir = training.output_dir
    resume = training.resume_from_checkpoint
    files = _run_files(output_dir)
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise CommandError(f"output_dir {output_dir!r} is a file, not a folder: choose another --output_dir")
    if not files:
        if resume is True:
            raise CommandError(
                f"--resume_from_checkpoint true: {output_dir!r} holds no checkpoint yet; start without it"
            )
        return resume
    if command.run.overwrite_output_dir:
        if resume:
            raise CommandError(
                "--overwrite_output_dir and --resume_from_checkpoint contradict each other: drop one of them"
            )
        if getattr(training, "process_index", 0) == 0:  # one process clears, as one process saves
            for path in checkpoints_newest_first(output_dir):
                shutil.rmtree(path)
            for name in STALE_RESULTS:
                path = os.path.join(output_dir, name)
                if os.path.isfile(path) and not os.path.islink(path):
                    os.remove(path)
        return None

    fingerprint = run_fingerprint(command)
    recorded = None
    marker = os.path.join(output_dir, RUN_FILE)
    if os.path.isfile(marker):
        try:
            with open(marker) as f:
                recorded = json.load(f).get("settings")
        except (OSError, ValueError, AttributeError):
            recorded = None
    if recorded != fingerprint:
        if recorded is None:
            what = f"holds {files[:6]}{' ...' if len(files) > 6 else ''}, which no hf-kd run recorded"
        else:
            changed = sorted(
                k for k in set(recorded) | set(fingerprint) if recorded.get(k) != fingerprint.get(k)
            )
            shown = ", ".join(f"{k}: {recorded.get(k)!r} -> {fingerprint.get(k)!r}" for k in changed[:5])
            what = f"holds another run ({shown}{' ...' if len(changed) > 5 else ''})"
        raise CommandError(
            f"output_dir {output_dir!r} is not empty: it {what}. Pass --overwrite_output_dir to replace that run, "
            "or choose another --output_dir"
        )
    if isinstance(resume, str):
        return resume  # an explicit checkpoint path: the trainer checks it
    found = last_complete_checkpoint(output_dir)
    if found is not None:
        print(
            f"hf-kd {command.name}: resuming the run in {output_dir} from {found} (its last complete checkpoint)"
        )
        return found
    if resume is True:
        raise CommandError(
            f"--resume_from_checkpoint true: {output_dir!r} holds no complete checkpoint; start without it"
        )
    return None


# Files a run writes besides the model; --overwrite_output_dir removes them so runs never mix.
STALE_RESULTS = (
    RUN_FILE,
    "all_results.json",
    "train_results.json",
    "eval_results.json",
    "test_results.json",
    "trainer_state.json",
    "training_args.bin",
    "hf_kd_card.json",
    "distillation_curves.png",
    "README.md",
)


def record_run(command: Command) -> None:
    """Write `hf_kd_run.json`: the settings that let a restart recognise this run."""
    import json

    if getattr(command.training, "process_index", 0) != 0:
        return
    os.makedirs(command.training.output_dir, exist_ok=True)
    with open(os.path.join(command.training.output_dir, RUN_FILE), "w") as f:
        json.dump({"format": 1, "settings": run_fingerprint(command)}, f, indent=1, sort_keys=True)
