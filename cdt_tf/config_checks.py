"""Config.validate's checks, one function per topic (the sections of flag_definitions).

Each check is (ok, the message when not ok); a topic's function returns (its flags' own ranges, its
ties to other flags), so that `checks` can order every own range before every tie and the message
names the flag the user got wrong. Every function takes a `cdt_tf.config.Config` (not imported:
config imports this module).
"""

from __future__ import annotations

import dataclasses
import itertools
import math

from cdt_tf import catalog, class_stats


def checks(config) -> list[tuple[bool, str]]:
    """Every check of `config` in the order Config.validate raises the first failing one: each flag's
    vocabulary, finite numbers, each flag's own range, then the checks that tie flags together."""
    own, ties = [], []
    for topic in (
        data_checks,
        objective_checks,
        post_hoc_checks,
        optimisation_checks,
        run_checks,
        hardware_checks,
    ):
        topic_own, topic_ties = topic(config)
        own += topic_own
        ties += topic_ties
    return [*vocabulary_checks(config), *finite_checks(config), *own, *ties]


def vocabulary_checks(config) -> list[tuple[bool, str]]:
    return [
        (value in choices, f"unknown {name} {value!r}; use one of {choices}")
        for name, value, choices in (
            ("dataset", config.dataset, catalog.DATASETS),
            ("loss", config.loss, catalog.LOSSES),
            ("sampler", config.sampler, catalog.SAMPLERS),
            ("strategy", config.strategy, catalog.STRATEGIES),
            ("precision", config.precision, catalog.PRECISIONS),
            ("imbalance", config.imbalance, class_stats.PROFILES),
            ("bad_images", config.bad_images, catalog.BAD_IMAGES),
            ("lr_schedule", config.lr_schedule, catalog.LR_SCHEDULES),
            ("sam_classes", config.sam_classes, catalog.SAM_CLASSES),
            ("second_stage", config.second_stage, ("none",) + catalog.SECOND_STAGES),
            ("mix_schedule", config.mix_schedule, catalog.MIX_SCHEDULES),
        )
    ]


def finite_checks(config) -> list[tuple[bool, str]]:
    # inf and NaN pass or fail a range check by accident (inf >= 0): refused first, by name.
    return [
        (math.isfinite(value), f"--{name} must be a finite number, got {value}")
        for name, value in float_values(config)
    ]


def data_checks(config):
    own = [
        (config.max_per_class >= 0, f"--max_per_class must be >= 0, got {config.max_per_class}"),
        (
            config.imbalance_ratio >= 1,
            f"--imbalance_ratio is N_max / N_min and must be >= 1, got {config.imbalance_ratio}",
        ),
        (config.mixup_alpha >= 0, f"--mixup_alpha must be >= 0 (0: off), got {config.mixup_alpha}"),
        (config.cutmix_alpha >= 0, f"--cutmix_alpha must be >= 0 (0: off), got {config.cutmix_alpha}"),
        (0 <= config.mix_prob <= 1, f"--mix_prob must be in [0, 1], got {config.mix_prob}"),
        (
            0 <= config.randaugment_magnitude <= 1,
            f"--randaugment_magnitude must be in [0, 1] (0: off), got {config.randaugment_magnitude}",
        ),
        (config.randaugment_ops >= 1, f"--randaugment_ops must be >= 1, got {config.randaugment_ops}"),
        (config.cutout >= 0, f"--cutout must be >= 0 (0: off), got {config.cutout}"),
    ]
    ties = [
        (
            0 <= config.mix_until_epoch < config.epochs,
            f"--mix_until_epoch must be in [0, --epochs) (0: every epoch), got {config.mix_until_epoch}",
        ),
        (
            not config.mix_until_epoch or config.mixup_alpha > 0 or config.cutmix_alpha > 0,
            "--mix_until_epoch needs --mixup_alpha or --cutmix_alpha > 0",
        ),
        *mix_ramp_checks(config),
        (
            config.dataset != "image_folder" or bool(config.data_dir),
            "--dataset=image_folder needs --data_dir=<folder with train/<class>/ and test/<class>/>",
        ),
    ]
    return own, ties


def mix_ramp_checks(config):
    ramp = config.mix_schedule == "ramp"
    return [
        (
            ramp or config.mix_ramp_start == 0,
            "--mix_ramp_start only applies with --mix_schedule=ramp; drop it or add that",
        ),
        (
            not ramp or config.mixes_batches,
            "--mix_schedule=ramp ramps MixUp/CutMix down: it needs --mixup_alpha or --cutmix_alpha > 0",
        ),
        (
            not ramp or config.mix_until_epoch > config.mix_ramp_start >= 0,
            f"--mix_schedule=ramp needs --mix_until_epoch > --mix_ramp_start >= 0, got "
            f"--mix_until_epoch={config.mix_until_epoch} --mix_ramp_start={config.mix_ramp_start}",
        ),
    ]


