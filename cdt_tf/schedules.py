"""Learning-rate schedules (warm-up + step decays, the paper's; warm-up + cosine), gamma, DRW and mixing
schedules."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="cdt_tf")
class WarmupStepDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Per-epoch warm-up and step decay, as in the LDAM-DRW reference code.

    For 0-based epoch e = step // steps_per_epoch:
      lr = base * (e + 1) / warmup_epochs           while e < warmup_epochs,
      lr = base * multipliers[k]                    from decay_epochs[k] on (the last reached k),
      lr = base                                     otherwise.
    The CIFAR recipe: base 0.1, warm-up 5, decay_epochs (160, 180), multipliers (0.01, 0.0001).

    Args:
      base_learning_rate: the peak learning rate.
      steps_per_epoch: optimizer steps in one epoch.
      warmup_epochs: epochs of linear warm-up (0 for none).
      decay_epochs: increasing 0-based epochs at which each multiplier starts.
      decay_multipliers: one multiplier of the base rate per decay epoch.
    """

    def __init__(
        self,
        base_learning_rate: float,
        steps_per_epoch: int,
        warmup_epochs: int = 0,
        decay_epochs: Sequence[int] = (),
        decay_multipliers: Sequence[float] = (),
    ):
        if len(decay_epochs) != len(decay_multipliers):
            raise ValueError(
                f"decay_epochs {list(decay_epochs)} and decay_multipliers "
                f"{list(decay_multipliers)} must have the same length"
            )
        epochs = list(decay_epochs)
        if any(later <= earlier for earlier, later in itertools.pairwise(epochs)):
            raise ValueError(f"decay_epochs must strictly increase, got {epochs}")
        if steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
        self.base_learning_rate = float(base_learning_rate)
        self.steps_per_epoch = int(steps_per_epoch)
        self.warmup_epochs = int(warmup_epochs)
        self.decay_epochs = [int(e) for e in decay_epochs]
        self.decay_multipliers = [float(m) for m in decay_multipliers]

    def epoch_learning_rate(self, epoch):
        """The learning rate of a 0-based epoch (a scalar tensor or number)."""
        epoch = ops.cast(epoch, "float32")
        rate = ops.convert_to_tensor(self.base_learning_rate, "float32")
        for start, multiplier in zip(self.decay_epochs, self.decay_multipliers, strict=True):
            rate = ops.where(epoch >= start, self.base_learning_rate * multiplier, rate)
        if self.warmup_epochs > 0:
            warm = self.base_learning_rate * (epoch + 1.0) / self.warmup_epochs
            rate = ops.where(epoch < self.warmup_epochs, warm, rate)
        return rate

    def __call__(self, step):
        return self.epoch_learning_rate(ops.floor_divide(ops.cast(step, "int64"), self.steps_per_epoch))

    def get_config(self):
        return {
            "base_learning_rate": self.base_learning_rate,
            "steps_per_epoch": self.steps_per_epoch,
            "warmup_epochs": self.warmup_epochs,
            "decay_epochs": self.decay_epochs,
            "decay_multipliers": self.decay_multipliers,
        }


