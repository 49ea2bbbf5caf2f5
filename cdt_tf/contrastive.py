"""A balanced supervised-contrastive branch beside the classifier: --contrastive_weight (BCL).

Zhu et al., "Balanced Contrastive Learning for Long-Tailed Visual Recognition" (CVPR 2022), train the
classifier's loss together with a supervised-contrastive loss on a projection of the same features,
made balanced in two ways. With z_n the L2-normalised projections of the batch's images (each image
seen in two augmented views), c_k the L2-normalised projections of the classifier's class weight
vectors w_k (a second head of the same shape), and T the temperature, each anchor i contrasts against
A(i), every other projection of the batch and every class center:

  L_i = -1/|P(i)| sum_{p in P(i)} log( exp(z_i.z_p / T) / D_i ),
  D_i = sum_k 1/|A_k(i)| sum_{j in A_k(i)} exp(z_i.z_j / T),

where A_k(i) are the members of class k in A(i) and P(i) = A_{y_i}(i), the anchor's other view, the
other images of its class and its class center. Class-averaging (the 1/|A_k(i)|) keeps the head
classes from filling the denominator; class-complement (the centers c_k in A(i)) puts every class in
every batch. L_BCL is the mean of L_i over the batch's 2B anchors, and a step minimises

  L = L_cls + beta L_BCL

with L_cls the run's --loss (CDT, logit-adjusted, ...; every loss composes) on the logits of all 2B
views, beta = --contrastive_weight, T = --contrastive_temperature.

The heads. projection: Dense(D)-BN-ReLU-Dense(d) of the D penultimate features; centers: a second
MLP of the same shape applied to the classifier's kernel, one row per class (BCL's head_fc; with
--classifier=cosine its unnormalised weight vectors). d = --contrastive_dim. Both heads train with the
network and are dropped after training: model.keras, the export and every report hold the plain
network, which predicts with the argmax of its logits as before.

What differs from the authors' code (FlamieZhu/Balanced-Contrastive-Learning, read, not copied):
they pass three views a step (one with the classifier's augmentation for L_cls, two for the
contrastive branch, often with stronger augmentation); here the pipeline gives two views of each
image with the run's augmentation (`input_pipeline`'s views), and L_cls takes both: twice the images
of a plain step, against three times for theirs. The loss itself is theirs term for term (their
class-averaging weight count[y_j] - [y_j = y_i] is |A_{y_j}(i)|).

How it meets the rest of a run:
- The training pipeline yields 2B images (the two views of each of B images, next to each other)
  with their labels repeated: to Keras an ordinary batch, so metrics count both views and batch norm
  normalises over the 2B.
- Several replicas (MirroredStrategy): each replica contrasts the views of its slice of the batch
  (both views of an image land on the same replica), as the authors' DistributedDataParallel runs do;
  the replicas' losses are averaged as fit averages any loss.
- Mixed precision: the heads run in the run's policy; the loss is taken in float32.
- Not with MixUp/CutMix (soft labels leave positives undefined), SAM (its own step) or
  --strategy=multi_worker (its custom loop): Config.validate says so.
"""

from __future__ import annotations

import keras
import tensorflow as tf

# The projection width of supervised contrastive learning on CIFAR (Khosla et al. 2020; BCL's ImageNet
# runs project ResNet-50's 2048 features to 1024) and the temperature of BCL's loss as its authors
# define it (their ImageNet runs pass 0.07).
DEFAULT_DIM = 128
DEFAULT_TEMPERATURE = 0.1


def balanced_contrastive_loss(embeddings, labels, centers, temperature: float) -> tf.Tensor:
    """L_BCL (module docstring): float32 scalar, the mean of `anchor_losses` over the anchors."""
    return tf.reduce_mean(anchor_losses(embeddings, labels, centers, temperature))


def anchor_losses(embeddings, labels, centers, temperature: float) -> tf.Tensor:
    """L_i of every anchor i (module docstring): float32 [N].

    Args:
      embeddings: float [N, d], L2-normalised projections of the batch's N images (both views).
      labels: int [N] (or [N, 1]) class indices of the images.
      centers: float [C, d], L2-normalised projections of the C class weight vectors.
      temperature: T > 0.
    """
    embeddings = tf.cast(embeddings, tf.float32)
    centers = tf.cast(centers, tf.float32)
    labels = tf.reshape(tf.cast(labels, tf.int32), [-1])
    num_images, num_classes = tf.shape(embeddings)[0], tf.shape(centers)[0]
    contrast = tf.concat([embeddings, centers], axis=0)  # [N + C, d]
    contrast_labels = tf.concat([labels, tf.range(num_classes)], axis=0)
    logits = tf.matmul(embeddings, contrast, transpose_b=True) / temperature  # [N, N + C]
    logits -= tf.stop_gradient(tf.reduce_max(logits, axis=1, keepdims=True))
    not_self = 1.0 - tf.one_hot(tf.range(num_images), num_images + num_classes)
    same_class = tf.cast(tf.equal(labels[:, None], contrast_labels[None, :]), tf.float32)
    positives = same_class * not_self
    # |A_k(i)| for the class k of each column: the class's members in the batch and its center,
    # less the anchor itself when it is of that class.
    members = tf.math.bincount(contrast_labels, minlength=num_classes, maxlength=num_classes)
    class_size = tf.cast(tf.gather(members, contrast_labels), tf.float32)[None, :] - same_class
    denominator = tf.reduce_sum(tf.exp(logits) * not_self / tf.maximum(class_size, 1.0), axis=1)
    log_prob = logits - tf.math.log(denominator)[:, None]
    # Every anchor has a positive: its class center.
    return -tf.reduce_sum(positives * log_prob, axis=1) / tf.reduce_sum(positives, axis=1)


