"""The training objective a Config asks for: the --loss object and the callbacks that move its
scheduled values (CDT's gamma, DRW's class weights) and the pipeline's mixing probability.

Every schedulable value lives in a variable that a `VariableSchedule` callback assigns at each epoch's
start, never in a Python attribute frozen into the compiled step.
"""

from __future__ import annotations

import keras

from cdt_tf import class_stats, losses, schedules
from cdt_tf.callbacks import VariableSchedule
from cdt_tf.config import Config


def build_loss(config: Config, class_counts) -> keras.losses.Loss:
    """The --loss objective. With DRW its class weights start at 1 (see `loss_schedules`).

    Every loss takes --prior_tau (the training logits get tau * log pi_c added; `loss_base`).
    """
    common = {"weight_reduction": config.class_weight_reduction, "prior_tau": config.prior_tau}
    if config.drw_epoch:
        common["class_weights"] = [1.0] * len(class_counts)
    return LOSS_BUILDERS[config.loss](config, class_counts, common)


def _cross_entropy(config: Config, class_counts, common: dict) -> keras.losses.Loss:
    # Keras' sparse CE takes no soft labels nor prior: else the equal WeightedCrossEntropy (weights 1).
    if not config.drw_epoch and not config.mixes_batches and not config.prior_tau:
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    return losses.WeightedCrossEntropy(class_counts, **common)


# --loss name -> (config, N_c, the class-weight arguments every class-weighted loss takes) -> loss.
LOSS_BUILDERS = {
    "ce": _cross_entropy,
    "cdt": lambda config, counts, common: losses.CDTLoss(counts, _initial_gamma(config), **common),
    "reweight": lambda config, counts, common: losses.ReweightedCrossEntropy(
        counts, _initial_gamma(config), **common
    ),
    "focal": lambda config, counts, common: losses.FocalLoss(counts, config.focal_gamma, **common),
    "cb": lambda config, counts, common: losses.ClassBalancedLoss(
        counts, config.cb_beta, config.focal_gamma if config.cb_loss == "focal" else 0.0, **common
    ),
    "ldam": lambda config, counts, common: losses.LDAMLoss(
        counts, config.ldam_max_margin, config.ldam_scale, **common
    ),
    "la": lambda config, counts, common: losses.LogitAdjustedLoss(counts, config.la_tau, **common),
}


def _initial_gamma(config: Config) -> float:
    return schedules.gamma_at(0, config.gamma, config.gamma_schedule, config.gamma_epoch)


def loss_schedules(config: Config, loss, class_counts) -> list[keras.callbacks.Callback]:
    """Callbacks that move the loss's gamma (--gamma_schedule) and class weights (--drw_epoch)."""
    callbacks = []
    if config.gamma_schedule != "constant":
        callbacks.append(
            VariableSchedule(
                loss.gamma,
                lambda epoch: schedules.gamma_at(
                    epoch, config.gamma, config.gamma_schedule, config.gamma_epoch
                ),
            )
        )
    if config.drw_epoch:
        weights = class_stats.effective_number_weights(class_counts, config.cb_beta).tolist()
        callbacks.append(
            VariableSchedule(
                loss.class_weights,
                lambda epoch: schedules.deferred_weights_at(epoch, weights, config.drw_epoch),
                log_name="drw",
                log_value=lambda value: float(any(w != 1.0 for w in value)),
            )
        )
    return callbacks


def mix_schedule(config: Config, mix_prob) -> VariableSchedule:
    """The callback that sets the pipeline's mixing probability (a tf.Variable it reads per batch) at
    each epoch's start: --mix_schedule's `schedules.mix_prob_at`, logged as metrics.jsonl's mix_prob."""
    return VariableSchedule(
        mix_prob,
        lambda epoch: schedules.mix_prob_at(
            epoch, config.mix_prob, config.mix_schedule, config.mix_until_epoch, config.mix_ramp_start
        ),
        log_name="mix_prob",
    )