def objective_checks(config):
    own = [
        (config.gamma >= 0, f"--gamma must be >= 0, got {config.gamma}"),
        (config.focal_gamma >= 0, f"--focal_gamma must be >= 0, got {config.focal_gamma}"),
        (0 <= config.cb_beta < 1, f"--cb_beta must be in [0, 1), got {config.cb_beta}"),
        (config.ldam_max_margin >= 0, f"--ldam_max_margin must be >= 0, got {config.ldam_max_margin}"),
        (config.ldam_scale > 0, f"--ldam_scale must be > 0, got {config.ldam_scale}"),
        (
            config.prior_tau >= 0,
            f"--prior_tau must be >= 0 (0: off; 1 on ce is Balanced Softmax), got {config.prior_tau}",
        ),
        (
            config.contrastive_weight >= 0,
            f"--contrastive_weight must be >= 0 (0: off), got {config.contrastive_weight}",
        ),
        (
            config.contrastive_temperature > 0,
            f"--contrastive_temperature must be > 0, got {config.contrastive_temperature}",
        ),
        (config.contrastive_dim >= 1, f"--contrastive_dim must be >= 1, got {config.contrastive_dim}"),
    ]
    ties = [
        (
            config.gamma_schedule == "constant" or config.loss in ("cdt", "reweight"),
            f"--gamma_schedule={config.gamma_schedule} moves gamma, which only --loss=cdt and "
            f"--loss=reweight use; got --loss={config.loss}",
        ),
        (
            config.gamma_schedule == "constant" or 1 <= config.gamma_epoch < config.epochs,
            f"--gamma_schedule={config.gamma_schedule} needs 1 <= --gamma_epoch < --epochs "
            f"({config.epochs}), got {config.gamma_epoch}",
        ),
        (
            0 <= config.drw_epoch < config.epochs,
            f"--drw_epoch must be in [0, --epochs={config.epochs}) (0: off), got {config.drw_epoch}",
        ),
        (
            config.drw_epoch == 0 or config.loss != "reweight",
            "--drw_epoch with --loss=reweight: defer its weights with --gamma_schedule=step "
            "--gamma_epoch=E instead",
        ),
        *contrastive_checks(config),
    ]
    return own, ties


def contrastive_checks(config):
    """What --contrastive_weight cannot be combined with (cdt_tf/contrastive.py)."""
    if not config.contrastive_weight:
        return []
    return [
        (
            not config.mixes_batches,
            "--contrastive_weight pairs images by their labels, which MixUp/CutMix make soft; drop "
            "--mixup_alpha/--cutmix_alpha or --contrastive_weight",
        ),
        (
            not config.sam_rho,
            "--contrastive_weight and --sam_rho each take their own training step; use one of them",
        ),
        (
            config.strategy != "multi_worker",
            "--contrastive_weight is not in the training loop of --strategy=multi_worker; use "
            "--strategy=auto or mirrored",
        ),
        (
            config.resolved_augmentation != "none" or config.randaugment_magnitude > 0 or config.cutout > 0,
            "--contrastive_weight contrasts two augmented views of each image, and with "
            "--augmentation=none they are the same image; use --augmentation=crop_flip (or "
            "--randaugment_magnitude/--cutout)",
        ),
    ]


def post_hoc_checks(config):
    own = [
        *(
            (0 <= value < 1, f"--{name} must be in [0, 1), got {value}")
            for name, value in (("smooth_head", config.smooth_head), ("smooth_tail", config.smooth_tail))
        ),
        (
            "_las" not in config.second_stage or config.smooth_head > 0 or config.smooth_tail > 0,
            f"--second_stage={config.second_stage} smooths labels: give --smooth_head or --smooth_tail > 0 "
            "(or use --second_stage=crt)",
        ),
        (config.shift_lr_factor > 0, f"--shift_lr_factor must be > 0, got {config.shift_lr_factor}"),
        (config.wb_weight_decay >= 0, f"--wb_weight_decay must be >= 0, got {config.wb_weight_decay}"),
        (0 <= config.wb_threshold <= 1, f"--wb_threshold must be in [0, 1], got {config.wb_threshold}"),
        (
            config.holdout_per_class >= 0,
            f"--holdout_per_class must be >= 0 (0: off), got {config.holdout_per_class}",
        ),
        (config.val_per_class >= 0, f"--val_per_class must be >= 0 (0: off), got {config.val_per_class}"),
    ]
    ties = [
        (
            not (config.tau_from and config.holdout_per_class),
            "--tau_from applies held-out taus to a run on the full subset; drop --holdout_per_class",
        ),
        (
            not (config.val_per_class and config.holdout_per_class),
            "--val_per_class and --holdout_per_class are two ways to select tau on a validation split; "
            "use one",
        ),
        (
            config.second_stage != "wb" or config.resolved_classifier == "linear",
            "--second_stage=wb fine-tunes the trained linear classifier; use --classifier=linear",
        ),
    ]
    return own, ties


