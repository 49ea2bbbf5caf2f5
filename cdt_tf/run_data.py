"""The data of one run: its training subset of a source, its held-out or validation split, their pipelines.

`load(config)` lists the source, draws the subset (and the held-out or validation split) with the run's
seed, and returns a `RunData` whose pipelines are the same whether the source is decoded into memory
(CIFAR, digits, image folders, Tiny-ImageNet) or read from files while training (iNaturalist): training,
post-hoc, cRT, analysis and export all take their data from here, so every command works on every
dataset. This module is the one place that tells the two kinds of source apart.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re

import numpy as np
import tensorflow as tf

from cdt_tf import augment, catalog, class_stats, datasets, input_pipeline
from cdt_tf.config import Config
from cdt_tf.errors import EvaluationDataError, TrainingError, UserError

SPLITS = ("train", "holdout", "validation", "test")
# class_stats.sample_per_class stream of the --eval_per_class samples (1: held-out split; 3, 4: validation).
EVAL_SAMPLE_STREAM = (2,)


@dataclasses.dataclass
class RunData:
    """A source and the run's choice of examples from it.

    Attributes:
      source: the dataset (`datasets.Source` in memory, or `datasets.FileSource`).
      indices: {"train", "holdout", "validation", "test"} -> int64 positions into the source's split
        (the held-out split is carved out of the training subset; the validation split comes from
        the training pool, see `split_validation`; test is all of the test split unless
        --eval_per_class bounds it).
      class_counts: N_c of the training subset (after the held-out or validation split is removed).
      eval_per_class: --eval_per_class (0: every evaluation sees whole splits).
      seed: the run's seed (for the --eval_per_class samples).
      validation_from: {"pool": [C], "subset": [C]}, the validation images each class took from the
        pool outside the subset and from its own subset ({} without a validation split).
    """

    source: datasets.Source | datasets.FileSource
    indices: dict[str, np.ndarray]
    class_counts: list[int]
    eval_per_class: int = 0
    seed: int = 0
    validation_from: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    _images: dict = dataclasses.field(default_factory=dict, repr=False)

    @property
    def num_classes(self) -> int:
        return self.source.num_classes

    @property
    def class_names(self) -> list[str]:
        return list(self.source.class_names)

    @property
    def in_memory(self) -> bool:
        """Whether the images are decoded into memory (else read from files at every pass)."""
        return not isinstance(self.source, datasets.FileSource)

    def _split(self, name: str):
        return self.source.test if name == "test" else self.source.train

    def size(self, name: str) -> int:
        return len(self.indices.get(name, ()))  # A split the run does not have is empty.

    def ids(self, name: str) -> np.ndarray:
        return self._split(name).ids[self.indices[name]]

    def labels(self, name: str) -> np.ndarray:
        """int64 [N] labels of a split, in the order of its pipelines."""
        return np.asarray(self._split(name).labels[self.indices[name]], np.int64)

    def images(self, name: str) -> np.ndarray:
        """uint8 [N, H, W, 3] of an in-memory split, decoded once and kept."""
        if name not in self._images:
            self._images[name] = self._split(name).images(self.indices[name])
        return self._images[name]

    def input_shape(self) -> tuple[int, int, int]:
        if self.in_memory:
            return tuple(self.images("train").shape[1:])
        return (self.source.image_size, self.source.image_size, 3)

    def normalization(self) -> tuple[list[float], list[float]]:
        """(mean, std) per channel on [0, 1] pixels: the source's, else the training subset's."""
        if self.source.mean is not None:
            return list(self.source.mean), list(self.source.std)
        return input_pipeline.channel_stats(self.images("train"))

    def eval_dataset(self, name: str, positions=None, batch_size: int = catalog.EVAL_BATCH_SIZE):
        """The unaugmented pipeline of a split (in order, every example kept): (uint8 images, int64 labels).

        Args:
          name: "train" (the training subset), "holdout", "validation" or "test".
          positions: optional int positions into that split (a sample of it), sorted.
          batch_size: examples per batch.
        """
        indices = self.indices[name] if positions is None else self.indices[name][np.asarray(positions)]
        split = self._split(name)
        labels = np.asarray(split.labels[indices], np.int64)
        if self.in_memory:
            images = self.images(name) if positions is None else self.images(name)[np.asarray(positions)]
            return input_pipeline.build_eval_dataset(images, labels, batch_size)
        size = self.source.image_size
        if split.paths is not None:
            return input_pipeline.build_file_eval_dataset(split.paths[indices], labels, batch_size, size)
        return input_pipeline.build_record_eval_dataset(split.records(indices), batch_size, size)

    def undecodable(self, name: str) -> list[str]:
        """Ids of the images of a split read from files that fail to decode ([] for other sources)."""
        split = self._split(name)
        if self.in_memory or getattr(split, "paths", None) is None:
            return []
        indices = self.indices[name]
        return [str(split.ids[indices][k]) for k in datasets.undecodable_files(split.paths[indices])]

    def train_dataset(self, config: Config, mix_prob=None):
        """The augmented training pipeline of --sampler and --augmentation, then --randaugment_magnitude,
        --cutout and --mixup_alpha/--cutmix_alpha (`augment.augment_dataset`).

        Yields (uint8 [B, ...], int64 [B]); with MixUp/CutMix (float32 [B, ...], float32 [B, C]); with
        --contrastive_weight the two views of each of B images (2B images, labels repeated).
        The same for sources in memory and read from files. mix_prob: a float32 tf.Variable to read
        the mixing probability from at each batch (set by a schedule; --mix_until_epoch), else
        --mix_prob.
        """
        return augment.augment_dataset(
            self._base_train_dataset(config),
            self.num_classes,
            config.batch_size * config.training_views,
            config.seed,
            randaugment_magnitude=config.randaugment_magnitude,
            randaugment_ops=config.randaugment_ops,
            cutout_side=config.cutout,
            mixup_alpha=config.mixup_alpha,
            cutmix_alpha=config.cutmix_alpha,
            mix_prob=config.mix_prob if mix_prob is None else mix_prob,
        )

    def _base_train_dataset(self, config: Config):
        """`input_pipeline`'s training pipeline of --sampler and --augmentation (pad-crop-flip)."""
        labels = self.labels("train")
        repeat = config.steps_per_epoch > 0
        if self.in_memory:
            return input_pipeline.build_train_dataset(
                self.images("train"),
                labels,
                config.batch_size,
                config.resolved_augmentation,
                config.seed,
                repeat=repeat,
                sampler=config.sampler,
                views=config.training_views,
            )
        common = {
            "batch_size": config.batch_size,
            "seed": config.seed,
            "image_size": self.source.image_size,
            "augmentation": config.resolved_augmentation,
            "repeat": repeat,
            "views": config.training_views,
        }
        split = self.source.train
        if split.paths is not None:
            return input_pipeline.build_file_train_dataset(
                split.paths[self.indices["train"]], labels, sampler=config.sampler, **common
            )
        if config.sampler != "instance":
            raise UserError(
                f"--sampler={config.sampler} needs random access to the images, which TFDS records lack; "
                "give --data_dir the competition's JSON files and images instead"
            )
        if len(labels) < config.batch_size:
            raise UserError(f"the training subset has {len(labels)} images; lower --batch_size")
        return input_pipeline.build_record_train_dataset(split.records(self.indices["train"]), **common)

    def eval_positions(self, name: str) -> np.ndarray | None:
        """Positions into a split that a post-hoc or statistics pass looks at: a seeded sample of
        --eval_per_class images per class, or None (the whole split)."""
        if not self.eval_per_class:
            return None
        return class_stats.sample_up_to(
            self.labels(name), self.eval_per_class, self.num_classes, self.seed, EVAL_SAMPLE_STREAM
        )

    def subset_record(self) -> dict:
        """subset.json: the one schema for every source.

        hash: SHA-256 of the training subset's ids; class_counts and num_images; ids: the ids
        themselves, or null for sources read from files (437,513 iNat paths would make a 26 MB file);
        holdout_hash and holdout_ids likewise for the held-out split (null without one);
        validation_hash, validation_ids likewise for the --val_per_class split, and validation_from:
        {"pool": [C], "subset": [C]}, how many validation images each class took from the pool
        outside the subset and from its own subset (null without a validation split).
        """
        has_holdout = self.size("holdout") > 0
        has_validation = self.size("validation") > 0
        return {
            "hash": input_pipeline.subset_hash(self.ids("train")),
            "class_counts": list(self.class_counts),
            "num_images": self.size("train"),
            "ids": self.ids("train").tolist() if self.in_memory else None,
            "holdout_hash": input_pipeline.subset_hash(self.ids("holdout")) if has_holdout else None,
            "holdout_ids": self.ids("holdout").tolist() if has_holdout and self.in_memory else None,
            "validation_hash": (
                input_pipeline.subset_hash(self.ids("validation")) if has_validation else None
            ),
            "validation_ids": (
                self.ids("validation").tolist() if has_validation and self.in_memory else None
            ),
            "validation_from": dict(self.validation_from) if has_validation else None,
        }


