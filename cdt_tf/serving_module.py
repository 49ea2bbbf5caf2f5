"""The graph cdt_tf.export saves: a tf.Module with the network, the calibration and the class names,
and the three serving signatures (their inputs, outputs and checks are described in `cdt_tf.export`).

TensorFlow is imported inside the functions, so that `cdt_tf.export`'s command line can refuse a bad
run directory before TensorFlow loads.
"""

from __future__ import annotations

from cdt_tf.errors import UserError


def build_serving_module(model, class_counts, class_names_path: str, tau: float, calibration: str = "nc_tau"):
    """A tf.Module holding the network, the calibration layer and the class-name table, with 3 signatures.

    Args:
      model: a cdt_tf keras.Model, uint8-range images [B, H, W, 3] -> logits [B, C].
      class_counts: training images per class N_c [C].
      class_names_path: a text file with the C class names, one per line (becomes the asset).
      tau: the calibration's tau in serving_default and serve_image_bytes.
      calibration: a name of catalog.CALIBRATIONS: "nc_tau" (logits / N_c^tau) or
        "logit_adjustment" (logits - tau log pi_c).

    Returns:
      The module; its attributes serving_default, serve_image_bytes and serve_with_tau are
      tf.functions with input signatures (see the module docstring).
    """
    import tensorflow as tf

    from cdt_tf.calibration import CALIBRATION_LAYERS

    height, width, num_classes = _model_shape(model, class_counts)
    if calibration not in CALIBRATION_LAYERS:
        raise UserError(f"unknown calibration {calibration!r}; use one of {', '.join(CALIBRATION_LAYERS)}")
    try:
        calibration = CALIBRATION_LAYERS[calibration](class_counts, tau, name=calibration)
    except ValueError as error:  # A tau outside TAU_RANGE, or unusable class counts.
        raise UserError(str(error)) from None

    class ServingModule(tf.Module):
        def __init__(self):
            super().__init__(name="cdt_serving")
            self.model = model
            self.calibration = calibration
            self.class_names_file = tf.saved_model.Asset(class_names_path)
            self.class_names_table = _class_names_table(self.class_names_file)

        def outputs(self, images, tau=None):
            """The five outputs for uint8 images [B, h, w, 3] (eager or traced)."""
            images = tf.ensure_shape(
                _resize_images(_checked_images(images), height, width), [None, height, width, 3]
            )

            def network():
                return tf.cast(self.model(tf.cast(images, tf.float32), training=False), tf.float32)

            # An empty batch skips the network, whose batch-norm kernels refuse 0 images ("Incompatible
            # shapes"): empty logits [0, C] give empty outputs of every shape and dtype.
            logits = tf.cond(tf.shape(images)[0] > 0, network, lambda: tf.zeros([0, num_classes], tf.float32))
            calibrated = self.calibration(logits) if tau is None else self.calibration(logits, tau=tau)
            classes = tf.argmax(calibrated, axis=-1, output_type=tf.int64)
            return {
                "logits": logits,
                "calibrated_logits": calibrated,
                "probabilities": tf.nn.softmax(calibrated, axis=-1),
                "classes": classes,
                "class_names": self.class_names_table.lookup(classes),
            }

        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
        def serving_default(self, images):
            return self.outputs(images)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
        def serve_image_bytes(self, image_bytes):
            return self.outputs(_decode_image_bytes(image_bytes, height, width))

        @tf.function(
            input_signature=[
                tf.TensorSpec([None, None, None, 3], tf.uint8, name="images"),
                tf.TensorSpec([], tf.float32, name="tau"),
            ]
        )
        def serve_with_tau(self, images, tau):
            return self.outputs(images, _checked_tau(tau))

    return ServingModule()


