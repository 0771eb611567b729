"""Publishing a distilled student to the Hub: the student and its card, never the projections or the teacher.

Three ways in, one path out (`push_distilled_model`):
- `DistillationTrainer.push_to_hub()` saves the student, writes the distillation card and pushes;
- `hub_strategy` checkpoint pushes during training go through `push_checkpoint`, which leaves the training-only
  projections out of the uploaded checkpoint folder;
- `hf-kd push OUTPUT_DIR --repo-id NAME` publishes an output directory that was trained earlier.

What is uploaded is an allow-list (`files_to_upload`): regular files with the names `save_pretrained`, a tokenizer
and the card write (`PUBLISHED_FILES`), nothing else. A `.env`, `training_args.bin`, a projections file or a log
stays local whatever it is called, and a symbolic link in the folder stops the push with an error naming it (its
content would come from outside the folder). The repository id is checked with `huggingface_hub`'s own validator
before anything else. `--dry-run` writes nothing and touches no network: it lists what a real push would send.
The card is written only to regular files (`hf_kd.model_card.write_file_no_follow`), never through a link.
Before anything leaves the machine every weight file in the list is opened and refused if it holds projection or
teacher tensors. A failed request raises `HubPushError` naming the request and the status; the local directory
is complete (it is written before any network call), so pushing again later is the retry.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
from pathlib import Path
from typing import Any

from .checkpoints import MANIFEST_FILE
from .compression import INT8_META, INT8_WEIGHTS
from .layer_map import PROJECTIONS_ATTR, PROJECTIONS_FILE
from .model_card import (
    CARD_CONTEXT_FILE,
    CARD_FILE,
    PLOT_FILE,
    load_card_context,
    render_card_from_context,
)

logger = logging.getLogger(__name__)

# The allow-list of a push: the student as save_pretrained writes it (model, PEFT adapter, hf-kd int8), the tokenizer
# or processor saved beside it, and the card. Anything else in the folder stays local: training_args.bin, the
# projections, a teacher, logs, dotfiles such as .env.
MODEL_FILES = frozenset(
    {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "model.safetensors.index.json",
        "pytorch_model.bin",
        "pytorch_model.bin.index.json",
        "adapter_config.json",
        "adapter_model.safetensors",
        "adapter_model.bin",
        INT8_META,
        INT8_WEIGHTS,
    }
)
TOKENIZER_FILES = frozenset(
    {
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "added_tokens.json",
        "vocab.txt",
        "vocab.json",
        "merges.txt",
        "spiece.model",
        "sentencepiece.bpe.model",
        "tokenizer.model",
        "chat_template.jinja",
        "chat_template.json",
        "preprocessor_config.json",
        "processor_config.json",
        "video_preprocessor_config.json",
    }
)
CARD_FILES = frozenset({CARD_FILE, PLOT_FILE, CARD_CONTEXT_FILE})
PUBLISHED_FILES = MODEL_FILES | TOKENIZER_FILES | CARD_FILES
# Weight shards as save_pretrained names them, and the ONNX exports of `hf-kd export` in their subfolder.
PUBLISHED_PATTERNS = (
    re.compile(r"(model|pytorch_model|adapter_model)-\d{5}-of-\d{5}\.(safetensors|bin)"),
    re.compile(r"onnx/model(_int8)?\.onnx"),
)
# A `hub_strategy` checkpoint push adds what resuming from it needs (the projections stay local).
CHECKPOINT_STATE_FILES = frozenset(
    {"trainer_state.json", "optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state.pth", MANIFEST_FILE}
)
CHECKPOINT_PATTERNS = (re.compile(r"rng_state_\d+\.pth"),)
# Tensor name prefixes that mark a weight file as not (only) the student.
FORBIDDEN_KEY_MARKERS = (f"{PROJECTIONS_ATTR}.", "teacher.", "teacher_model.", "teachers.")


class HubPushError(RuntimeError):
    """Publishing to the Hub failed; the message names the request that failed and its status."""


class UnsafeUploadError(ValueError):
    """A file meant for upload holds projection or teacher weights, or is a symbolic link."""


def is_published(rel: str, checkpoint: bool = False) -> bool:
    """Whether the relative POSIX path `rel` is on the allow-list of a push (of a checkpoint folder)."""
    names = PUBLISHED_FILES | CHECKPOINT_STATE_FILES if checkpoint else PUBLISHED_FILES
    patterns = PUBLISHED_PATTERNS + CHECKPOINT_PATTERNS if checkpoint else PUBLISHED_PATTERNS
    return rel in names or any(p.fullmatch(rel) for p in patterns)


def files_to_upload(
    output_dir: str | os.PathLike, checkpoint: bool = False, refuse_links: bool = True
) -> list[str]:
    """Paths (relative, POSIX, sorted) of the files a push of `output_dir` sends: the regular files whose names are
    on the allow-list (`PUBLISHED_FILES`, plus `CHECKPOINT_STATE_FILES` for a checkpoint folder).

    Raises `UnsafeUploadError` naming every symbolic link in the folder (and in its `onnx/` subfolder): a link
    can point anywhere, so its content is not the folder's to publish; replace it with a copy of the file. With
    `refuse_links=False` (pushes during training, which must not stop the run) links are logged and left out.
    """
    root = Path(output_dir)
    if not root.is_dir():
        raise FileNotFoundError(
            f"output directory {str(root)!r} does not exist: train and save the student first"
        )
    files, links = [], []
    for folder in (root, root / "onnx"):
        if folder is not root and (folder.is_symlink() or not folder.is_dir()):
            if folder.is_symlink():
                links.append(folder.relative_to(root).as_posix())
            continue
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            rel = Path(entry.path).relative_to(root).as_posix()
            if entry.is_symlink():
                links.append(rel)
            elif (
                entry.is_file(follow_symlinks=False)
                and not entry.name.startswith(".")
                and is_published(rel, checkpoint)
            ):
                files.append(rel)
    if links:
        consequence = "so nothing is published" if refuse_links else "so links are left out of this push"
        message = (
            f"{root} holds symbolic links: {', '.join(links)}. A link's content can come from outside the folder, "
            f"{consequence}: replace each link with a copy of the file it points to, or remove it"
        )
        if refuse_links:
            raise UnsafeUploadError(message)
        logger.error("%s.", message)
    return sorted(files)


def validate_repo_id(repo_id: str) -> str:
    """`repo_id` if `huggingface_hub` accepts it ('name' or 'namespace/name'), else a ValueError naming it."""
    from huggingface_hub.utils import HFValidationError
    from huggingface_hub.utils import validate_repo_id as hub_validate

    try:
        hub_validate(repo_id)
    except HFValidationError as err:
        raise ValueError(
            f"repo id {repo_id!r} is not a Hub repository id ({err}): use 'name' or 'namespace/name' with letters, "
            "digits, '-', '_' and '.', for example 'my-user/my-student'"
        ) from None
    return repo_id


def check_publishable(output_dir: str | os.PathLike, files: list[str]) -> None:
    """Refuse projection and teacher weights: by file name, and by the tensor names inside each weight file."""
    for rel in files:
        name = os.path.basename(rel)
        if name == PROJECTIONS_FILE or PROJECTIONS_ATTR in rel:
            raise UnsafeUploadError(
                f"{rel} holds the training-only hidden-size projections: they are not published"
            )
        keys: list[str] = []
        path = os.path.join(output_dir, rel)
        if rel.endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(path, framework="pt") as f:
                keys = list(f.keys())
        elif re.fullmatch(r"(pytorch_model|adapter_model|model)(-\d+-of-\d+)?\.(bin|pt|pth)", name):
            # Pickled weights; optimizer, scheduler and RNG states hold no named tensors to check.
            import torch

            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            keys = list(state) if isinstance(state, dict) else []
        bad = [k for k in keys if any(k.startswith(m) or f".{m}" in k for m in FORBIDDEN_KEY_MARKERS)]
        if bad:
            raise UnsafeUploadError(
                f"{rel} holds {len(bad)} tensors that are not the student's (e.g. {bad[0]!r}): save the student "
                "alone (trainer.save_model() strips the projections) before publishing"
            )


def _describe_failure(err: BaseException) -> str:
    """'POST <url> answered 500 Internal Server Error: <server message>' or the connection failure."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        response = getattr(err, "response", None)
        if response is not None and getattr(response, "status_code", None) is not None:
            request = response.request
            detail = getattr(err, "server_message", None) or ""
            text = f"{request.method} {request.url} answered {response.status_code} {response.reason_phrase}"
            return text + (f": {detail}" if detail else "")
        request = getattr(err, "_request", None) or getattr(err, "request", None)
        if request is not None and hasattr(request, "url"):
            return f"{request.method} {request.url} failed: {type(err).__name__}: {err}"
        err = err.__cause__ or err.__context__
    return ""


