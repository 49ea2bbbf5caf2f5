"""Training augmentations beyond pad-crop-flip: RandAugment and Cutout per image, MixUp and CutMix per batch.

Each is a function of its inputs and an int [2] stateless seed, the same eagerly and inside
`Dataset.map`. `augment_dataset` adds the ones a run asks for to a batched training pipeline
(`input_pipeline`'s, after its pad-crop-flip):

  (uint8 [B, H, W, 3], int [B]) batches -> unbatch -> RandAugment -> Cutout   (one seed per image)
    -> batch -> MixUp or CutMix with probability mix_prob                      (one seed per batch)
    -> (float32 [B, H, W, 3] images, float32 [B, C] soft labels) -> prefetch

Seeds come from seeded `tf.data.Dataset.random` streams zipped with the examples (as
`input_pipeline.pad_crop_flip` does), so the output depends only on --seed, not on how parallel
map calls are scheduled. With mixing on, every batch's labels are float one-hot rows mixed within
the batch (a batch left unmixed by mix_prob keeps one-hot rows); the losses take them as soft labels.
"""

from __future__ import annotations

import keras
import tensorflow as tf

# Offsets of the per-image and per-batch random streams from --seed (the crop-flip stream uses
# --seed itself and the class-balanced sampler --seed + 7919): independent draws from one seed.
IMAGE_SEED_OFFSET = 104_729
BATCH_SEED_OFFSET = 1_299_709


# ----------------------------------------------------------------------------- per image


def cutout(image, seed, side: int):
    """Zeros a side x side square at a random position (DeVries & Taylor 2017), clipped at the borders.

    The square's centre is uniform over the image, its top-left corner at centre - side // 2, so a
    square near a border loses the part outside the image (as the reference code). Zero is black on
    the uint8 images here (the reference erases the normalised tensor, i.e. fills the mean).

    Args:
      image: [H, W, C] (any dtype).
      seed: int [2], a stateless RNG seed.
      side: the square's side in pixels (> 0).

    Returns:
      [H, W, C], the dtype of image.
    """
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    centre = tf.random.stateless_uniform([2], seed, minval=0, maxval=tf.int32.max, dtype=tf.int32)
    centre_y, centre_x = centre[0] % height, centre[1] % width
    top, left = centre_y - side // 2, centre_x - side // 2
    rows, cols = tf.range(height)[:, None], tf.range(width)[None, :]
    inside = (rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side)
    return tf.where(inside[:, :, None], tf.zeros_like(image), image)


class _SeedState:
    """One image's seed and how many draws were made from it (a plain object: Keras does not track it)."""

    def __init__(self, seed):
        self.seed, self.draws = seed, 0


class _ElementSeeds(keras.random.SeedGenerator):
    """Stands in for a layer's SeedGenerator: its draws are stateless functions of one image's seed.

    `keras.layers.RandAugment` draws all of its randomness (which ops, and each op's
    parameters) through `draw_seed(<its SeedGenerator>)`, i.e. from one `tf.Variable` that
    steps at every draw. Inside a parallel `Dataset.map` the order of those steps across
    images is not fixed, so the output would not be reproducible for a seed; here draw k of an
    image is `stateless_fold_in(image_seed, k)` instead. No state variable is made
    (`SeedGenerator.__init__` is not called).
    """

    def __init__(self, state: _SeedState):
        self._state = state  # Shared by every stand-in of one call, so no two draws repeat.

    def next(self, ordered=True):
        draw = self._state.draws
        self._state.draws += 1  # A Python counter: each draw of the traced graph gets its own constant.
        return tf.random.experimental.stateless_fold_in(self._state.seed, draw)


