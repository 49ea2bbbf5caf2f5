"""--max_norm: a MaxNorm constraint on the linear classifier's class weight vectors (weight balancing).

Alshammari et al., "Long-Tailed Recognition via Weight Balancing" (CVPR 2022), balance the norms of the
per-class weights w_c of the last layer, which long-tailed training grows with N_c, by two means: a
tuned weight decay (--weight_decay here) and a MaxNorm constraint, which after every optimizer step
rescales each w_c whose norm exceeds the threshold t back onto the ball ||w_c||_2 <= t:

  w_c <- w_c * min(||w_c||_2, t) / ||w_c||_2     (keras.constraints.MaxNorm(t, axis=0), kernel [D, C])

Only the linear classifier (a Dense kernel) takes it: the cosine classifier normalises w_c anyway.
"""

from __future__ import annotations

import keras


def constrain_classifier(model: keras.Model, max_value: float) -> keras.Model:
    """Puts MaxNorm(max_value, axis=0) on the "classifier" Dense kernel of `model`; returns `model`.

    Set on the layer (so that model.keras records it) and on its built kernel variable (which the
    optimizer reads: it applies a variable's constraint after each update). Raises ValueError when
    the classifier is not a Dense layer.
    """
    layer = model.get_layer("classifier")
    if not isinstance(layer, keras.layers.Dense):
        raise ValueError(
            f"--max_norm constrains a linear (Dense) classifier; this model's is {type(layer).__name__}"
        )
    constraint = keras.constraints.MaxNorm(max_value, axis=0)
    layer.kernel_constraint = constraint
    layer.kernel.constraint = constraint
    return model