def _push_error(
    err: BaseException, what: str, output_dir: str, repo_id: str | None, n_files: int
) -> HubPushError:
    failure = (_describe_failure(err) or f"{type(err).__name__}: {err}").strip().rstrip(".")
    return HubPushError(
        f"{what} failed: {failure}. The local output directory {output_dir} is complete ({n_files} files ready "
        f"to publish); push again once the Hub is reachable: `hf-kd push {output_dir} --repo-id "
        f"{repo_id or '<name>'}` or trainer.push_to_hub()"
    )


def _api() -> Any:
    # Transformers' shared client: the Hub sees the same library tag as Trainer's own pushes.
    from transformers.utils.hub import hf_api

    return hf_api()


def prepare_card(output_dir: str, repo_id: str | None, dry_run: bool = False) -> bool:
    """Render the card again from `hf_kd_card.json` (so its usage snippet names `repo_id`); True if a card is
    present afterwards. With `dry_run`, nothing is written: True if a card would be."""
    context = load_card_context(output_dir)
    if context is not None and not dry_run:
        render_card_from_context(context, output_dir, repo_id=repo_id)
    return context is not None or os.path.isfile(os.path.join(output_dir, CARD_FILE))


def push_distilled_model(
    output_dir: str | os.PathLike,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str = "Upload distilled student (hf-kd)",
    dry_run: bool = False,
    create_repo: bool = True,
    refresh_card: bool = True,
    blocking: bool = True,
) -> Any:
    """Publish the student saved in `output_dir` to `repo_id`, with its distillation card and loss plot.

    Returns the `CommitInfo` (a `Future` when `blocking=False`), or with `dry_run=True` the list of files that
    would be uploaded (nothing is written and nothing touches the network). Only the allow-list of
    `files_to_upload` is uploaded; weight files holding projection or teacher tensors stop the push.
    """
    output_dir = str(output_dir)
    validate_repo_id(repo_id)
    files_to_upload(output_dir)  # symbolic links stop the push before the card is written
    if refresh_card:
        has_card = prepare_card(output_dir, repo_id, dry_run=dry_run)
    else:
        has_card = os.path.isfile(os.path.join(output_dir, CARD_FILE))
    if not has_card:
        logger.warning(
            "%s has no %s and no hf_kd_card.json: the student is published without a distillation card. Write "
            "one with trainer.create_model_card() before pushing.",
            output_dir,
            CARD_FILE,
        )
    files = files_to_upload(output_dir)
    if dry_run and refresh_card and has_card:
        # What the render would add (README.md, and the plot when the context holds curves).
        context = load_card_context(output_dir) or {}
        files = sorted(set(files) | {CARD_FILE} | ({PLOT_FILE} if context.get("curves") else set()))
    if not files:
        raise FileNotFoundError(f"nothing to publish in {output_dir}: save the student there first")
    check_publishable(output_dir, [f for f in files if os.path.isfile(os.path.join(output_dir, f))])
    if dry_run:
        return files

    from huggingface_hub import CommitOperationAdd

    api = _api()
    what = f"pushing {output_dir} to {repo_id}"
    try:
        if create_repo:
            repo_id = api.create_repo(repo_id, token=token, private=private, exist_ok=True).repo_id
        if revision not in (None, "main"):
            # A commit to a branch that does not exist yet is refused; start it from main.
            api.create_branch(repo_id, branch=revision, token=token, exist_ok=True)
        operations = [
            CommitOperationAdd(path_in_repo=f, path_or_fileobj=os.path.join(output_dir, f)) for f in files
        ]
        return api.create_commit(
            repo_id=repo_id,
            operations=operations,
            commit_message=commit_message,
            token=token,
            revision=revision,
            run_as_future=not blocking,
        )
    except Exception as err:  # every client error ends here: name the request, keep the local copy
        raise _push_error(err, what, output_dir, repo_id, len(files)) from err


