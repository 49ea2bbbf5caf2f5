"""The frozen, validated Config that the command-line flags become (the flags themselves are defined,
by topic, in `flag_definitions`; `define_flags` and `HELP_TOPICS` are re-exported here).

Library code takes a Config, never absl's FLAGS.
"""

from __future__ import annotations

import dataclasses

from absl import flags

from cdt_tf import config_checks
from cdt_tf.catalog import AUTO_MODELS
from cdt_tf.errors import UserError

# Flags are defined in flag_definitions (by topic); these are their public names here.
from cdt_tf.flag_definitions import HELP_TOPICS, define_flags  # noqa: E402, F401


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything a run depends on. Build with `from_flags`, or directly and then `validate()`."""

    dataset: str
    model_dir: str
    data_dir: str | None = None
    bad_images: str = "error"
    imbalance: str = "none"
    imbalance_ratio: float = 1.0
    max_per_class: int = 0
    image_size: int = 0
    augmentation: str = "auto"
    randaugment_magnitude: float = 0.0
    randaugment_ops: int = 2
    cutout: int = 0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mix_prob: float = 1.0
    mix_until_epoch: int = 0
    mix_schedule: str = "step"
    mix_ramp_start: int = 0
    model: str = "auto"
    classifier: str = "auto"
    conv_padding: str = "symmetric"
    loss: str = "ce"
    gamma: float = 0.0
    gamma_schedule: str = "constant"
    gamma_epoch: int = 0
    focal_gamma: float = 1.0
    cb_loss: str = "softmax"
    cb_beta: float = 0.9999
    ldam_max_margin: float = 0.5
    ldam_scale: float = 30.0
    la_tau: float = 1.0
    prior_tau: float = 0.0
    drw_epoch: int = 0
    class_weight_reduction: str = "weights"
    sampler: str = "instance"
    holdout_per_class: int = 0
    val_per_class: int = 0
    tau_from: str | None = None
    second_stage: str = "none"
    smooth_head: float = 0.3
    smooth_tail: float = 0.0
    shift_lr_factor: float = 0.2
    shift_affine: bool = False
    wb_weight_decay: float = 0.1
    wb_threshold: float = 0.1
    strategy: str = "auto"
    precision: str = "auto"
    mixed_precision: bool = False
    profile_batch: str = ""
    epochs: int = 200
    batch_size: int = 128
    learning_rate: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 2e-4
    sam_rho: float = 0.0
    sam_classes: str = "all"
    sam_tail_threshold: int = 100
    max_norm: float = 0.0
    contrastive_weight: float = 0.0
    contrastive_temperature: float = 0.1
    contrastive_dim: int = 128
    lr_schedule: str = "step"
    warmup_epochs: int = 5
    decay_epochs: tuple[int, ...] = (160, 180)
    decay_multipliers: tuple[float, ...] = (0.01, 0.0001)
    steps_per_epoch: int = 0
    eval_per_class: int = 0
    seed: int = 0
    deterministic: bool = False
    eval_every: int = 10
    checkpoint_every: int = 10
    stats_every: int = 0

    # Fields that do not change what a run computes: a run may be resumed with others.
    RESUMABLE_FIELDS = (
        "model_dir",
        "eval_every",
        "checkpoint_every",
        "stats_every",
        "tau_from",
        # The second stage reads the finished network; it does not change the training.
        "second_stage",
        "smooth_head",
        "smooth_tail",
        "shift_lr_factor",
        "shift_affine",
        "wb_weight_decay",
        "wb_threshold",
        "strategy",
        "profile_batch",
        # The precision is resolved once, when the run starts, and recorded (resolved_precision): a
        # resumed run keeps it whatever these flags say now.
        "precision",
        "mixed_precision",
    )
    # Keys of config.json that record what a run resolved when it started (not flags).
    RECORDED_FIELDS = ("resolved_precision",)
    # What a field meant in a config.json written before the field existed, where that is not the
    # current default, as a function of that config.json: such runs are resumed (and compared) with
    # it. A run from before --precision ran in float32, or with the old --mixed_precision, which could
    # not be combined with another --precision than the default.
    LEGACY_VALUES = {
        "conv_padding": lambda stored: "same",
        "precision": lambda stored: "auto" if stored.get("mixed_precision") else "float32",
    }

    @classmethod
    def from_flags(cls, flag_values: flags.FlagValues) -> Config:
        names = [f.name for f in dataclasses.fields(cls)]
        values = {name: flag_values[name].value for name in names}
        try:
            values["decay_epochs"] = tuple(int(v) for v in values["decay_epochs"])
            values["decay_multipliers"] = tuple(float(v) for v in values["decay_multipliers"])
        except ValueError as error:
            raise UserError(
                f"--decay_epochs takes integers and --decay_multipliers numbers: {error}"
            ) from error
        return cls(**values).validate()

    @property
    def resolved_model(self) -> str:
        """--model with auto resolved for the dataset."""
        if self.model != "auto":
            return self.model
        return AUTO_MODELS.get(self.dataset, "resnet32")

    @property
    def profile_steps(self) -> tuple[int, int] | None:
        """--profile_batch as (first, last) step, or None when off. Validate first."""
        if not self.profile_batch:
            return None
        first, last = (int(v) for v in self.profile_batch.split(","))
        return first, last

    @property
    def resolved_classifier(self) -> str:
        """--classifier with auto resolved for the loss."""
        if self.classifier != "auto":
            return self.classifier
        return "cosine" if self.loss == "ldam" else "linear"

    @property
    def resolved_augmentation(self) -> str:
        """--augmentation with auto resolved for the dataset."""
        if self.augmentation != "auto":
            return self.augmentation
        return "none" if self.dataset == "digits" else "crop_flip"

    @property
    def training_views(self) -> int:
        """Augmented views of each training image a batch holds: 2 with the contrastive branch."""
        return 2 if self.contrastive_weight > 0 else 1

    @property
    def mixes_batches(self) -> bool:
        """Whether training batches are mixed (MixUp/CutMix): their labels are then float [B, C] vectors."""
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0

    def validate(self) -> Config:
        """Raises UserError naming the first bad value and what to do; returns self.

        The checks live in `config_checks`, by topic (the sections of define_flags). Order:
        --model_dir, every flag's vocabulary, finite numbers, each flag's own range, then the checks
        that tie flags together, so that the message names the flag the user got wrong (--epochs=0 is
        about --epochs, not about the --drw_epoch range it also breaks).
        """
        required = (
            bool(self.model_dir),
            "--model_dir is required: the run directory for config, checkpoints and results",
        )
        for ok, message in (required, *config_checks.checks(self)):
            if not ok:
                raise UserError(message)
        return self

    def to_dict(self) -> dict:
        values = dataclasses.asdict(self)
        values["decay_epochs"] = list(self.decay_epochs)
        values["decay_multipliers"] = list(self.decay_multipliers)
        return values

    def differences(self, other: dict) -> list[str]:
        """Fields (other than RESUMABLE_FIELDS) whose values differ from a stored config dict.

        A field missing from the stored dict (written by an older version) counts as its
        LEGACY_VALUES entry, else as its default (`stored_value`).
        """
        mine = self.to_dict()
        return sorted(
            key
            for key in set(mine) | set(other)
            if key not in self.RESUMABLE_FIELDS
            and key not in self.RECORDED_FIELDS
            and mine.get(key) != self.stored_value(other, key)
        )

    @classmethod
    def stored_value(cls, stored: dict, key: str):
        """A field's value in a stored config dict; for a field it lacks, the value that run used."""
        if key in stored:
            return stored[key]
        if key in cls.LEGACY_VALUES:
            return cls.LEGACY_VALUES[key](stored)
        field = {f.name: f for f in dataclasses.fields(cls)}.get(key)
        if field is None or field.default is dataclasses.MISSING:
            return None
        return list(field.default) if isinstance(field.default, tuple) else field.default