def optimisation_checks(config):
    own = [
        (config.epochs >= 1, f"--epochs must be >= 1, got {config.epochs}"),
        (config.batch_size >= 1, f"--batch_size must be >= 1, got {config.batch_size}"),
        (config.learning_rate > 0, f"--learning_rate must be > 0, got {config.learning_rate}"),
        (config.weight_decay >= 0, f"--weight_decay must be >= 0, got {config.weight_decay}"),
        (config.sam_rho >= 0, f"--sam_rho must be >= 0 (0: off), got {config.sam_rho}"),
        (
            config.sam_tail_threshold >= 1,
            f"--sam_tail_threshold must be >= 1, got {config.sam_tail_threshold}",
        ),
        (config.max_norm >= 0, f"--max_norm must be >= 0 (0: off), got {config.max_norm}"),
        (config.warmup_epochs >= 0, f"--warmup_epochs must be >= 0, got {config.warmup_epochs}"),
        (config.steps_per_epoch >= 0, f"--steps_per_epoch must be >= 0, got {config.steps_per_epoch}"),
        (config.eval_per_class >= 0, f"--eval_per_class must be >= 0 (0: all), got {config.eval_per_class}"),
    ]
    ties = [
        (
            config.lr_schedule != "cosine" or config.warmup_epochs < config.epochs,
            f"--lr_schedule=cosine needs --warmup_epochs < --epochs ({config.epochs}), "
            f"got {config.warmup_epochs}",
        ),
        (
            len(config.decay_epochs) == len(config.decay_multipliers),
            f"--decay_epochs {list(config.decay_epochs)} and --decay_multipliers "
            f"{list(config.decay_multipliers)} need the same length",
        ),
        (
            all(b > a for a, b in itertools.pairwise(config.decay_epochs)),
            f"--decay_epochs must strictly increase, got {list(config.decay_epochs)}",
        ),
        (
            config.sam_classes == "all" or config.sam_rho > 0,
            "--sam_classes=tail chooses what SAM flattens; give --sam_rho > 0 too (e.g. 0.05)",
        ),
        (
            not config.max_norm or config.resolved_classifier == "linear",
            f"--max_norm constrains the linear classifier's weights; got --classifier="
            f"{config.resolved_classifier} (use --classifier=linear, or drop --max_norm)",
        ),
    ]
    return own, ties


def run_checks(config):
    own = [
        (
            config.eval_every >= 1 and config.checkpoint_every >= 1,
            "--eval_every and --checkpoint_every must be >= 1",
        ),
        (config.stats_every >= 0, f"--stats_every must be >= 0 (0: off), got {config.stats_every}"),
    ]
    return own, []


def hardware_checks(config):
    own = [
        (
            valid_profile_batch(config.profile_batch),
            f"--profile_batch takes two step numbers a,b with 1 <= a <= b (e.g. 10,20), "
            f"got {config.profile_batch!r}",
        ),
    ]
    ties = [
        (
            not (config.mixed_precision and config.precision != "auto"),
            f"--mixed_precision is the old spelling of --precision; drop it and keep "
            f"--precision={config.precision}",
        ),
        (
            not (config.mixes_batches and config.strategy == "multi_worker"),
            "--mixup_alpha/--cutmix_alpha give soft labels, which the training loop of "
            "--strategy=multi_worker does not take; use --strategy=auto or mirrored",
        ),
    ]
    return own, ties


def float_values(config):
    """(flag name, value) of every float field, one pair per value of a list of floats."""
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if field.type == "float":
            yield field.name, value
        elif field.type == "tuple[float, ...]":
            yield from ((field.name, v) for v in value)


def valid_profile_batch(value: str) -> bool:
    if not value:
        return True
    parts = value.split(",")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        return False
    first, last = (int(p) for p in parts)
    return 1 <= first <= last