# ---- Trainer integration --------------------------------------------------------------------------------


def push_trainer_to_hub(
    trainer: Any,
    commit_message: str | None = "End of training",
    blocking: bool = True,
    token: str | None = None,
    revision: str | None = None,
    private: bool | None = None,
    **card_kwargs: Any,
) -> Any:
    """`DistillationTrainer.push_to_hub`: Trainer's sequence (repo, save, card, upload) with the distillation
    card and the student-only upload of `push_distilled_model`."""
    args = trainer.args
    if args.hub_model_id is not None:
        validate_repo_id(args.hub_model_id)
    trainer.callback_handler.on_push_begin(args, trainer.state, trainer.control)
    token = token if token is not None else args.hub_token
    if card_kwargs.get("model_name") is None and args.should_save:
        card_kwargs["model_name"] = (args.hub_model_id or Path(args.output_dir).name).split("/")[-1]
    if getattr(trainer, "hub_model_id", None) is None:
        try:
            trainer.init_hf_repo(token=token, private=private)
        except Exception as err:
            raise _push_error(
                err, f"creating the repository for {args.output_dir}", args.output_dir, args.hub_model_id, 0
            ) from err
    trainer.save_model(_internal_call=True)
    if not trainer.is_world_process_zero():
        return None
    model_tags = getattr(trainer.model, "model_tags", None)
    if model_tags:
        tags = card_kwargs.get("tags") or []
        tags = [tags] if isinstance(tags, str) else list(tags)
        card_kwargs["tags"] = tags + [t for t in model_tags if t not in tags]
    trainer.create_model_card(repo_id=trainer.hub_model_id, **card_kwargs)
    trainer._finish_current_push()
    return push_distilled_model(
        args.output_dir,
        trainer.hub_model_id,
        token=token,
        revision=revision or args.hub_revision,
        commit_message=commit_message or "End of training",
        create_repo=False,
        refresh_card=False,
        blocking=blocking,
    )


