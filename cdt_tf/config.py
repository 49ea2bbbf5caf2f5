"""The frozen, validated Config that the command-line flags become (the flags themselves are defined,
by topic, in `flag_definitions`; `define_flags` and `HELP_TOPICS` are re-exported here).

Library code takes a Config, never absl's FLAGS.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

from absl import flags

from cdt_tf import catalog, class_stats
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
    def mixes_batches(self) -> bool:
        """Whether training batches are mixed (MixUp/CutMix): their labels are then float [B, C] vectors."""
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0

    def validate(self) -> Config:
        """Raises UserError naming the first bad value and what to do; returns self.

        The checks live with their topic (the sections of define_flags). Order: --model_dir, every
        flag's vocabulary, finite numbers, each flag's own range, then the checks that tie flags
        together, so that the message names the flag the user got wrong (--epochs=0 is about
        --epochs, not about the --drw_epoch range it also breaks).
        """
        own, ties = [], []
        for topic in (
            self._data_checks,
            self._objective_checks,
            self._post_hoc_checks,
            self._optimisation_checks,
            self._run_checks,
            self._hardware_checks,
        ):
            topic_own, topic_ties = topic()
            own += topic_own
            ties += topic_ties
        required = (
            bool(self.model_dir),
            "--model_dir is required: the run directory for config, checkpoints and results",
        )
        for ok, message in (required, *self._vocabulary_checks(), *self._finite_checks(), *own, *ties):
            if not ok:
                raise UserError(message)
        return self

    # Each check is (ok, the message when not ok). Topic methods return (own ranges, ties to other flags).

    def _vocabulary_checks(self) -> list[tuple[bool, str]]:
        return [
            (value in choices, f"unknown {name} {value!r}; use one of {choices}")
            for name, value, choices in (
                ("dataset", self.dataset, catalog.DATASETS),
                ("loss", self.loss, catalog.LOSSES),
                ("sampler", self.sampler, catalog.SAMPLERS),
                ("strategy", self.strategy, catalog.STRATEGIES),
                ("precision", self.precision, catalog.PRECISIONS),
                ("imbalance", self.imbalance, class_stats.PROFILES),
                ("bad_images", self.bad_images, catalog.BAD_IMAGES),
                ("lr_schedule", self.lr_schedule, catalog.LR_SCHEDULES),
                ("sam_classes", self.sam_classes, catalog.SAM_CLASSES),
                ("second_stage", self.second_stage, ("none",) + catalog.SECOND_STAGES),
                ("mix_schedule", self.mix_schedule, catalog.MIX_SCHEDULES),
            )
        ]

    def _finite_checks(self) -> list[tuple[bool, str]]:
        # inf and NaN pass or fail a range check by accident (inf >= 0): refused first, by name.
        return [
            (math.isfinite(value), f"--{name} must be a finite number, got {value}")
            for name, value in self._float_values()
        ]

    def _data_checks(self):
        own = [
            (self.max_per_class >= 0, f"--max_per_class must be >= 0, got {self.max_per_class}"),
            (
                self.imbalance_ratio >= 1,
                f"--imbalance_ratio is N_max / N_min and must be >= 1, got {self.imbalance_ratio}",
            ),
            (self.mixup_alpha >= 0, f"--mixup_alpha must be >= 0 (0: off), got {self.mixup_alpha}"),
            (self.cutmix_alpha >= 0, f"--cutmix_alpha must be >= 0 (0: off), got {self.cutmix_alpha}"),
            (0 <= self.mix_prob <= 1, f"--mix_prob must be in [0, 1], got {self.mix_prob}"),
            (
                0 <= self.randaugment_magnitude <= 1,
                f"--randaugment_magnitude must be in [0, 1] (0: off), got {self.randaugment_magnitude}",
            ),
            (self.randaugment_ops >= 1, f"--randaugment_ops must be >= 1, got {self.randaugment_ops}"),
            (self.cutout >= 0, f"--cutout must be >= 0 (0: off), got {self.cutout}"),
        ]
        ties = [
            (
                0 <= self.mix_until_epoch < self.epochs,
                f"--mix_until_epoch must be in [0, --epochs) (0: every epoch), got {self.mix_until_epoch}",
            ),
            (
                not self.mix_until_epoch or self.mixup_alpha > 0 or self.cutmix_alpha > 0,
                "--mix_until_epoch needs --mixup_alpha or --cutmix_alpha > 0",
            ),
            *self._mix_ramp_checks(),
            (
                self.dataset != "image_folder" or bool(self.data_dir),
                "--dataset=image_folder needs --data_dir=<folder with train/<class>/ and test/<class>/>",
            ),
        ]
        return own, ties

    def _mix_ramp_checks(self):
        ramp = self.mix_schedule == "ramp"
        return [
            (
                ramp or self.mix_ramp_start == 0,
                "--mix_ramp_start only applies with --mix_schedule=ramp; drop it or add that",
            ),
            (
                not ramp or self.mixes_batches,
                "--mix_schedule=ramp ramps MixUp/CutMix down: it needs --mixup_alpha or --cutmix_alpha > 0",
            ),
            (
                not ramp or self.mix_until_epoch > self.mix_ramp_start >= 0,
                f"--mix_schedule=ramp needs --mix_until_epoch > --mix_ramp_start >= 0, got "
                f"--mix_until_epoch={self.mix_until_epoch} --mix_ramp_start={self.mix_ramp_start}",
            ),
        ]

    def _objective_checks(self):
        own = [
            (self.gamma >= 0, f"--gamma must be >= 0, got {self.gamma}"),
            (self.focal_gamma >= 0, f"--focal_gamma must be >= 0, got {self.focal_gamma}"),
            (0 <= self.cb_beta < 1, f"--cb_beta must be in [0, 1), got {self.cb_beta}"),
            (self.ldam_max_margin >= 0, f"--ldam_max_margin must be >= 0, got {self.ldam_max_margin}"),
            (self.ldam_scale > 0, f"--ldam_scale must be > 0, got {self.ldam_scale}"),
            (
                self.prior_tau >= 0,
                f"--prior_tau must be >= 0 (0: off; 1 on ce is Balanced Softmax), got {self.prior_tau}",
            ),
        ]
        ties = [
            (
                self.gamma_schedule == "constant" or self.loss in ("cdt", "reweight"),
                f"--gamma_schedule={self.gamma_schedule} moves gamma, which only --loss=cdt and "
                f"--loss=reweight use; got --loss={self.loss}",
            ),
            (
                self.gamma_schedule == "constant" or 1 <= self.gamma_epoch < self.epochs,
                f"--gamma_schedule={self.gamma_schedule} needs 1 <= --gamma_epoch < --epochs "
                f"({self.epochs}), got {self.gamma_epoch}",
            ),
            (
                0 <= self.drw_epoch < self.epochs,
                f"--drw_epoch must be in [0, --epochs={self.epochs}) (0: off), got {self.drw_epoch}",
            ),
            (
                self.drw_epoch == 0 or self.loss != "reweight",
                "--drw_epoch with --loss=reweight: defer its weights with --gamma_schedule=step "
                "--gamma_epoch=E instead",
            ),
        ]
        return own, ties

    def _post_hoc_checks(self):
        own = [
            *(
                (0 <= value < 1, f"--{name} must be in [0, 1), got {value}")
                for name, value in (("smooth_head", self.smooth_head), ("smooth_tail", self.smooth_tail))
            ),
            (
                "_las" not in self.second_stage or self.smooth_head > 0 or self.smooth_tail > 0,
                f"--second_stage={self.second_stage} smooths labels: give --smooth_head or --smooth_tail > 0 "
                "(or use --second_stage=crt)",
            ),
            (
                self.holdout_per_class >= 0,
                f"--holdout_per_class must be >= 0 (0: off), got {self.holdout_per_class}",
            ),
            (self.val_per_class >= 0, f"--val_per_class must be >= 0 (0: off), got {self.val_per_class}"),
        ]
        ties = [
            (
                not (self.tau_from and self.holdout_per_class),
                "--tau_from applies held-out taus to a run on the full subset; drop --holdout_per_class",
            ),
            (
                not (self.val_per_class and self.holdout_per_class),
                "--val_per_class and --holdout_per_class are two ways to select tau on a validation split; "
                "use one",
            ),
        ]
        return own, ties

    def _optimisation_checks(self):
        own = [
            (self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"--batch_size must be >= 1, got {self.batch_size}"),
            (self.learning_rate > 0, f"--learning_rate must be > 0, got {self.learning_rate}"),
            (self.weight_decay >= 0, f"--weight_decay must be >= 0, got {self.weight_decay}"),
            (self.sam_rho >= 0, f"--sam_rho must be >= 0 (0: off), got {self.sam_rho}"),
            (
                self.sam_tail_threshold >= 1,
                f"--sam_tail_threshold must be >= 1, got {self.sam_tail_threshold}",
            ),
            (self.max_norm >= 0, f"--max_norm must be >= 0 (0: off), got {self.max_norm}"),
            (self.warmup_epochs >= 0, f"--warmup_epochs must be >= 0, got {self.warmup_epochs}"),
            (self.steps_per_epoch >= 0, f"--steps_per_epoch must be >= 0, got {self.steps_per_epoch}"),
            (self.eval_per_class >= 0, f"--eval_per_class must be >= 0 (0: all), got {self.eval_per_class}"),
        ]
        ties = [
            (
                self.lr_schedule != "cosine" or self.warmup_epochs < self.epochs,
                f"--lr_schedule=cosine needs --warmup_epochs < --epochs ({self.epochs}), "
                f"got {self.warmup_epochs}",
            ),
            (
                len(self.decay_epochs) == len(self.decay_multipliers),
                f"--decay_epochs {list(self.decay_epochs)} and --decay_multipliers "
                f"{list(self.decay_multipliers)} need the same length",
            ),
            (
                all(b > a for a, b in itertools.pairwise(self.decay_epochs)),
                f"--decay_epochs must strictly increase, got {list(self.decay_epochs)}",
            ),
            (
                self.sam_classes == "all" or self.sam_rho > 0,
                "--sam_classes=tail chooses what SAM flattens; give --sam_rho > 0 too (e.g. 0.05)",
            ),
            (
                not self.max_norm or self.resolved_classifier == "linear",
                f"--max_norm constrains the linear classifier's weights; got --classifier="
                f"{self.resolved_classifier} (use --classifier=linear, or drop --max_norm)",
            ),
        ]
        return own, ties

    def _run_checks(self):
        own = [
            (
                self.eval_every >= 1 and self.checkpoint_every >= 1,
                "--eval_every and --checkpoint_every must be >= 1",
            ),
            (self.stats_every >= 0, f"--stats_every must be >= 0 (0: off), got {self.stats_every}"),
        ]
        return own, []

    def _hardware_checks(self):
        own = [
            (
                _valid_profile_batch(self.profile_batch),
                f"--profile_batch takes two step numbers a,b with 1 <= a <= b (e.g. 10,20), "
                f"got {self.profile_batch!r}",
            ),
        ]
        ties = [
            (
                not (self.mixed_precision and self.precision != "auto"),
                f"--mixed_precision is the old spelling of --precision; drop it and keep "
                f"--precision={self.precision}",
            ),
            (
                not (self.mixes_batches and self.strategy == "multi_worker"),
                "--mixup_alpha/--cutmix_alpha give soft labels, which the training loop of "
                "--strategy=multi_worker does not take; use --strategy=auto or mirrored",
            ),
        ]
        return own, ties

    def _float_values(self):
        """(flag name, value) of every float field, one pair per value of a list of floats."""
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.type == "float":
                yield field.name, value
            elif field.type == "tuple[float, ...]":
                yield from ((field.name, v) for v in value)

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


def _valid_profile_batch(value: str) -> bool:
    if not value:
        return True
    parts = value.split(",")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        return False
    first, last = (int(p) for p in parts)
    return 1 <= first <= last
