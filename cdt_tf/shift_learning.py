r"""MiSLAS's second stage with shift learning on batch normalization (--second_stage=crt_shift|crt_las_shift).

Zhong et al., "Improving Calibration for Long-Tailed Recognition" (MiSLAS, CVPR 2021), section 3.3.
What their code does in stage 2 (github.com/dvlab-research/MiSLAS: train_stage2.py, methods.py,
datasets/sampler.py, config/*/*_stage2_mislas.yaml):

- The stage-1 backbone and classifier are loaded (the classifier is fine-tuned, not re-initialised),
  plus a learnable weight scaling s [C] (LWS, initialised to 1): logits = s * (W f(x) + b).
- With `shift_bn: True` (their CIFAR-100, ImageNet, iNaturalist and Places configs; False in the
  CIFAR-10 ones) the backbone is put in train mode, but its forward runs under torch.no_grad() and
  only the classifier and s are in the optimizer. So no backbone weight is learned, the batch norms'
  affine gamma and beta included: every batch norm normalises each batch by the batch's own mean
  and variance (so the classifier is trained on those features), and its running mean and variance
  follow the class-balanced batches by torch's exponential average (momentum 0.1) for the whole
  stage; evaluation uses these running statistics. That is the "shift": the normalisation moves
  to the class-balanced data, the affine parameters stay (the authors say so in the repository's
  issue #3: "We fix the BN affine parameters (alpha and beta) in Stage-II").
- Batches: 128 (CIFAR) of class-balanced sampling (ClassAwareSampler: the classes in shuffled turns,
  4 images of each in a row), with the stage-1 augmentation (pad-4 random crop and flip); an epoch is
  ceil(N / B) + 1 batches (N the long-tailed training set), 10 epochs.
- No MixUp in stage 2 (`mixup: False` in every stage-2 config).
- Loss: label-aware smoothing (methods.LabelAwareSmoothing: (1 - eps_y) (-log p_y) + eps_y mean_c
  (-log p_c), eps from smooth_head to smooth_tail along the concave curve).
- SGD momentum 0.9, weight decay 2e-4 (CIFAR; coupled, on W, b and s), cosine learning rate per
  epoch lr_e = 0.05 (1 + cos(pi e / E)) for s and lr_factor times that for W and b (CIFAR-10-LT
  rho = 100, 50, 10: 0.5, 0.2, 0.2; CIFAR-100-LT: 0.2, 0.1, 0.1; ImageNet-LT and iNaturalist 0.05).

In formulas, for each batch norm and each class-balanced batch B (m = 0.9 in Keras' convention):

    y = gamma (x - mu_B) / sqrt(var_B + eps) + beta            (gamma, beta fixed)
    mu <- m mu + (1 - m) mu_B,   var <- m var + (1 - m) var_B   (the moving statistics, used at test)
    loss = CE(smoothed target of y_b, s * (W f(x_b) + b))        (W, b, s learned)

What this module implements: exactly that (BN in training mode, batch statistics in the forward,
moving statistics updated with the network's own batch-norm momentum, 0.9 in Keras terms = torch's
0.1, the run's --weight_decay), on class-balanced pad-crop-flip batches of --batch_size (each
example's class uniform, `input_pipeline.class_balanced_indices`), `epochs` of ceil(N / B) steps
(no extra batch), from the run's linear classifier (a cosine classifier's run starts from a new
Glorot-uniform one), with LWS folded into the saved kernel and bias (s_c (w_c f + b_c) is the
linear classifier with column c and b_c scaled by s_c). Label-aware smoothing only in
crt_las_shift; crt_shift uses one-hot targets. --shift_affine=true goes beyond MiSLAS: it also
learns every batch norm's gamma and beta (gradients through the backbone, at the LWS learning
rate), and the weights file then carries them. The network's moving statistics (and affine
parameters) are changed in place, so the caller evaluates and saves the network as this leaves it.

Cost: a training-mode forward pass of every batch (a backward pass too with --shift_affine), 10
epochs of the training set. Measured 2026-12-07 on the CE run of CIFAR-10-LT rho = 100 (ResNet-32,
12,406 images, 97 batches of 128 an epoch; two CPU cores shared with a training run, float32):
14-17 s an epoch, 232 s for the whole stage with loading and evaluation (crt_las on cached
features: 74 s); top-1 65.2 % (the run) -> 72.1 % (crt_las_shift, --smooth_head=0.3), against
71.7 % for crt_las.
"""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np

from cdt_tf import class_stats

EPOCHS = 10  # MiSLAS's stage 2 on every dataset.
LEARNING_RATE = 0.1  # Theirs, for the weight scaling s; W and b take lr_factor times it.


def pad_crop_flip_batches(config, data, sampler: str = "class_balanced"):
    """The classifier data's training stream of (uint8 images [B, ...], int64 labels [B]), repeated.

    --sampler's batches of config.batch_size with --augmentation's pad-crop-flip only: no MixUp,
    CutMix, RandAugment or Cutout, one view of each image (MiSLAS's stage 2 and batch-norm
    re-estimation use plain batches).
    """
    plain = dataclasses.replace(
        config,
        sampler=sampler,
        mixup_alpha=0.0,
        cutmix_alpha=0.0,
        randaugment_magnitude=0.0,
        cutout=0,
        contrastive_weight=0.0,
    )
    return data.train_dataset(plain).repeat()