def push_checkpoint(trainer: Any, checkpoint_folder: str, trainer_push: Any) -> None:
    """`hub_strategy` pushes during training. Trainer pushes the student files of the output directory itself
    (`trainer_push`), held to the allow-list of `files_to_upload`; for the `checkpoint` and `all_checkpoints`
    strategies the checkpoint folder is pushed here, without the projections file (a run resumed from it
    restarts the projections from their initial values)."""
    from transformers.trainer_utils import HubStrategy

    args = trainer.args
    strategy = args.hub_strategy
    if strategy not in (HubStrategy.CHECKPOINT, HubStrategy.ALL_CHECKPOINTS):
        _allow_listed_trainer_push(trainer_push, checkpoint_folder)
        return
    busy = trainer.push_in_progress is not None and not trainer.push_in_progress.is_done()
    if not trainer.is_world_process_zero() or (busy and not args.hub_always_push):
        return
    args.hub_strategy = HubStrategy.EVERY_SAVE  # Trainer pushes the output directory alone
    try:
        _allow_listed_trainer_push(trainer_push, checkpoint_folder)
    finally:
        args.hub_strategy = strategy
    path_in_repo = "last-checkpoint" if strategy == HubStrategy.CHECKPOINT else Path(checkpoint_folder).name
    files = files_to_upload(checkpoint_folder, checkpoint=True, refuse_links=False)
    check_publishable(checkpoint_folder, files)
    step = f"step {trainer.state.global_step}"
    job = _api().upload_folder(
        repo_id=trainer.hub_model_id,
        folder_path=checkpoint_folder,
        path_in_repo=path_in_repo,
        commit_message=f"Training in progress, {step}, checkpoint",
        token=args.hub_token,
        run_as_future=True,
        revision=args.hub_revision,
        allow_patterns=files,
    )
    trainer.push_in_progress.jobs.append(job)