def _model_shape(model, class_counts) -> tuple[int, int, int]:
    """(H, W, C) of a model of images [B, H, W, 3] -> logits [B, C]; UserError for another model or
    for class counts of another length than C."""
    _, height, width, channels = model.inputs[0].shape
    if channels != 3 or height is None or width is None:
        raise UserError(f"the model takes images of shape {model.inputs[0].shape}; export needs [B, H, W, 3]")
    num_classes = model.outputs[0].shape[-1]
    if len(class_counts) != num_classes:
        raise UserError(f"{len(class_counts)} class counts for a model with {num_classes} classes")
    return height, width, num_classes


def _class_names_table(class_names_file):
    """A lookup table: class index (int64) -> the line of that number in the asset ("" past its end)."""
    import tensorflow as tf

    return tf.lookup.StaticHashTable(
        tf.lookup.TextFileInitializer(
            class_names_file,
            tf.int64,
            tf.lookup.TextFileIndex.LINE_NUMBER,
            tf.string,
            tf.lookup.TextFileIndex.WHOLE_LINE,
        ),
        default_value="",
    )


def _resize_images(images, height: int, width: int):
    """uint8 [..., h, w, 3] -> uint8 [..., H, W, 3], resized as cdt_tf.datasets.decode_images does."""
    import tensorflow as tf

    shape = tf.shape(images)
    same_size = tf.logical_and(tf.equal(shape[-3], height), tf.equal(shape[-2], width))
    resized = lambda: tf.cast(tf.image.resize(images, [height, width]) + 0.5, tf.uint8)  # noqa: E731
    return tf.cond(same_size, lambda: images, resized)


def _checked_images(images):
    """The images, after a run-time check that they are [B, h, w, 3]: an error names the contract."""
    import tensorflow as tf

    # A loaded signature checks a request's dtype but not its shape, so check the channels here,
    # before the network, with a message that names the contract: tf.raw_ops.Shape is the run-time
    # shape (the static one says 3). A missing batch axis is caught too, by the caller's
    # tf.ensure_shape where the rank check is folded away in a traced signature.
    shape = tf.raw_ops.Shape(input=images)
    valid = tf.logical_and(tf.equal(tf.raw_ops.Size(input=shape), 4), tf.equal(shape[-1], 3))
    check = tf.debugging.Assert(
        valid, ["images must be uint8 [batch, height, width, 3] (RGB); got shape", shape], summarize=8
    )
    with tf.control_dependencies([check]):
        return tf.identity(images)


def _decode_image_bytes(image_bytes, height: int, width: int):
    """Image files string [B] -> uint8 images [B, H, W, 3] (each decoded as RGB, then resized)."""
    import tensorflow as tf

    # A scalar string (one image without the batch axis) reaches a loaded signature, which does
    # not check shapes, and would fail inside map_fn ("slice index 0 of dimension 0 out of
    # bounds"): refuse it here, naming the input ("Shape of tensor image_bytes [] is not
    # compatible with expected shape [?]"). tf.ensure_shape is a run-time check that stays in
    # the graph, where a rank assertion is folded away (the static rank is 1).
    image_bytes = tf.ensure_shape(image_bytes, [None])

    def decode(data):
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
        image.set_shape([None, None, 3])
        return _resize_images(image, height, width)

    return tf.map_fn(decode, image_bytes, fn_output_signature=tf.TensorSpec([height, width, 3], tf.uint8))


def _checked_tau(tau):
    """serve_with_tau's tau, after run-time checks that it is finite and in TAU_RANGE."""
    import tensorflow as tf

    from cdt_tf.calibration import TAU_RANGE

    tau = tf.debugging.check_numerics(tau, "tau must be a finite float32 scalar")
    low, high = TAU_RANGE  # The range the calibration layers and `cdt_tf.export --tau` accept.
    check = tf.debugging.Assert(
        tf.logical_and(tau >= low, tau <= high), [f"tau must be in [{low:g}, {high:g}]; got", tau]
    )
    with tf.control_dependencies([check]):
        return tf.identity(tau)