def load(config: Config) -> RunData:
    """Lists the source of --dataset and draws the run's subsets (see `RunData`).

    The training subset follows --imbalance/--imbalance_ratio/--max_per_class (sources in
    catalog.AS_IS_DATASETS are used whole unless --imbalance asks for a subset); with
    --holdout_per_class=K, K images per class of it are held out; with --val_per_class=N, N images
    per class form the validation split (`split_validation`); with --eval_per_class=K, the test split
    keeps K images per class.
    """
    source = datasets.load_source(
        config.dataset, config.data_dir, config.image_size, bad_images=config.bad_images
    )
    pool_counts = np.bincount(source.train.labels, minlength=source.num_classes)
    if (pool_counts == 0).any():
        empty = [source.class_names[c] for c in np.flatnonzero(pool_counts == 0)]
        raise UserError(f"classes {empty} have no training images; add images or remove those classes")
    if config.dataset in catalog.AS_IS_DATASETS and config.imbalance == "none":
        train = np.arange(len(source.train.labels), dtype=np.int64)
    else:
        max_per_class = config.max_per_class or int(pool_counts.min())
        counts = class_stats.imbalanced_counts(
            source.num_classes, max_per_class, config.imbalance_ratio, config.imbalance
        )
        if min(counts) < 1:
            raise UserError(
                f"--imbalance_ratio={config.imbalance_ratio} leaves a class with no image "
                f"(N_max={max_per_class}); lower the ratio or raise --max_per_class"
            )
        train = input_pipeline.select_subset(source.train.labels, counts, config.seed)
    holdout = np.zeros(0, np.int64)
    if config.holdout_per_class:
        kept, held = split_holdout(source.train.labels[train], config.holdout_per_class, config.seed)
        train, holdout = train[kept], train[held]
    validation, validation_from = np.zeros(0, np.int64), {}
    if config.val_per_class:
        train, validation, from_pool, from_subset = split_validation(
            source.train.labels, train, config.val_per_class, config.seed, source.num_classes
        )
        validation_from = {"pool": from_pool, "subset": from_subset}
    test = np.arange(len(source.test.labels), dtype=np.int64)
    if config.eval_per_class:
        test = class_stats.sample_up_to(
            source.test.labels, config.eval_per_class, source.num_classes, config.seed, EVAL_SAMPLE_STREAM
        )
    class_counts = np.bincount(source.train.labels[train], minlength=source.num_classes).tolist()
    indices = {"train": train, "holdout": holdout, "validation": validation, "test": test}
    return RunData(source, indices, class_counts, config.eval_per_class, config.seed, validation_from)