class _AllowListedApi:
    """Transformers' Hub client with `upload_folder` held to the allow-list of `files_to_upload`."""

    def __init__(self, api: Any) -> None:
        self._api = api

    def upload_folder(self, *, folder_path: str, **kwargs: Any) -> Any:
        kwargs.pop("ignore_patterns", None)
        kwargs.pop("allow_patterns", None)
        files = files_to_upload(folder_path, refuse_links=False)
        check_publishable(folder_path, files)
        return self._api.upload_folder(folder_path=folder_path, allow_patterns=files, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._api, name)


def _allow_listed_trainer_push(trainer_push: Any, checkpoint_folder: str) -> None:
    """Trainer's own push of the output directory (its deny-list would send a .env or a linked file), with the
    upload restricted to the allow-list."""
    import transformers.trainer as trainer_module

    original = trainer_module.hf_api
    trainer_module.hf_api = lambda: _AllowListedApi(original())
    try:
        trainer_push(checkpoint_folder)
    finally:
        trainer_module.hf_api = original


# ---- command line: hf-kd push -----------------------------------------------------------------------------


def add_push_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of `hf-kd push`."""
    parser.add_argument("output_dir", help="Directory with the saved student (from trainer.save_model()).")
    parser.add_argument(
        "--repo-id", "--repo_id", required=True, help="Hub repository to publish to, e.g. user/my-student."
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="List the files that would be uploaded; writes nothing and uses no network.",
    )
    parser.add_argument(
        "--private",
        action="store_true",
        default=None,
        help="Create the repository as private (no effect if it exists).",
    )
    parser.add_argument("--revision", default=None, help="Branch to commit to (default: main).")
    parser.add_argument(
        "--token", default=None, help="Hub token with write access (default: the saved login)."
    )
    parser.add_argument(
        "--commit-message", default="Upload distilled student (hf-kd)", help="Commit message."
    )
    return parser


def run_push_command(args: argparse.Namespace) -> int:
    """Run `hf-kd push`; returns the exit status (0 on success, 1 when the push failed)."""
    try:
        result = push_distilled_model(
            args.output_dir,
            args.repo_id,
            token=args.token,
            private=args.private,
            revision=args.revision,
            commit_message=args.commit_message,
            dry_run=args.dry_run,
        )
    except (HubPushError, ValueError, FileNotFoundError) as err:  # ValueError: unsafe files, a bad repo id
        print(f"hf-kd push: {err}")
        return 1
    if args.dry_run:
        print(f"Dry run: would upload {len(result)} files from {args.output_dir} to {args.repo_id}:")
        for name in result:
            print(f"  {name}")
        return 0
    print(f"Published {args.output_dir} to {args.repo_id}: {getattr(result, 'commit_url', result)}")
    return 0
