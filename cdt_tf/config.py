"""Command-line flags (defined once, here) and the frozen, validated Config they become.

Library code takes a Config, never absl's FLAGS.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math

from absl import flags

from cdt_tf import catalog, class_stats
from cdt_tf.catalog import AUTO_MODELS
from cdt_tf.errors import UserError

# The headings of `python -m cdt_tf.main --help`, one per section of define_flags below: a heading
# covers the flag it names and every flag defined after it, up to the next heading's flag.
HELP_TOPICS = (
    ("Data", "dataset"),
    ("Model and objective", "model"),
    ("Post-hoc calibration and held-out selection", "holdout_per_class"),
    ("Optimisation (the paper's CIFAR recipe)", "epochs"),
    ("Run", "model_dir"),
    ("Hardware", "strategy"),
)


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines every flag of `python -m cdt_tf.main` in flag_values. Defaults are the paper's CIFAR recipe."""
    define = {
        kind: functools.partial(getattr(flags, f"DEFINE_{kind}"), flag_values=flag_values)
        for kind in ("enum", "string", "float", "integer", "bool", "list")
    }
    # Data.
    define["enum"]("dataset", None, catalog.DATASETS, "Dataset to train on.")
    define["string"](
        "data_dir",
        None,
        "cifar10/cifar100: the TFDS data_dir, or a folder with train/<class>/ and test/<class>/ "
        "(read as an image folder, classes in sorted name order). image_folder: that folder. "
        "tiny_imagenet: the tiny-imagenet-200 folder. inat2018: the folder holding train2018.json and "
        "val2018.json (file_name paths are relative to it), else the TFDS data_dir of i_naturalist2018.",
    )
    define["enum"](
        "bad_images",
        "error",
        catalog.BAD_IMAGES,
        "Image files that are empty or not an image (checked by their first bytes when the data is "
        "loaded, before training): error stops with one message counting and naming them; skip leaves "
        "them out of their split with one warning line, and the run records which.",
    )
    define["enum"](
        "imbalance",
        "none",
        class_stats.PROFILES,
        "Imbalance profile of the training subset: exp (long-tailed), step, or none.",
    )
    define["float"]("imbalance_ratio", 1.0, "rho = N_max / N_min >= 1.")
    define["integer"](
        "max_per_class", 0, "N_max, images of the largest class (0: the smallest class size available)."
    )
    define["integer"](
        "image_size",
        0,
        "image_folder: resize images to this square size (0: the first image's size). "
        "tiny_imagenet: 0 is 64. inat2018: the training and test crop size (0: 224).",
    )
    define["enum"](
        "augmentation",
        "auto",
        ("auto",) + catalog.AUGMENTATIONS,
        "Training augmentation. auto: crop_flip (pad H/8, random crop, flip) except none for digits. "
        "inat2018: crop_flip is the random-resized crop (8-100 % of the area) + flip; none is the test "
        "resize + centre crop.",
    )
    define["float"](
        "randaugment_magnitude",
        0.0,
        "RandAugment (keras.layers.RandAugment) per training image after pad-crop-flip, with this factor in "
        "(0, 1]: each op's strength is drawn in [0, factor] (RandAugment's M=9 of 30 is about 0.3). 0: off.",
    )
    define["integer"]("randaugment_ops", 2, "RandAugment: ops applied to each image (N).")
    define["integer"](
        "cutout",
        0,
        "Cutout: side of a square zeroed at a random position of each training image (after RandAugment), "
        "clipped at the borders. The CIFAR standard is 16. 0: off.",
    )
    define["float"](
        "mixup_alpha",
        0.0,
        "MixUp per training batch: lam ~ Beta(alpha, alpha), images and one-hot labels mixed with a "
        "permutation of the batch; the losses take the soft labels. 0: off.",
    )
    define["float"](
        "cutmix_alpha",
        0.0,
        "CutMix per training batch: lam ~ Beta(alpha, alpha) sets a box of the partner image pasted in, "
        "labels mixed by area. With --mixup_alpha too, each mixed batch picks one of the two (50/50). "
        "0: off.",
    )
    define["float"](
        "mix_prob", 1.0, "Probability that a batch is mixed (MixUp/CutMix); the others keep one-hot labels."
    )
    define["integer"](
        "mix_until_epoch",
        0,
        "MixUp/CutMix in epochs 1..N only; the later epochs train on unmixed batches (Bag of Tricks' "
        "fine-tuning after mixup). 0: every epoch.",
    )
    # Model and objective.
    define["enum"](
        "model",
        "auto",
        ("auto",) + catalog.MODEL_NAMES,
        "Network. auto: resnet32, or digits_convnet for digits, resnet18 for tiny_imagenet, resnet50 "
        "for inat2018.",
    )
    define["enum"](
        "classifier",
        "auto",
        ("auto",) + catalog.CLASSIFIERS,
        "Last layer: linear (Dense with bias) or cosine (normalised features and weights, no bias). "
        "auto: cosine for --loss=ldam (as its reference code), else linear.",
    )
    define["enum"](
        "conv_padding",
        "symmetric",
        catalog.CONV_PADDINGS,
        "How strided convolutions pad. symmetric: (k-1)/2 zeros each side, as PyTorch and the official "
        "TensorFlow ResNets, so a block's strided branch stays aligned with its shortcut. same: Keras "
        "'same' (0 before, 1 after on even sizes; one pixel off the shortcut), which runs started before "
        "this flag used and keep.",
    )
    define["enum"](
        "loss",
        "ce",
        catalog.LOSSES,
        "Training objective: ce (ERM), cdt (class-dependent temperatures), reweight (weights N_c^-gamma), "
        "focal, cb (class-balanced, effective number), ldam (label-distribution-aware margins), "
        "la (logit-adjusted).",
    )
    define["float"](
        "gamma",
        0.0,
        "cdt: temperature exponent, a_c = (N_max / N_c)^gamma. "
        "reweight: weight exponent, w_c ~ N_c^-gamma. >= 0.",
    )
    define["enum"](
        "gamma_schedule",
        "constant",
        catalog.GAMMA_SCHEDULES,
        "How gamma (cdt, reweight) moves during training: constant; step (0 before --gamma_epoch, then "
        "gamma: the paper's iNaturalist recipe); linear (0 at epoch 0 rising to gamma at --gamma_epoch).",
    )
    define["integer"]("gamma_epoch", 0, "0-based epoch of --gamma_schedule's switch or end of ramp.")
    define["float"]("focal_gamma", 1.0, "focal: the focusing exponent of (1 - p_y)^focal_gamma.")
    define["enum"](
        "cb_loss", "softmax", ("softmax", "focal"), "cb: weight softmax cross-entropy or the focal loss."
    )
    define["float"](
        "cb_beta", 0.9999, "cb and DRW: beta of the effective number (1 - beta^N_c) / (1 - beta)."
    )
    define["float"]("ldam_max_margin", 0.5, "ldam: the largest margin (of the smallest class).")
    define["float"]("ldam_scale", 30.0, "ldam: scale s of the cosine logits.")
    define["float"]("la_tau", 1.0, "la: the logit adjustment tau * log prior added in training.")
    define["integer"](
        "drw_epoch",
        0,
        "Deferred re-weighting: 0-based epoch from which class-balanced (effective-number, --cb_beta) "
        "weights are switched on (LDAM-DRW uses 160). 0: off.",
    )
    define["enum"](
        "class_weight_reduction",
        "weights",
        catalog.WEIGHT_REDUCTIONS,
        "Reduction of class-weighted losses: weights (sum w l / sum w, the PyTorch reference code) or "
        "batch_size (sum w l / B, Keras's class_weight).",
    )
    define["enum"](
        "sampler",
        "instance",
        catalog.SAMPLERS,
        "instance: shuffle the training subset. class_balanced: each example's class drawn uniformly, "
        "then an image of that class (re-sampling).",
    )
    # Post-hoc calibration and held-out selection.
    define["integer"](
        "holdout_per_class",
        0,
        "Hold out K training images per class (from the imbalanced subset) as a balanced validation "
        "split to select post-hoc tau on (the paper's Table 9). 0: select on the test set, labelled so.",
    )
    define["integer"](
        "val_per_class",
        0,
        "A balanced validation split of N images per class, evaluated at the end of training (results.json "
        "'validation') and used to select post-hoc tau. A class's N images come from the training pool "
        "images outside the run's subset when it has N to spare, else out of its own subset (then removed "
        "from training); subset.json records which. 0: off. Exclusive with --holdout_per_class.",
    )
    define["string"](
        "tau_from",
        None,
        "A finished --holdout_per_class run directory: use its held-out-selected post-hoc taus here "
        "(the second step of the Table 9 protocol: retrain on the full subset).",
    )
    define["enum"](
        "second_stage",
        "none",
        ("none",) + catalog.SECOND_STAGES,
        "After training, retrain the classifier on the frozen features (python -m "
        "cdt_tf.retrain_classifier, seconds): crt (class-balanced batches), crt_las (with label-aware "
        "smoothing, --smooth_head/--smooth_tail), *_bn (on batch-norm statistics re-estimated on "
        "class-balanced batches). Recorded in results.json post_hoc.<name>; `python -m cdt_tf.export "
        "--classifier=<name>` serves it. none: off.",
    )
    define["float"]("smooth_head", 0.3, "--second_stage=crt_las*: label smoothing of the largest class.")
    define["float"]("smooth_tail", 0.0, "--second_stage=crt_las*: label smoothing of the smallest class.")
    # Optimisation (the paper's CIFAR recipe).
    define["integer"]("epochs", 200, "Training epochs.")
    define["integer"]("batch_size", 128, "Global batch size (summed over replicas).")
    define["float"]("learning_rate", 0.1, "Peak learning rate, reached after the warm-up.")
    define["float"]("momentum", 0.9, "SGD momentum.")
    define["float"]("weight_decay", 2e-4, "Coupled (PyTorch-style) L2 weight decay.")
    define["enum"](
        "lr_schedule",
        "step",
        catalog.LR_SCHEDULES,
        "Learning-rate schedule. step: per-epoch linear warm-up over --warmup_epochs, then the base rate "
        "times each --decay_multipliers from its --decay_epochs on (the paper's recipe). cosine: per-step "
        "linear warm-up over --warmup_epochs, then cosine decay to 0 at the end of --epochs (ignores "
        "--decay_epochs and --decay_multipliers).",
    )
    define["integer"]("warmup_epochs", 5, "Epochs of linear learning-rate warm-up.")
    define["list"]("decay_epochs", ["160", "180"], "0-based epochs at which the decays start.")
    define["list"](
        "decay_multipliers", ["0.01", "0.0001"], "Learning-rate multiplier from each decay epoch on."
    )
    define["integer"]("steps_per_epoch", 0, "Optimizer steps per epoch (0: one pass over the subset).")
    define["integer"](
        "eval_per_class",
        0,
        "Bound every evaluation to K images per class (seeded): the test split (per-epoch evaluation, "
        "results, post-hoc) and the training-subset pass of post-hoc (NCM centres). 0: all. For smoke "
        "runs with --steps_per_epoch (e.g. --eval_per_class=2); results.json then says so.",
    )
    # Run.
    define["string"]("model_dir", None, "Run directory: config, checkpoints, logs, results.")
    define["integer"]("seed", 0, "Seeds the subset, Keras, NumPy, TensorFlow and every shuffle.")
    define["bool"]("deterministic", False, "Use deterministic TensorFlow ops (slower).")
    define["integer"]("eval_every", 10, "Epochs between per-class test evaluations (TensorBoard).")
    define["integer"]("checkpoint_every", 10, "Epochs between kept weight checkpoints.")
    define["integer"](
        "stats_every",
        0,
        "Epochs between per-class training statistics for TensorBoard (logs/stats: train/test accuracy, "
        "classifier norms, train/test feature-mean distance; Fig. 7). 0: off.",
    )
    # Hardware.
    define["enum"](
        "strategy",
        "auto",
        catalog.STRATEGIES,
        "tf.distribute strategy. auto: MirroredStrategy when more than one GPU is visible, else one device. "
        "mirrored: all visible GPUs (or the CPU). one_device: the first GPU (or the CPU). multi_worker: "
        "MultiWorkerMirroredStrategy across the machines listed in the TF_CONFIG environment variable; run "
        "the same command on every machine, only the chief writes --model_dir (BUILD.md). "
        "--batch_size is global (split over the replicas).",
    )
    define["enum"](
        "precision",
        "auto",
        catalog.PRECISIONS,
        "Compute precision. auto (default): mixed_float16 on GPUs of compute capability >= 7.0, "
        "mixed_bfloat16 on CPUs with native bfloat16 (AVX512-BF16 or AMX), float32 elsewhere (bf16 costs "
        "no accuracy on the CIFAR recipe: BENCHMARKS.md). Logits, temperatures and losses stay float32. "
        "A resumed run keeps the precision it started with (config.json).",
    )
    define["bool"](
        "mixed_precision",
        False,
        "Deprecated: --precision=auto without the float32 fallback (mixed_float16 on GPUs, "
        "mixed_bfloat16 on CPUs with bfloat16 arithmetic). Kept so that older commands still run.",
    )
    define["string"](
        "profile_batch",
        "",
        "Write a TensorBoard profile of training steps a..b (1-based, e.g. 10,20) to logs/ "
        "(view with tensorboard-plugin-profile). Empty: off.",
    )
    flags.mark_flags_as_required(["dataset", "model_dir"], flag_values=flag_values)


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
        """Raises UserError naming the first bad value and what to do; returns self."""
        # Order: each flag's own vocabulary and range first, then the checks that tie flags together,
        # so that the message names the flag the user got wrong (--epochs=0 is about --epochs, not
        # about the --drw_epoch range it also breaks).
        checks = [
            (
                bool(self.model_dir),
                "--model_dir is required: the run directory for config, checkpoints and results",
            ),
            *(
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
                    ("second_stage", self.second_stage, ("none",) + catalog.SECOND_STAGES),
                )
            ),
            # inf and NaN pass or fail a range check by accident (inf >= 0): refused first, by name.
            *(
                (math.isfinite(value), f"--{name} must be a finite number, got {value}")
                for name, value in self._float_values()
            ),
            *(
                (0 <= value < 1, f"--{name} must be in [0, 1), got {value}")
                for name, value in (("smooth_head", self.smooth_head), ("smooth_tail", self.smooth_tail))
            ),
            (
                "_las" not in self.second_stage or self.smooth_head > 0 or self.smooth_tail > 0,
                f"--second_stage={self.second_stage} smooths labels: give --smooth_head or --smooth_tail > 0 "
                "(or use --second_stage=crt)",
            ),
            (self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"--batch_size must be >= 1, got {self.batch_size}"),
            (self.learning_rate > 0, f"--learning_rate must be > 0, got {self.learning_rate}"),
            (self.weight_decay >= 0, f"--weight_decay must be >= 0, got {self.weight_decay}"),
            (self.warmup_epochs >= 0, f"--warmup_epochs must be >= 0, got {self.warmup_epochs}"),
            (self.max_per_class >= 0, f"--max_per_class must be >= 0, got {self.max_per_class}"),
            (self.steps_per_epoch >= 0, f"--steps_per_epoch must be >= 0, got {self.steps_per_epoch}"),
            (self.eval_per_class >= 0, f"--eval_per_class must be >= 0 (0: all), got {self.eval_per_class}"),
            (
                self.imbalance_ratio >= 1,
                f"--imbalance_ratio is N_max / N_min and must be >= 1, got {self.imbalance_ratio}",
            ),
            (self.gamma >= 0, f"--gamma must be >= 0, got {self.gamma}"),
            (self.focal_gamma >= 0, f"--focal_gamma must be >= 0, got {self.focal_gamma}"),
            (0 <= self.cb_beta < 1, f"--cb_beta must be in [0, 1), got {self.cb_beta}"),
            (self.ldam_max_margin >= 0, f"--ldam_max_margin must be >= 0, got {self.ldam_max_margin}"),
            (self.ldam_scale > 0, f"--ldam_scale must be > 0, got {self.ldam_scale}"),
            (
                self.holdout_per_class >= 0,
                f"--holdout_per_class must be >= 0 (0: off), got {self.holdout_per_class}",
            ),
            (
                self.val_per_class >= 0,
                f"--val_per_class must be >= 0 (0: off), got {self.val_per_class}",
            ),
            (
                self.mixup_alpha >= 0,
                f"--mixup_alpha must be >= 0 (0: off), got {self.mixup_alpha}",
            ),
            (
                self.cutmix_alpha >= 0,
                f"--cutmix_alpha must be >= 0 (0: off), got {self.cutmix_alpha}",
            ),
            (0 <= self.mix_prob <= 1, f"--mix_prob must be in [0, 1], got {self.mix_prob}"),
            (
                0 <= self.mix_until_epoch < self.epochs,
                f"--mix_until_epoch must be in [0, --epochs) (0: every epoch), got {self.mix_until_epoch}",
            ),
            (
                not self.mix_until_epoch or self.mixup_alpha > 0 or self.cutmix_alpha > 0,
                "--mix_until_epoch needs --mixup_alpha or --cutmix_alpha > 0",
            ),
            (
                0 <= self.randaugment_magnitude <= 1,
                f"--randaugment_magnitude must be in [0, 1] (0: off), got {self.randaugment_magnitude}",
            ),
            (self.randaugment_ops >= 1, f"--randaugment_ops must be >= 1, got {self.randaugment_ops}"),
            (self.cutout >= 0, f"--cutout must be >= 0 (0: off), got {self.cutout}"),
            (
                self.eval_every >= 1 and self.checkpoint_every >= 1,
                "--eval_every and --checkpoint_every must be >= 1",
            ),
            (self.stats_every >= 0, f"--stats_every must be >= 0 (0: off), got {self.stats_every}"),
            (
                _valid_profile_batch(self.profile_batch),
                f"--profile_batch takes two step numbers a,b with 1 <= a <= b (e.g. 10,20), "
                f"got {self.profile_batch!r}",
            ),
            # Checks that tie flags together.
            (
                not (self.mixed_precision and self.precision != "auto"),
                f"--mixed_precision is the old spelling of --precision; drop it and keep "
                f"--precision={self.precision}",
            ),
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
            (
                not (self.tau_from and self.holdout_per_class),
                "--tau_from applies held-out taus to a run on the full subset; drop --holdout_per_class",
            ),
            (
                not (self.val_per_class and self.holdout_per_class),
                "--val_per_class and --holdout_per_class are two ways to select tau on a validation split; "
                "use one",
            ),
            (
                self.lr_schedule != "cosine" or self.warmup_epochs < self.epochs,
                f"--lr_schedule=cosine needs --warmup_epochs < --epochs ({self.epochs}), "
                f"got {self.warmup_epochs}",
            ),
            (
                not (self.mixes_batches and self.strategy == "multi_worker"),
                "--mixup_alpha/--cutmix_alpha give soft labels, which the training loop of "
                "--strategy=multi_worker does not take; use --strategy=auto or mirrored",
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
                self.dataset != "image_folder" or bool(self.data_dir),
                "--dataset=image_folder needs --data_dir=<folder with train/<class>/ and test/<class>/>",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)
        return self

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
