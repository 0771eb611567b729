"""Consistent augmentation: a new view of each training batch, which the live teacher labels as the student sees it.

`DistillationConfig(augmentation="mask:0.1,replace:0.05,delete:0.05,swap:0.05")` gives each real, non-special
token, independently:

- `mask`: the probability of becoming the tokenizer's mask token;
- `replace`: of becoming a random non-special token of the vocabulary;
- `swap`: of trading places with the next real token;
- `delete`: of being removed (the row is packed to the left and padded at the end).

Padding and special tokens ([CLS], [SEP], ...) are never touched. The teacher sees exactly the view the student
sees, which is what makes the teacher's answers on new views worth learning ("a good teacher is patient and
consistent"); a cache of teacher outputs cannot know the view, so augmentation needs a live teacher. Token-level
heads keep their labels aligned only under `mask` and `replace`.

Each micro-batch's view comes from a generator seeded by (seed, optimizer step, micro-batch within the step,
process), so a resumed run draws the same views as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch

AUGMENTATIONS = ("mask", "replace", "swap", "delete")
ALIGNED = ("mask", "replace")  # keep every token at its position


def parse_augmentation(spec: str | dict[str, float] | None) -> dict[str, float]:
    """'mask:0.1,replace:0.05' (or a dict) -> {'mask': 0.1, 'replace': 0.05}, checked."""
    if not spec:
        return {}
    if isinstance(spec, str):
        items = {}
        for part in spec.split(","):
            name, _, value = part.partition(":")
            try:
                items[name.strip()] = float(value)
            except ValueError:
                raise ValueError(
                    f"augmentation {spec!r}: {part.strip()!r} is not NAME:PROBABILITY; write for example "
                    "'mask:0.1,replace:0.05'"
                ) from None
        spec = items
    unknown = sorted(set(spec) - set(AUGMENTATIONS))
    if unknown:
        raise ValueError(f"augmentation {unknown} does not exist: choose from {list(AUGMENTATIONS)}")
    for name, p in spec.items():
        if not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"augmentation {name}:{p} is not a probability in [0, 1]")
    return {name: float(spec[name]) for name in AUGMENTATIONS if float(spec.get(name, 0.0)) > 0}


class TokenAugmenter:
    """Applies the augmentation to a batch of `input_ids` / `attention_mask` (and `token_type_ids`)."""

    def __init__(
        self,
        probabilities: dict[str, float],
        vocab_size: int,
        special_ids: list[int],
        mask_token_id: int | None = None,
        pad_token_id: int = 0,
        seed: int = 0,
    ) -> None:
        if probabilities.get("mask") and mask_token_id is None:
            raise ValueError(
                "augmentation 'mask' needs the tokenizer's mask token: pass processing_class=<tokenizer with a "
                "mask_token>, or drop 'mask' from augmentation"
            )
        self.p = probabilities
        self.special = torch.tensor(sorted(set(special_ids)), dtype=torch.long)
        allowed = torch.ones(vocab_size, dtype=torch.bool)
        allowed[self.special[self.special < vocab_size]] = False
        self.replacements = allowed.nonzero().squeeze(-1)  # ids a 'replace' may draw
        self.mask_token_id, self.pad_token_id, self.seed = mask_token_id, pad_token_id, seed

    @classmethod
    def from_tokenizer(
        cls, probabilities: dict[str, float], tokenizer: Any, vocab_size: int, seed: int
    ) -> Any:
        if tokenizer is None or not hasattr(tokenizer, "all_special_ids"):
            raise ValueError(
                "augmentation needs the student's tokenizer (its special and mask tokens): pass "
                "processing_class=tokenizer"
            )
        return cls(
            probabilities,
            vocab_size,
            list(tokenizer.all_special_ids),
            tokenizer.mask_token_id,
            tokenizer.pad_token_id or 0,
            seed,
        )

    def generator(self, *parts: int) -> torch.Generator:
        digest = hashlib.sha256(repr((self.seed, *parts)).encode()).digest()
        return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))

    def __call__(self, batch: dict[str, Any], *seed_parts: int) -> dict[str, Any]:
        """A new view of `batch` (the batch itself is left as it was)."""
        ids = batch["input_ids"]
        g = self.generator(*seed_parts)
        device = ids.device
        out_ids = ids.detach().cpu().clone()  # (B, L)
        attention = batch.get("attention_mask")
        real = (
            attention.detach().cpu().bool()
            if attention is not None
            else torch.ones_like(out_ids, dtype=torch.bool)
        )
        editable = real & ~torch.isin(out_ids, self.special)  # (B, L)
        draw = {name: torch.rand(out_ids.shape, generator=g) < p for name, p in self.p.items()}
        if "mask" in draw:
            out_ids[editable & draw["mask"]] = self.mask_token_id
        if "replace" in draw:
            chosen = editable & draw["replace"] & ~draw.get("mask", torch.zeros_like(editable))
            picks = torch.randint(len(self.replacements), (int(chosen.sum()),), generator=g)
            out_ids[chosen] = self.replacements[picks]
        view = dict(batch)
        if "swap" in draw:
            out_ids = self._swap(out_ids, editable, draw["swap"])
        if "delete" in draw:
            keep = ~(editable & draw["delete"])
            view.update(self._delete(out_ids, keep, batch))
            return view
        view["input_ids"] = out_ids.to(device)
        return view

    @staticmethod
    def _swap(ids: torch.Tensor, editable: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
        """Each chosen editable token trades places with the next editable one; a token moves at most once."""
        out = ids.clone()
        for b in range(ids.shape[0]):
            positions = editable[b].nonzero().squeeze(-1).tolist()
            i = 0
            while i < len(positions) - 1:
                if chosen[b, positions[i]]:
                    p, q = positions[i], positions[i + 1]
                    out[b, p], out[b, q] = ids[b, q], ids[b, p]
                    i += 2
                else:
                    i += 1
        return out

    def _delete(
        self, ids: torch.Tensor, keep: torch.Tensor, batch: dict[str, Any]
    ) -> dict[str, torch.Tensor]:
        """Remove the deleted tokens, pack each row to the left and pad it at the end to the batch's length."""
        device = batch["input_ids"].device
        attention = batch.get("attention_mask")
        real = (
            attention.detach().cpu().bool()
            if attention is not None
            else torch.ones_like(ids, dtype=torch.bool)
        )
        keep = keep & real
        B, L = ids.shape
        order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)  # kept tokens first, in order
        out = {"input_ids": ids.gather(1, order).masked_fill(~keep.gather(1, order), self.pad_token_id)}
        if attention is not None:
            out["attention_mask"] = keep.gather(1, order).to(attention.dtype)
        if batch.get("token_type_ids") is not None:
            types = batch["token_type_ids"].detach().cpu()
            out["token_type_ids"] = types.gather(1, order).masked_fill(~keep.gather(1, order), 0)
        return {k: v.to(device) for k, v in out.items()}