class SeededRandAugment(keras.layers.RandAugment):
    """`keras.layers.RandAugment` whose randomness comes from a seed per call (see `_ElementSeeds`).

    Keras' RandAugment is not seedable per element: it holds one SeedGenerator (a variable) for
    the whole layer. This subclass overrides `_get_seed_generator` (the one place RandAugment and
    the ops it picks get their seeds from) to draw from the seed given to `augment` instead, so
    an image's result depends only on its seed, eagerly and in parallel `Dataset.map` calls.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._element_state = None  # Set only while `augment` traces or runs.

    def _get_seed_generator(self, backend=None):
        if self._element_state is None:
            raise RuntimeError("call SeededRandAugment.augment(image, seed), not the layer itself")
        return _ElementSeeds(self._element_state)

    def augment(self, image, seed):
        """RandAugment of one image [H, W, C] on the 0..255 range with a stateless seed int [2]: float32."""
        self._element_state = _SeedState(seed)
        try:
            return self(tf.cast(image, tf.float32), training=True)
        finally:
            self._element_state = None


def build_rand_augment(magnitude: float, num_ops: int = 2) -> SeededRandAugment:
    """Keras' RandAugment (0..255 images) with factor = magnitude in (0, 1] and num_ops ops per image.

    Keras samples each op's strength uniformly in [0, magnitude] (its `factor`; RandAugment's
    M = 9 of 30 is about 0.3). Computed in float32 whatever the global dtype policy.
    """
    if not 0 < magnitude <= 1:
        raise ValueError(f"RandAugment magnitude must be in (0, 1], got {magnitude}")
    if num_ops < 1:
        raise ValueError(f"RandAugment num_ops must be >= 1, got {num_ops}")
    return SeededRandAugment(value_range=(0, 255), num_ops=num_ops, factor=magnitude, dtype="float32")


def rand_augment(image, seed, layer: SeededRandAugment):
    """RandAugment of a uint8 image [H, W, C] with a stateless seed int [2]: uint8 [H, W, C] (rounded)."""
    augmented = layer.augment(image, seed)
    return tf.cast(tf.clip_by_value(tf.round(augmented), 0.0, 255.0), tf.uint8)


# ----------------------------------------------------------------------------- per batch
# Keras' MixUp and CutMix layers are not used: like RandAugment they draw from a SeedGenerator
# variable (not reproducible in parallel map calls, and no per-batch seed can be given), and
# they draw one mixing weight per example, where the reference mixup and CutMix codes draw one
# lam per batch. The functions below follow the reference codes with stateless ops.


def sample_beta(alpha: float, seed):
    """lam ~ Beta(alpha, alpha), a float32 scalar, from a stateless seed int [2].

    X / (X + Y) with X, Y ~ Gamma(alpha) drawn in float64 (small alphas give tiny gammas);
    1/2 in the (vanishingly rare) case that both underflow to 0.
    """
    x_seed, y_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    x = tf.random.stateless_gamma([], x_seed, alpha, dtype=tf.float64)
    y = tf.random.stateless_gamma([], y_seed, alpha, dtype=tf.float64)
    total = x + y
    return tf.cast(tf.where(total > 0, x / tf.where(total > 0, total, 1.0), 0.5), tf.float32)


def mixup(images, targets, partner, lam):
    """MixUp (Zhang et al. 2018): lam x + (1 - lam) x[partner], labels likewise.

    Args:
      images: float32 [B, H, W, C].
      targets: float32 [B, K], one-hot or soft labels.
      partner: int [B], the example each one is mixed with (a permutation of the batch).
      lam: float32 scalar in [0, 1], the weight of the example itself.

    Returns:
      (float32 [B, H, W, C], float32 [B, K]).
    """
    mixed_images = lam * images + (1.0 - lam) * tf.gather(images, partner)
    return mixed_images, lam * targets + (1.0 - lam) * tf.gather(targets, partner)


def cutmix_box(height, width, lam, seed):
    """The CutMix box (the reference `rand_bbox`): (top, bottom, left, right), int32 scalars.

    Side ratio sqrt(1 - lam) of each dimension (truncated to pixels), centre uniform over the
    image, clipped at the borders.
    """
    ratio = tf.sqrt(1.0 - lam)
    cut_height = tf.cast(tf.cast(height, tf.float32) * ratio, tf.int32)
    cut_width = tf.cast(tf.cast(width, tf.float32) * ratio, tf.int32)
    centre = tf.random.stateless_uniform([2], seed, minval=0, maxval=tf.int32.max, dtype=tf.int32)
    centre_y, centre_x = centre[0] % height, centre[1] % width
    top = tf.clip_by_value(centre_y - cut_height // 2, 0, height)
    bottom = tf.clip_by_value(centre_y + cut_height // 2, 0, height)
    left = tf.clip_by_value(centre_x - cut_width // 2, 0, width)
    right = tf.clip_by_value(centre_x + cut_width // 2, 0, width)
    return top, bottom, left, right


def cutmix(images, targets, partner, lam, seed):
    """CutMix (Yun et al. 2019): one box of every image replaced by its partner's, labels by area.

    The box comes from `cutmix_box(lam)`; the labels mix with the box's actual area share (after
    clipping), lam' = 1 - box area / image area, as the reference code.

    Args:
      images: float32 [B, H, W, C].
      targets: float32 [B, K].
      partner: int [B], a permutation of the batch.
      lam: float32 scalar, the drawn weight.
      seed: int [2], a stateless seed for the box's position.

    Returns:
      (float32 [B, H, W, C], float32 [B, K]).
    """
    shape = tf.shape(images)
    height, width = shape[1], shape[2]
    top, bottom, left, right = cutmix_box(height, width, lam, seed)
    rows, cols = tf.range(height)[:, None], tf.range(width)[None, :]
    box = (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)
    mixed_images = tf.where(box[None, :, :, None], tf.gather(images, partner), images)
    area = tf.cast((bottom - top) * (right - left), tf.float32)
    kept = 1.0 - area / tf.cast(height * width, tf.float32)
    return mixed_images, kept * targets + (1.0 - kept) * tf.gather(targets, partner)


def mix_batch(
    images, labels, seed, num_classes: int, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0, mix_prob=1.0
):
    """MixUp or CutMix of one batch with probability mix_prob, labels as float rows.

    With both alphas > 0 each mixed batch picks MixUp or CutMix with probability 1/2. One lam
    ~ Beta(alpha, alpha) and one random pairing (a permutation) per batch, as the reference codes.

    Args:
      images: [B, H, W, C] on the 0..255 range (any real or integer dtype).
      labels: int [B] class indices, or float [B, num_classes] label vectors.
      seed: int [2], a stateless seed for this batch.
      num_classes: C.
      mixup_alpha, cutmix_alpha: Beta parameters (0: that method is off).
      mix_prob: probability that the batch is mixed.

    Returns:
      (float32 [B, H, W, C], float32 [B, C]); rows of an unmixed batch are one-hot.
    """
    images = tf.cast(images, tf.float32)
    labels = tf.convert_to_tensor(labels)
    if labels.shape.rank == 1:
        targets = tf.one_hot(tf.cast(labels, tf.int32), num_classes, dtype=tf.float32)
    else:
        targets = tf.cast(labels, tf.float32)
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        return images, targets
    apply_seed, choice_seed, pair_seed, lam_seed, box_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 5)
    )
    partner = tf.argsort(tf.random.stateless_uniform([tf.shape(images)[0]], pair_seed))

    def with_mixup():
        return mixup(images, targets, partner, sample_beta(mixup_alpha, lam_seed))

    def with_cutmix():
        return cutmix(images, targets, partner, sample_beta(cutmix_alpha, lam_seed), box_seed)

    def mixed():
        if mixup_alpha > 0 and cutmix_alpha > 0:
            return tf.cond(tf.random.stateless_uniform([], choice_seed) < 0.5, with_mixup, with_cutmix)
        return with_mixup() if mixup_alpha > 0 else with_cutmix()

    apply = tf.random.stateless_uniform([], apply_seed) < mix_prob
    return tf.cond(apply, mixed, lambda: (images, targets))


# ----------------------------------------------------------------------------- pipelines


def _seeds(seed: int) -> tf.data.Dataset:
    """An endless stream of int64 [2] stateless seeds, drawn afresh each epoch, reproducible for seed."""
    return tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)


def augment_dataset(
    dataset: tf.data.Dataset,
    num_classes: int,
    batch_size: int,
    seed: int,
    randaugment_magnitude: float = 0.0,
    randaugment_ops: int = 2,
    cutout_side: int = 0,
    mixup_alpha: float = 0.0,
    cutmix_alpha: float = 0.0,
    mix_prob: float = 1.0,
) -> tf.data.Dataset:
    """Adds RandAugment, Cutout and MixUp/CutMix to a batched training pipeline (module docstring).

    Args:
      dataset: (uint8 [B, H, W, 3], int [B]) batches of exactly batch_size (drop_remainder).
      num_classes: C, the width of the soft labels.
      batch_size: B.
      seed: the run's seed.
      randaugment_magnitude: Keras RandAugment factor in (0, 1] (0: off); randaugment_ops ops per image.
      cutout_side: side of the erased square (0: off).
      mixup_alpha, cutmix_alpha, mix_prob: see `mix_batch` (both alphas 0: no mixing).

    Returns:
      The dataset itself when every option is off; else batches of (uint8 [B, H, W, 3], int [B])
      without mixing, or (float32 [B, H, W, 3], float32 [B, C]) with it.
    """
    per_image = randaugment_magnitude > 0 or cutout_side > 0
    mixing = mixup_alpha > 0 or cutmix_alpha > 0
    if not (per_image or mixing):
        return dataset
    if per_image:
        layer = (
            build_rand_augment(randaugment_magnitude, randaugment_ops) if randaugment_magnitude > 0 else None
        )

        def augment_image(example, image_seed):
            image, label = example
            rand_seed, cutout_seed = tf.unstack(tf.random.experimental.stateless_split(image_seed, 2))
            if layer is not None:
                image = rand_augment(image, rand_seed, layer)
            if cutout_side > 0:
                image = cutout(image, cutout_seed, cutout_side)
            return image, label

        # Per image, after pad-crop-flip (already applied per image by input_pipeline), so the
        # batches are taken apart and rebuilt with the same size.
        dataset = tf.data.Dataset.zip((dataset.unbatch(), _seeds(seed + IMAGE_SEED_OFFSET)))
        dataset = dataset.map(augment_image, num_parallel_calls=tf.data.AUTOTUNE)
        dataset = dataset.batch(batch_size, drop_remainder=True)
    if mixing:
        # After batching: mixing pairs examples of one batch.
        dataset = tf.data.Dataset.zip((dataset, _seeds(seed + BATCH_SEED_OFFSET))).map(
            lambda batch, batch_seed: mix_batch(
                batch[0], batch[1], batch_seed, num_classes, mixup_alpha, cutmix_alpha, mix_prob
            ),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    return dataset.prefetch(tf.data.AUTOTUNE)