@keras.saving.register_keras_serializable(package="cdt_tf")
class WarmupCosineDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Per-step linear warm-up, then cosine decay to 0 at the end of training (--lr_schedule=cosine).

    Computed per optimizer step (not per epoch, unlike `WarmupStepDecay`), so the rate moves
    smoothly within an epoch. With W = warmup_epochs * steps_per_epoch warm-up steps and
    T = epochs * steps_per_epoch steps in all, for 0-based step t:
      lr = base * (t + 1) / W                                     while t < W,
      lr = base * (1 + cos(pi * min(t - W, T - W) / (T - W))) / 2   from t = W on,
    so the rate reaches base at the last warm-up step, base again at step W, and 0 at step T
    (the step after the last one trained; steps beyond T stay at 0).

    Args:
      base_learning_rate: the peak learning rate.
      steps_per_epoch: optimizer steps in one epoch.
      warmup_epochs: epochs of linear warm-up (0 for none), < epochs.
      epochs: epochs of training; the cosine reaches 0 at their end.

    Example:
      schedule = WarmupCosineDecay(0.1, steps_per_epoch=97, warmup_epochs=5, epochs=200)
      optimizer = keras.optimizers.SGD(learning_rate=schedule, momentum=0.9)
    """

    def __init__(
        self, base_learning_rate: float, steps_per_epoch: int, warmup_epochs: int = 0, epochs: int = 1
    ):
        if steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
        if not 0 <= warmup_epochs < epochs:
            raise ValueError(
                f"need 0 <= warmup_epochs < epochs, got warmup_epochs={warmup_epochs}, epochs={epochs}"
            )
        self.base_learning_rate = float(base_learning_rate)
        self.steps_per_epoch = int(steps_per_epoch)
        self.warmup_epochs = int(warmup_epochs)
        self.epochs = int(epochs)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        warmup_steps = float(self.warmup_epochs * self.steps_per_epoch)
        decay_steps = float(self.epochs * self.steps_per_epoch) - warmup_steps
        progress = ops.clip((step - warmup_steps) / decay_steps, 0.0, 1.0)
        rate = 0.5 * self.base_learning_rate * (1.0 + ops.cos(math.pi * progress))
        if self.warmup_epochs > 0:
            rate = ops.where(step < warmup_steps, self.base_learning_rate * (step + 1.0) / warmup_steps, rate)
        return rate

    def get_config(self):
        return {
            "base_learning_rate": self.base_learning_rate,
            "steps_per_epoch": self.steps_per_epoch,
            "warmup_epochs": self.warmup_epochs,
            "epochs": self.epochs,
        }


def gamma_at(epoch: int, gamma: float, schedule: str = "constant", gamma_epoch: int = 0) -> float:
    """The gamma in force during 0-based `epoch` under a --gamma_schedule.

    constant: gamma. step: 0 before gamma_epoch, gamma from it on (the paper's iNaturalist
    recipe: 0 for the first 45 of 90 epochs). linear: gamma * min(1, epoch / gamma_epoch).
    """
    if schedule == "constant":
        return float(gamma)
    if gamma_epoch < 1:
        raise ValueError(f"gamma schedule {schedule!r} needs gamma_epoch >= 1, got {gamma_epoch}")
    if schedule == "step":
        return float(gamma) if epoch >= gamma_epoch else 0.0
    if schedule == "linear":
        return float(gamma) * min(1.0, epoch / gamma_epoch)
    raise ValueError(f"unknown gamma schedule {schedule!r}; use constant, step or linear")


def deferred_weights_at(epoch: int, weights: Sequence[float], drw_epoch: int) -> list[float]:
    """Deferred re-weighting (Cao et al. 2019): all ones before drw_epoch, `weights` from it on."""
    if drw_epoch > 0 and epoch < drw_epoch:
        return [1.0] * len(weights)
    return [float(w) for w in weights]


def mix_prob_at(
    epoch: int, mix_prob: float, schedule: str = "step", until_epoch: int = 0, ramp_start: int = 0
) -> float:
    """The MixUp/CutMix probability in force during 0-based `epoch` under a --mix_schedule.

    step: mix_prob before until_epoch, 0 from it on (Bag of Tricks' fine-tuning after mixup);
    until_epoch 0 mixes every epoch. ramp: from mix_prob to plain batches linearly,

      p(e) = mix_prob * clip((until_epoch - e) / (until_epoch - ramp_start), 0, 1),

    so mix_prob up to ramp_start, mix_prob * (until_epoch - e) / (until_epoch - ramp_start) in
    between, 0 from until_epoch on (needs until_epoch > ramp_start >= 0).
    """
    if schedule == "step":
        return float(mix_prob) if not until_epoch or epoch < until_epoch else 0.0
    if schedule != "ramp":
        raise ValueError(f"unknown mix schedule {schedule!r}; use step or ramp")
    if not until_epoch > ramp_start >= 0:
        raise ValueError(f"a mix ramp needs until_epoch > ramp_start >= 0, got {until_epoch}, {ramp_start}")
    return float(mix_prob) * min(1.0, max(0.0, (until_epoch - epoch) / (until_epoch - ramp_start)))
