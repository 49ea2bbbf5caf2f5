"""SGD with the reference code's (PyTorch's) coupled L2 weight decay."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="cdt_tf")
class CoupledDecaySGD(keras.optimizers.SGD):
    """SGD with momentum whose weight decay is added to the gradient: g <- g + wd * w.

    This is `torch.optim.SGD(weight_decay=wd)`, the optimizer of the paper's
    reference code: the decay goes through the momentum buffer. Keras'
    `weight_decay` argument is decoupled (AdamW-style) and would change the
    recipe, so it is left unset. Decay applies to every trainable variable
    (convolutions, batch-norm scales and shifts, the classifier), as there.

    Args:
      coupled_weight_decay: wd, 2e-4 in the paper's CIFAR recipe.
      **kwargs: as for `keras.optimizers.SGD` (learning_rate, momentum, ...).
    """

    def __init__(self, coupled_weight_decay: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.coupled_weight_decay = float(coupled_weight_decay)

    def update_step(self, gradient, variable, learning_rate):
        if self.coupled_weight_decay:
            gradient = gradient + ops.cast(self.coupled_weight_decay, variable.dtype) * variable
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        return {**super().get_config(), "coupled_weight_decay": self.coupled_weight_decay}
