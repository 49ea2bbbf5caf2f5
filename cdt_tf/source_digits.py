"""--dataset=digits: scikit-learn's bundled 8x8 digits (1,797 images), a `Source` needing no download."""

from __future__ import annotations

import numpy as np

from cdt_tf.data_types import Source, Split

# Digits has no official split: this many images per class, drawn with a fixed
# seed, form the balanced test split; the rest is the training pool.
DIGITS_TEST_PER_CLASS = 50


def digits_source() -> Source:
    from sklearn.datasets import load_digits

    digits = load_digits()
    # 0..16 grey levels -> uint8 RGB, so every model sees 3-channel uint8 images.
    grey = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    images = np.repeat(grey[..., None], 3, axis=-1)
    labels = digits.target.astype(np.int64)
    rng = np.random.default_rng(0)
    test_mask = np.zeros(len(labels), bool)
    for c in range(10):
        members = np.flatnonzero(labels == c)
        test_mask[rng.permutation(members)[:DIGITS_TEST_PER_CLASS]] = True

    def split(mask):
        index = np.flatnonzero(mask)
        return Split(
            labels=labels[index],
            ids=np.array([f"digits:{i}" for i in index]),
            load_images=lambda k, index=index: images[index[k]],
        )

    return Source(
        name="digits",
        class_names=[str(c) for c in range(10)],
        train=split(~test_mask),
        test=split(test_mask),
    )