def mlp_head(width: int, dim: int, name: str) -> keras.Sequential:
    """Dense(width)-BN-ReLU-Dense(dim), built for inputs of `width` features."""
    head = keras.Sequential(
        [
            keras.layers.Dense(width, name=f"{name}_hidden"),
            keras.layers.BatchNormalization(name=f"{name}_bn"),
            keras.layers.ReLU(name=f"{name}_relu"),
            keras.layers.Dense(dim, name=f"{name}_out"),
        ],
        name=name,
    )
    head.build((None, width))
    return head


class ContrastiveModel(keras.Model):
    """A functional Keras model whose `fit` adds the balanced contrastive loss (module docstring).

    Build it over an existing functional model's graph with `wrap`: it shares that model's layers and
    weights (so callbacks that probe the network by its "classifier" layer work on it) and adds the
    two heads; `plain_model` gives the ordinary network back for saving. Compile it with a
    `keras.losses.Loss` whose `call` gives per-example losses (every loss of cdt_tf) and feed it
    batches of both views of each image (sparse labels).

    Args:
      *args, **kwargs: a functional model's (inputs, outputs, name).
      weight: beta, the contrastive loss's weight, > 0.
      temperature: T, > 0.
      dim: d, the width of the projections.
    """

    def __init__(
        self,
        *args,
        weight: float = 1.0,
        temperature: float = DEFAULT_TEMPERATURE,
        dim: int = DEFAULT_DIM,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.weight = float(weight)
        self.temperature = float(temperature)
        classifier = self.get_layer("classifier")
        width = classifier.input.shape[-1]
        # The same graph with the features as a second output (its layers are this model's).
        self.encoder = keras.Model(self.input, [classifier.input, self.output], name="encoder")
        self.projection = mlp_head(width, dim, "projection")
        self.center_projection = mlp_head(width, dim, "center_projection")
        self.contrastive_tracker = keras.metrics.Mean(name="contrastive_loss")

    @classmethod
    def wrap(cls, model: keras.Model, weight: float, temperature: float, dim: int) -> ContrastiveModel:
        """`model`'s graph (its layers and weights) as a ContrastiveModel with new heads."""
        return cls(
            model.input, model.output, name=model.name, weight=weight, temperature=temperature, dim=dim
        )

    def contrastive_loss(self, features, labels, training: bool = True) -> tf.Tensor:
        """L_BCL of penultimate features [N, D] with labels [N], through both heads."""
        embeddings = tf.math.l2_normalize(
            tf.cast(self.projection(features, training=training), tf.float32), 1
        )
        kernel = self.get_layer("classifier").kernel  # [D, C]: one row per class after the transpose.
        centers = self.center_projection(tf.transpose(kernel), training=training)
        centers = tf.math.l2_normalize(tf.cast(centers, tf.float32), 1)
        return balanced_contrastive_loss(embeddings, labels, centers, self.temperature)

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        if not isinstance(self.loss, keras.losses.Loss):
            raise ValueError(f"ContrastiveModel needs a keras.losses.Loss, got {self.loss!r}")
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        with tf.GradientTape() as tape:
            features, y_pred = self.encoder(x, training=True)
            per_example = tf.cast(self.loss.call(y, y_pred), tf.float32)
            if sample_weight is not None:
                per_example = per_example * tf.cast(tf.reshape(sample_weight, [-1]), tf.float32)
            contrastive = self.contrastive_loss(features, y)
            extra = tf.add_n([tf.cast(r, tf.float32) for r in self.losses]) if self.losses else 0.0
            loss = tf.reduce_mean(per_example) + self.weight * contrastive + extra
            # As Keras' fit: each replica's loss divided by the replicas (their gradients are summed).
            scaled = self.optimizer.scale_loss(loss / replicas)
        gradients = tape.gradient(scaled, self.trainable_variables)
        self.optimizer.apply(gradients, self.trainable_variables)
        self.contrastive_tracker.update_state(contrastive)
        for metric in self.metrics:
            if metric.name == "loss":
                metric.update_state(loss, sample_weight=tf.shape(y_pred)[0])
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    @property
    def metrics(self):
        return [*super().metrics, self.contrastive_tracker]

    def plain_model(self) -> keras.Model:
        """The network without the heads (same graph, layers and weights), compiled as this one with
        a new optimizer of the same configuration, built for the network's weights and at this one's
        step count (so a learning-rate schedule reads on): what model.keras saves, loadable without
        this class. The momentum is not carried over (this optimizer's also covers the heads)."""
        model = keras.Model(self.input, self.output, name=self.name)
        model.compile(**keras.saving.deserialize_keras_object(self.get_compile_config()))
        model.optimizer.build(model.trainable_variables)
        model.optimizer.iterations.assign(self.optimizer.iterations)
        return model