def split_holdout(labels: np.ndarray, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions (into labels) of the kept and held-out examples: per_class of each class held out.

    Seeded per class (`class_stats.sample_per_class`, stream 1). Raises UserError when a class
    would keep no image.
    """
    labels = np.asarray(labels)
    sizes = np.bincount(labels)
    for c, size in enumerate(sizes):
        if size <= per_class:
            raise UserError(
                f"--holdout_per_class={per_class} leaves class {c} ({size} images) nothing to "
                "train on; lower --holdout_per_class"
            )
    held = class_stats.sample_per_class(labels, [per_class] * len(sizes), seed, stream=(1,))
    return np.setdiff1d(np.arange(len(labels)), held), held


def split_validation(
    pool_labels: np.ndarray, train: np.ndarray, per_class: int, seed: int, num_classes: int
) -> tuple[np.ndarray, np.ndarray, list[int], list[int]]:
    """A balanced validation split of per_class images of each class, taken outside the subset where possible.

    A class with at least per_class images in the training pool outside the subset (spare) draws
    its validation images from them, and its subset stays whole; a class with fewer spare images
    (e.g. CIFAR-10-LT's class 0, whose subset is all 5,000 of its images) draws all of them from
    its own subset, and they leave the subset (as --holdout_per_class does). Seeded per class
    (`class_stats.sample_per_class`, stream 3 for the pool, 4 for the subset).

    Args:
      pool_labels: int [P], the labels of the source's whole training split (the pool).
      train: int64 positions into the pool of the run's training subset.
      per_class: N, validation images per class.
      seed: the run's seed.
      num_classes: C.

    Returns:
      (training subset without the validation images, validation positions into the pool (sorted),
      per-class counts taken from the pool [C], per-class counts taken from the subset [C]).

    Raises:
      UserError: a class that must give its validation images from its subset would keep none.
    """
    pool_labels = np.asarray(pool_labels, np.int64)
    train = np.asarray(train, np.int64)
    in_subset = np.zeros(len(pool_labels), bool)
    in_subset[train] = True
    spare = np.flatnonzero(~in_subset)
    enough = np.bincount(pool_labels[spare], minlength=num_classes) >= per_class
    from_pool = np.where(enough, per_class, 0)
    from_subset = np.where(enough, 0, per_class)
    subset_sizes = np.bincount(pool_labels[train], minlength=num_classes)
    for c in np.flatnonzero(from_subset > 0):
        if subset_sizes[c] <= per_class:
            raise UserError(
                f"--val_per_class={per_class}: class {c} has fewer than {per_class} images outside the "
                f"training subset, and taking them from its subset ({subset_sizes[c]} images) leaves it "
                "nothing to train on; lower --val_per_class"
            )
    pooled = spare[class_stats.sample_per_class(pool_labels[spare], from_pool, seed, stream=(3,))]
    taken = class_stats.sample_per_class(pool_labels[train], from_subset, seed, stream=(4,))
    validation = np.sort(np.concatenate([pooled, train[taken]])).astype(np.int64)
    return np.delete(train, taken), validation, from_pool.tolist(), from_subset.tolist()


# What TensorFlow says when an image file is missing or cannot be decoded.
UNREADABLE_DATA = re.compile(
    r"No such file|not found|Unknown image file format|Invalid JPEG|Invalid PNG|Corrupt JPEG|"
    r"decode|Premature end|truncated|DataLoss",
    re.IGNORECASE,
)


@contextlib.contextmanager
def unreadable_data_as_user_error(config: Config, data: RunData, stage: str = "training"):
    """An image that cannot be read or decoded mid-run becomes one line: the pass that stopped (training,
    the test evaluation after epoch N, or the final evaluation), the file(s) when they can be found,
    and what is kept."""
    try:
        yield
    except EvaluationDataError as wrapped:
        error = wrapped.error
        if not UNREADABLE_DATA.search(str(error)):
            raise error from None  # Not the data: a bug, shown whole.
        raise _unreadable(
            config,
            data,
            error,
            f"evaluating the {wrapped.split} split after epoch {wrapped.epoch}",
            wrapped.split,
        ) from error
    except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError, tf.errors.DataLossError) as error:
        if not UNREADABLE_DATA.search(str(error)):
            raise  # Not the data: a bug, shown whole.
        raise _unreadable(config, data, error, stage, None if stage == "training" else "test") from error


def _unreadable(config: Config, data: RunData, error, stage: str, split: str | None) -> TrainingError:
    first_line = next((line for line in str(error).splitlines() if UNREADABLE_DATA.search(line)), "")
    named = data.undecodable(split) if split else []
    files = f"; unreadable: {', '.join(named[:5])}{' …' if len(named) > 5 else ''}" if named else ""
    skip = "" if config.bad_images == "skip" else ", or pass --bad_images=skip to leave them out"
    return TrainingError(
        f"{stage} stopped on unreadable data ({type(error).__name__}: {first_line}){files}; the finished "
        f"epochs are kept in {config.model_dir} (backup/, model.keras once training ended): fix or "
        f"remove the file{skip} and run the same command again to continue"
    )
