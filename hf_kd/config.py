"""`DistillationConfig`: the training arguments of a distillation run.

One dataclass, a subclass of `transformers.TrainingArguments`, so that `HfArgumentParser`, YAML and JSON
configs, `--help` and the Trainer itself all see the same fields. Every field carries a help string.

The loss convention (several libraries invert `alpha`; we do not):

    loss = alpha * T^2 * KL(p_teacher || p_student) + (1 - alpha) * CE(student, labels)
           + hidden_weight * loss_hidden + attention_weight * loss_attention + embedding_weight * loss_embedding

with p = softmax(logits / T). `alpha = 1` is pure distillation, `alpha = 0` is plain fine-tuning.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field, fields
from typing import Any

from transformers import TrainingArguments

HIDDEN_LOSSES = ("mse", "cosine")
LAYER_MAP_STRATEGIES = ("uniform", "last")
SCHEDULES = ("constant", "linear", "cosine")
KD_POSITIONS = ("labelled", "all")
TEACHER_DTYPES = ("auto", "float32", "bfloat16", "float16")
NONFINITE_POLICIES = ("raise", "skip")
WEIGHT_FIELDS = ("hidden_weight", "attention_weight", "embedding_weight", "pooled_weight")
POOLINGS = ("cls", "mean")
# Temperatures that teach something. Below 0.05, softmax(logits / T) is one-hot in float32 for any logit gap above
# about 17 * T (under 1 logit), so the KD term only compares the two argmaxes: its gradient is exactly 0 where they
# agree and at most T where they differ, and the teacher's ranking of the other classes is lost. Above 100 the
# softened distributions are uniform to within logit / T, and T^2 * KL has reached its high-temperature limit (half
# the squared difference of the centred logits): a higher T changes nothing but the rounding.
TEMPERATURE_RANGE = (0.05, 100.0)


class _DuplicateLayerError(ValueError):
    """A layer map that names a student layer twice."""


def _int_pairs(pairs: list[tuple[Any, Any]], value: Any) -> dict[int, int]:
    """{student_layer: teacher_layer} from (key, value) pairs; a student layer named twice is an error."""
    mapping: dict[int, int] = {}
    for k, v in pairs:
        s, t = int(k), int(v)
        if s in mapping:
            raise _DuplicateLayerError(
                f"layer_map {value!r} names student layer {s} twice (-> {mapping[s]} and -> {t}): each student "
                "layer learns from one teacher layer; keep one entry per student layer"
            )
        mapping[s] = t
    return mapping


def parse_layer_map(value: Any) -> str | dict[int, int]:
    """Normalise a `layer_map` value from Python, YAML or the command line.

    Accepts "uniform", "last", a dict {student_layer: teacher_layer} (keys may be strings, as JSON and YAML
    give them), or a string holding such a mapping as JSON ('{"1": 3, "2": 6}') or as "1:3,2:6".
    """
    if isinstance(value, dict):
        try:
            return _int_pairs(list(value.items()), value)
        except _DuplicateLayerError:
            raise
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"layer_map {value!r} must map integer student layers to integer teacher layers, "
                "for example {1: 3, 2: 6} (0 is the embedding output)"
            ) from err
    if isinstance(value, str):
        text = value.strip()
        if text in LAYER_MAP_STRATEGIES:
            return text
        try:
            if text.startswith("{"):
                # object_pairs_hook sees every key: '{"1": 2, "1": 1}' is a duplicate, not {1: 1}.
                pairs = json.loads(text, object_pairs_hook=list)
                return _int_pairs(pairs, value) if isinstance(pairs, list) else parse_layer_map(pairs)
            if ":" in text:
                pairs = [p.split(":") for p in text.split(",") if p.strip()]
                return _int_pairs([(k.strip(), v.strip()) for k, v in pairs], value)
        except _DuplicateLayerError:
            raise
        except ValueError as err:  # bad JSON, or "1:2:3" (too many values to unpack): say what is expected
            raise ValueError(
                f"layer_map {value!r} is not understood ({err}): use 'uniform', 'last', or an explicit mapping "
                "of student layer to teacher layer such as {1: 3, 2: 6}, '1:3,2:6' or '{\"1\": 3, \"2\": 6}'"
            ) from None
    raise ValueError(
        f"layer_map {value!r} is not understood: use 'uniform', 'last', or an explicit mapping of student layer "
        "to teacher layer such as {1: 3, 2: 6} or '1:3,2:6' (layers count from 1; 0 is the embedding output)"
    )


@dataclass(repr=False)  # the redacting __repr__ below, not the dataclass one that prints hub_token
class DistillationConfig(TrainingArguments):
    r"""
    Training arguments for [`DistillationTrainer`]: every `TrainingArguments` field, plus these.

    The training loss is
    `alpha * temperature**2 * KL(p_teacher || p_student) + (1 - alpha) * CE(student, labels)`
    plus the weighted intermediate-layer terms; `p = softmax(logits / temperature)`.

    Args:
        temperature (`float`, defaults to `2.0`):
            Softmax temperature T applied to both teacher and student logits in the soft-target term. Higher T
            exposes more of the teacher's ranking of wrong classes. The soft term is multiplied by T^2 so its
            gradient keeps the same scale as T changes. Must lie in [0.05, 100]: below, the softened teacher is
            one-hot in float32 and the term's gradient is 0 wherever the argmaxes agree; above, the term has
            reached its high-temperature limit (logit matching) and a higher T only adds rounding.
        alpha (`float`, defaults to `0.5`):
            Weight of the soft-target (KD) term, in [0, 1]; the hard cross-entropy gets `1 - alpha`.
            `alpha=1` ignores labels, `alpha=0` is plain fine-tuning.
        alpha_schedule (`str`, defaults to `"constant"`):
            How alpha moves from `alpha` to `alpha_final` over training: `constant`, `linear` or `cosine`.
        alpha_final (`float`, *optional*):
            Value of alpha at the last step when `alpha_schedule` is not constant.
        temperature_schedule (`str`, defaults to `"constant"`):
            How the temperature moves from `temperature` to `temperature_final`: `constant`, `linear`, `cosine`.
        temperature_final (`float`, *optional*):
            Temperature at the last step when `temperature_schedule` is not constant.
        kd_positions (`str`, defaults to `"labelled"`):
            For token-level heads (token classification, masked LM): which positions enter the KD term.
            `labelled`: positions whose label is not -100 (masked tokens for MLM, first sub-tokens for NER);
            `all`: every non-padding position.
        teacher_dtype (`str`, defaults to `"auto"`):
            dtype of the teacher's weights for its forward pass. `auto` decides by measurement on the first
            training batch: a float32 teacher runs in bfloat16 when the device computes bfloat16 natively (CUDA
            with bf16; a CPU with AMX or AVX512-BF16) and a bfloat16 copy agrees with it (argmax agreement
            >= 99.5%, mean KL(p_float32 || p_bfloat16) <= 1e-3 nats), else stays float32; the reason and the
            figures go to the log, `distillation_summary()` and the model card. A teacher loaded in another
            dtype is kept as it is. `float32`, `bfloat16`, `float16` force that dtype. The KD math always runs
            in float32.
        hidden_weight (`float`, defaults to `0.0`):
            Weight of the hidden-state matching term (0 turns it off).
        hidden_loss (`str`, defaults to `"mse"`):
            Distance for hidden states and embeddings: `mse` or `cosine` (1 - cosine similarity).
        attention_weight (`float`, defaults to `0.0`):
            Weight of the attention-map matching term (MSE between attention probabilities, TinyBERT style).
        embedding_weight (`float`, defaults to `0.0`):
            Weight of the embedding-output matching term (hidden_states[0]).
        pooled_weight (`float`, defaults to `0.0`):
            Weight of the pooled-representation term (`hidden_loss` between one vector per example from the last
            layer of each model, the student's through a learned projection). The one intermediate term that works
            between different tokenizers.
        pooling (`str`, defaults to `"cls"`):
            The pooled vector: the first token's (`cls`) or the mean over real tokens (`mean`).
        layer_map (`str` or `dict`, defaults to `"uniform"`):
            Which teacher layer each student layer learns from. Layers count from 1 (hidden_states[m] is the
            output of layer m; 0 is the embedding output). `uniform`: student layer m -> teacher layer
            round(m * L_t / L_s) (12 -> 4 gives 3, 6, 9, 12); `last`: the last L_s teacher layers; or an
            explicit mapping such as `{1: 3, 2: 6}` (YAML dict, JSON string, or `1:3,2:6`).
        projection_init (`str`, defaults to `"xavier"`):
            Initialisation of the learned projections that map student hidden states to the teacher's size
            when they differ: `xavier` or `identity` (identity on the overlapping block).
        nonfinite_policy (`str`, defaults to `"raise"`):
            What to do when teacher or student logits hold NaN or inf: `raise` stops with an error naming
            the step and micro-batch; `skip` skips that whole optimizer step (no update on any process) and
            counts it in the logs.
        nonfinite_max_consecutive_skips (`int`, defaults to `3`):
            With `skip`, the run stops with the `raise` error after this many skipped steps in a row.
        nonfinite_max_skip_fraction (`float`, defaults to `0.1`):
            With `skip`, the run stops once more than this fraction of the planned steps (and more than one
            step) were skipped.
        augmentation (`str`, defaults to `""`):
            A new view of each training batch, which the live teacher labels as the student sees it: per-token
            probabilities of `mask`, `replace` (a random token), `swap` (with the next token) and `delete`, such
            as `mask:0.1,replace:0.05`. Seeded, so a resumed run draws the same views. Needs a live teacher.
        unlabeled_ratio (`float`, defaults to `4.0`):
            With `DistillationTrainer(unlabeled_dataset=...)`, how many unlabelled examples join each labelled one
            in a batch (on average, when fractional). Unlabelled examples take the KD term only. 4 is the measured
            recipe: with 100 labelled BBC News articles and 1,458 unlabelled ones it beat fine-tuning alone by
            1.7 points over 5 seeds (4 standard errors) where KD on the labelled set alone was inside its noise.
        teacher_cache_check (`bool`, defaults to `True`):
            When both a live teacher and cached teacher logits are given, check the cache's teacher
            fingerprint against the live teacher before training.
    """

    temperature: float = field(
        default=2.0,
        metadata={
            "help": "Softmax temperature T for the soft-target term, in [0.05, 100]; the term is scaled by T^2 "
            "so gradients keep their scale as T changes."
        },
    )
    alpha: float = field(
        default=0.5,
        metadata={
            "help": "Weight of the soft-target KD term in [0, 1]; the hard cross-entropy gets 1 - alpha. "
            "alpha=1 is pure distillation, alpha=0 plain fine-tuning."
        },
    )
    alpha_schedule: str = field(
        default="constant",
        metadata={"help": "How alpha moves to alpha_final over training.", "choices": list(SCHEDULES)},
    )
    alpha_final: float | None = field(
        default=None, metadata={"help": "alpha at the last step when alpha_schedule is not constant."}
    )
    temperature_schedule: str = field(
        default="constant",
        metadata={"help": "How the temperature moves to temperature_final.", "choices": list(SCHEDULES)},
    )
    temperature_final: float | None = field(
        default=None,
        metadata={"help": "Temperature at the last step when temperature_schedule is not constant."},
    )
    kd_positions: str = field(
        default="labelled",
        metadata={
            "help": "Token-level heads: 'labelled' puts positions with label != -100 in the KD term (masked "
            "tokens for MLM); 'all' uses every non-padding position.",
            "choices": list(KD_POSITIONS),
        },
    )
    teacher_dtype: str = field(
        default="auto",
        metadata={
            "help": "dtype of the teacher's weights for its forward pass. 'auto': bfloat16 where the device runs "
            "it natively and a first-batch check agrees with float32 (argmax agreement >= 0.995, KL <= 1e-3), else "
            "float32; "
            "a teacher loaded in another dtype is kept. The KD math always runs in float32.",
            "choices": list(TEACHER_DTYPES),
        },
    )
    hidden_weight: float = field(
        default=0.0, metadata={"help": "Weight of the hidden-state matching term (0 = off)."}
    )
    hidden_loss: str = field(
        default="mse",
        metadata={"help": "Distance for hidden states and embeddings.", "choices": list(HIDDEN_LOSSES)},
    )
    attention_weight: float = field(
        default=0.0, metadata={"help": "Weight of the attention-map matching term (0 = off)."}
    )
    embedding_weight: float = field(
        default=0.0, metadata={"help": "Weight of the embedding-output matching term (0 = off)."}
    )
    pooled_weight: float = field(
        default=0.0,
        metadata={
            "help": "Weight of the pooled-representation term: one vector per example from each model's last "
            "layer, the student's through a learned projection (0 = off). Works across tokenizers."
        },
    )
    pooling: str = field(
        default="cls",
        metadata={
            "help": "Pooled representation: the first token's ('cls') or the mean over real tokens.",
            "choices": list(POOLINGS),
        },
    )
    # Typed `str` so HfArgumentParser gives a plain flag; a dict (Python, YAML) is accepted too and
    # normalised in validate_distillation().
    layer_map: str = field(
        default="uniform",
        metadata={
            "help": "Student-to-teacher layer mapping: 'uniform', 'last', or explicit like '1:3,2:6' or "
            '\'{"1": 3, "2": 6}\' (layers count from 1; 0 is the embedding output).'
        },
    )
    projection_init: str = field(
        default="xavier",
        metadata={"help": "Initialisation of hidden-size projections.", "choices": ["xavier", "identity"]},
    )
    nonfinite_policy: str = field(
        default="raise",
        metadata={
            "help": "On NaN/inf logits: 'raise' stops with the step and micro-batch; 'skip' skips that whole "
            "optimizer step (on every process) and counts it in the logs.",
            "choices": list(NONFINITE_POLICIES),
        },
    )
    nonfinite_max_consecutive_skips: int = field(
        default=3,
        metadata={
            "help": "nonfinite_policy='skip' stops the run (as 'raise' would) after this many skipped optimizer "
            "steps in a row: the run has diverged."
        },
    )
    nonfinite_max_skip_fraction: float = field(
        default=0.1,
        metadata={
            "help": "nonfinite_policy='skip' stops the run once more than this fraction of the planned optimizer "
            "steps (and more than one) were skipped."
        },
    )
    augmentation: str = field(
        default="",
        metadata={
            "help": "Consistent augmentation of each training batch, seen by student and live teacher alike: "
            "probabilities per token, e.g. 'mask:0.1,replace:0.05,swap:0.05,delete:0.05' (empty = off)."
        },
    )
    unlabeled_ratio: float = field(
        default=4.0,
        metadata={
            "help": "With an unlabeled (transfer) dataset: unlabelled examples per labelled example in each batch. "
            "They take the KD term only. 4 is the measured recipe."
        },
    )
    teacher_cache_check: bool = field(
        default=True,
        metadata={"help": "Check cached teacher logits against the live teacher's fingerprint."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.validate_distillation()

    def validate_distillation(self) -> None:
        """Raise a `ValueError` naming the offending value and the fix for out-of-range settings."""
        for name in ("temperature", "alpha", "alpha_final", "temperature_final", *WEIGHT_FIELDS):
            value = getattr(self, name)
            if value is None and name.endswith("_final"):
                continue
            try:
                if isinstance(value, bool):
                    raise TypeError
                # Numbers that arrive as strings (a YAML "5e-1", a JSON config written by hand) become floats.
                setattr(self, name, float(value))
            except (TypeError, ValueError):
                raise ValueError(f"{name}={value!r} must be a number") from None
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(
                f"alpha={self.alpha} is outside [0, 1]: alpha weighs the KD term and 1 - alpha the hard "
                "cross-entropy; use alpha=1 for pure distillation or alpha=0 for plain fine-tuning"
            )
        if not self.temperature > 0 or not math.isfinite(self.temperature):
            raise ValueError(
                f"temperature={self.temperature} must be a positive number; typical values are 1 to 20 "
                "(2 softens the teacher mildly)"
            )
        for name in ("alpha_schedule", "temperature_schedule"):
            if getattr(self, name) not in SCHEDULES:
                raise ValueError(f"{name}={getattr(self, name)!r} is not one of {list(SCHEDULES)}")
        if self.alpha_schedule != "constant":
            if self.alpha_final is None:
                raise ValueError(
                    f"alpha_schedule={self.alpha_schedule!r} needs alpha_final (the value at the last step)"
                )
            if not 0.0 <= self.alpha_final <= 1.0:
                raise ValueError(f"alpha_final={self.alpha_final} is outside [0, 1]")
        if self.temperature_schedule != "constant":
            final = self.temperature_final
            if final is None or not final > 0 or not math.isfinite(final):
                raise ValueError(
                    f"temperature_schedule={self.temperature_schedule!r} needs a positive, finite temperature_final, "
                    f"got {self.temperature_final}"
                )
        self._check_temperature_range("temperature", self.temperature)
        if self.temperature_schedule != "constant":
            self._check_temperature_range("temperature_final", self.temperature_final)
        if self.kd_positions not in KD_POSITIONS:
            raise ValueError(f"kd_positions={self.kd_positions!r} is not one of {list(KD_POSITIONS)}")
        if self.teacher_dtype not in TEACHER_DTYPES:
            raise ValueError(f"teacher_dtype={self.teacher_dtype!r} is not one of {list(TEACHER_DTYPES)}")
        if self.hidden_loss not in HIDDEN_LOSSES:
            raise ValueError(
                f"hidden_loss={self.hidden_loss!r} does not exist: choose one of {list(HIDDEN_LOSSES)}"
            )
        if self.nonfinite_policy not in NONFINITE_POLICIES:
            raise ValueError(
                f"nonfinite_policy={self.nonfinite_policy!r} is not one of {list(NONFINITE_POLICIES)}"
            )
        if int(self.nonfinite_max_consecutive_skips) < 1:
            raise ValueError(
                f"nonfinite_max_consecutive_skips={self.nonfinite_max_consecutive_skips} must be >= 1 (the number "
                "of skipped optimizer steps in a row after which the run stops)"
            )
        if not 0.0 <= float(self.nonfinite_max_skip_fraction) <= 1.0:
            raise ValueError(
                f"nonfinite_max_skip_fraction={self.nonfinite_max_skip_fraction} is outside [0, 1]"
            )
        if self.projection_init not in ("xavier", "identity"):
            raise ValueError(f"projection_init={self.projection_init!r} is not one of ['xavier', 'identity']")
        from .augment import parse_augmentation

        parse_augmentation(self.augmentation)
        if not float(self.unlabeled_ratio) > 0:
            raise ValueError(
                f"unlabeled_ratio={self.unlabeled_ratio} must be > 0 (unlabelled examples per labelled example)"
            )
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling={self.pooling!r} is not one of {list(POOLINGS)}")
        for name in WEIGHT_FIELDS:
            value = getattr(self, name)
            if value < 0 or not math.isfinite(value):
                raise ValueError(f"{name}={value} must be a finite number >= 0 (0 turns the term off)")
        self.layer_map = parse_layer_map(self.layer_map)

    @staticmethod
    def _check_temperature_range(name: str, value: float) -> None:
        low, high = TEMPERATURE_RANGE
        if value < low:
            raise ValueError(
                f"{name}={value:g} is below {low:g}: softmax(logits / T) is then one-hot in float32 for any logit "
                f"gap above about {17 * value:.2g}, so the KD term only compares the two argmaxes (its gradient is "
                "exactly 0 where they agree) and the student learns nothing of the teacher's ranking of the other "
                f"classes; use a temperature in [{low:g}, {high:g}] (1 to 4 is usual)"
            )
        if value > high:
            raise ValueError(
                f"{name}={value:g} is above {high:g}: the softened distributions are then uniform to within "
                "logit / T and T^2 * KL has reached its high-temperature limit (matching the centred logits); a "
                f"higher T changes nothing but float32 rounding. Use a temperature in [{low:g}, {high:g}]"
            )

    @property
    def uses_intermediate_layers(self) -> bool:
        return self.uses_token_layers or self.pooled_weight > 0

    @property
    def uses_token_layers(self) -> bool:
        """Terms that compare the two models position by position (so they must share a tokenization)."""
        return self.hidden_weight > 0 or self.attention_weight > 0 or self.embedding_weight > 0

    def __str__(self) -> str:
        # Every *_token field is shown as <FIELD_NAME>: configs are logged with %s and %r.
        shown = {
            f.name: f"<{f.name.upper()}>" if f.name.endswith("_token") else getattr(self, f.name, None)
            for f in fields(self)
        }
        body = "".join(f"{k}={v},\n" for k, v in sorted(shown.items()))
        return f"{type(self).__name__}(\n{body})"

    __repr__ = __str__

    def __deepcopy__(self, memo: dict[int, Any]) -> DistillationConfig:
        # A copy in memory keeps the tokens (a copied config must still push); __getstate__ below is for pickling,
        # which deepcopy would otherwise go through.
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        new.__dict__.update(copy.deepcopy(self.__dict__, memo))
        return new

    def __copy__(self) -> DistillationConfig:
        new = type(self).__new__(type(self))
        new.__dict__.update(self.__dict__)
        return new

    def __getstate__(self) -> dict[str, Any]:
        # Trainer pickles its arguments into every checkpoint and output dir (training_args.bin), and
        # hub_strategy pushes those files: never let a Hub token travel inside them.
        state = self.__dict__.copy()
        for key in state:
            if key.endswith("_token") and state[key] is not None:
                state[key] = None
        return state

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        if isinstance(d.get("layer_map"), dict):
            d["layer_map"] = {str(k): v for k, v in d["layer_map"].items()}
        return d