class StepAugmenter:
    """Numbers the micro-batches of each optimizer step, so that every view's seed is known after a resume."""

    def __init__(self, augmenter: TokenAugmenter, process_index: int) -> None:
        self.augmenter, self.process_index = augmenter, process_index
        self.step, self.micro = -1, 0

    def __call__(self, batch: dict[str, Any], global_step: int) -> dict[str, Any]:
        self.micro = self.micro + 1 if global_step == self.step else 0
        self.step = global_step
        return self.augmenter(batch, global_step, self.micro, self.process_index)


def make_augmenter(trainer: Any) -> StepAugmenter | None:
    """The trainer's augmenter, or None; refuses set-ups where the teacher could not see the student's view."""
    from .validation import DistillationConfigError

    probabilities = parse_augmentation(trainer.args.augmentation)
    if not probabilities:
        return None
    head = trainer.distillation_objective.head
    why = None
    if trainer.uses_cache:
        why = (
            "the training data carries cached teacher outputs, and a cache cannot know the view: remove them"
        )
    elif trainer.cross_tokenizer:
        why = "the teacher reads its own tokenization, so it cannot see the student's token-level view"
    elif head.token_level and set(probabilities) - set(ALIGNED):
        why = f"a {head.name} head has one label per token, which only {list(ALIGNED)} keep in place"
    if why:
        raise DistillationConfigError(f"augmentation={trainer.args.augmentation!r} cannot be used: {why}")
    vocab_size = trainer.accelerator.unwrap_model(trainer.model).config.vocab_size
    try:
        augmenter = TokenAugmenter.from_tokenizer(
            probabilities, trainer.processing_class, vocab_size, trainer.args.seed
        )
    except ValueError as err:
        raise DistillationConfigError(str(err)) from None
    return StepAugmenter(augmenter, trainer.args.process_index)