def train_with_shift(model, config, data, smoothing=None, epochs: int = EPOCHS, lr_factor=0.2, affine=False):
    """MiSLAS's stage 2 with shift learning on `model` (changed in place); returns (kernel, bias, fields).

    Args:
      model: the finished run's keras.Model; its batch norms' moving statistics (and, with affine,
        gamma and beta) end shifted to the class-balanced data.
      config: the run's Config (batch size, weight decay, seed).
      data: the classifier data (`run_data` data).
      smoothing: label-aware smoothing eps_c [C], or None for one-hot targets.
      epochs: epochs of ceil(N / batch size) class-balanced batches.
      lr_factor: the classifier's learning rate over the weight scaling's (MiSLAS's lr_factor).
      affine: also learn the batch norms' gamma and beta (not in MiSLAS).

    Returns:
      kernel [D, C] and bias [C] with the weight scaling folded in, and the record's fields.
    """
    import keras
    import tensorflow as tf

    from cdt_tf.optimizers import CoupledDecaySGD

    keras.utils.set_random_seed(config.seed)
    head, norms = _trainable_variables(model, data.num_classes, affine, config.seed)
    kernel, bias, scale = head
    targets = np.eye(data.num_classes) if smoothing is None else class_stats.smoothed_targets(smoothing)
    targets = tf.constant(targets, tf.float32)
    optimizers = [
        CoupledDecaySGD(coupled_weight_decay=config.weight_decay, learning_rate=rate, momentum=0.9)
        for rate in (lr_factor * LEARNING_RATE, LEARNING_RATE)
    ]
    groups = [[kernel, bias], [scale, *norms]]
    for optimizer, group in zip(optimizers, groups, strict=True):
        optimizer.build(group)
    step = _train_step(model, targets, kernel, bias, scale, optimizers, groups, affine)
    steps = math.ceil(data.size("train") / config.batch_size)
    batches = iter(pad_crop_flip_batches(config, data))
    for epoch in range(epochs):
        rate = 0.5 * LEARNING_RATE * (1.0 + math.cos(math.pi * epoch / epochs))  # Per epoch, as theirs.
        optimizers[0].learning_rate = lr_factor * rate
        optimizers[1].learning_rate = rate
        started = time.monotonic()
        losses = [float(step(*next(batches))) for _ in range(steps)]
        print(
            f"Shift learning: epoch {epoch + 1}/{epochs}, loss {np.mean(losses):.4f}, "
            f"{time.monotonic() - started:.0f} s",
            flush=True,
        )
    scale = keras.ops.convert_to_numpy(scale)
    fields = {
        "sampler": "class_balanced",
        "epochs": epochs,
        "options": {"lr_factor": lr_factor, "affine": affine},
        "bn_stats": "shifted",
        "learned_weight_scaling": [round(float(s), 6) for s in scale],
        "method": (
            "MiSLAS stage 2 with shift learning (Zhong et al. 2021): batch norms in training mode on "
            f"class-balanced pad-crop-flip batches of {config.batch_size}, {steps} steps an epoch; the run's "
            f"classifier (LR {lr_factor * LEARNING_RATE:g}) and a per-class logit scale "
            f"(LR {LEARNING_RATE:g}) trained, SGD 0.9, per-epoch cosine"
            + ("; batch-norm gamma and beta learned too" if affine else "")
        ),
    }
    return keras.ops.convert_to_numpy(kernel) * scale, keras.ops.convert_to_numpy(bias) * scale, fields


def _trainable_variables(model, num_classes: int, affine: bool, seed: int):
    """([kernel, bias, weight scaling], the batch norms' [gamma, beta, ...] when affine, else [])."""
    import keras

    from cdt_tf import models
    from cdt_tf.linear_head import trained_classifier

    kind, kernel, bias = trained_classifier(model)
    if kind != "linear":  # A cosine classifier's kernel is no start for a linear one.
        kernel = keras.ops.convert_to_numpy(keras.initializers.GlorotUniform(seed)(kernel.shape))
        bias = np.zeros(num_classes, np.float32)
    head = [
        keras.Variable(np.asarray(value, np.float32), name=name)
        for name, value in (("kernel", kernel), ("bias", bias), ("scale", np.ones(num_classes)))
    ]
    norms = []
    if affine:
        for layer in models.batch_norm_layers(model):
            norms += [v for v in (layer.gamma, layer.beta) if v is not None]
    return head, norms


def _train_step(model, targets, kernel, bias, scale, optimizers, groups, affine: bool):
    """One compiled update: logits = s * (f(x) @ W + b) on training-mode features, label-(smoothed)
    cross-entropy; gradients reach the backbone only when affine (its gamma and beta)."""
    import tensorflow as tf

    from cdt_tf import models

    extractor = models.feature_extractor(model)
    variables = [v for group in groups for v in group]

    @tf.function
    def step(images, labels):
        images = tf.cast(images, tf.float32)
        # Training mode: each batch norm normalises by this batch and moves its statistics. Without
        # affine the forward stays off the tape, as MiSLAS's torch.no_grad(): no backward through it.
        if not affine:
            features = tf.cast(extractor(images, training=True), tf.float32)
        with tf.GradientTape() as tape:
            if affine:
                features = tf.cast(extractor(images, training=True), tf.float32)
            logits = (tf.matmul(features, kernel) + bias) * scale
            loss = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(tf.gather(targets, labels), logits))
        gradients = tape.gradient(loss, variables)
        optimizers[0].apply(gradients[:2], groups[0])
        optimizers[1].apply(gradients[2:], groups[1])
        return loss

    return step
