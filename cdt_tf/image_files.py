"""Image files: which names are images, decoding them into memory, and checking them before training.

Bad files are found when a source is loaded, before any training: every image file a
`FileSource` lists must exist (one DataError counts the missing ones and names the first
few), and its first bytes must be those of an image format TensorFlow decodes
(`image_file_problem`). What happens to unreadable images (empty files, other formats,
garbage) is the `bad_images` policy that `screen_image_files` applies: "error" (one DataError
counting and naming them) or "skip" (they are left out of their split, one warning line says
so, and the source's `skipped_images` lists them).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from concurrent import futures

import numpy as np
from absl import logging

from cdt_tf.errors import DataError

# The file names read as images (in any case), in image folders and Tiny-ImageNet.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
# The leading bytes of the formats tf.io.decode_image reads: JPEG, PNG, GIF, BMP, JPEG XL (bare
# codestream, container); WebP ("RIFF", 4 size bytes, "WEBP") is matched in `image_file_problem`.
IMAGE_SIGNATURES = (
    b"\xff\xd8\xff",
    b"\x89PNG\r\n\x1a\n",
    b"GIF87a",
    b"GIF89a",
    b"BM",
    b"\xff\x0a",
    b"\x00\x00\x00\x0cJXL \r\n\x87\n",
)
MISSING = "missing"
# Error messages and warnings name this many files, then count the rest.
SHOWN_FILES = 5


def is_image_name(name: str) -> bool:
    """An image file by its name: one of IMAGE_EXTENSIONS, not hidden (a leading ".")."""
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def files_by_class(
    class_dirs: Sequence[str],
    list_files: Callable[[str], list[str]],
    no_images_message: Callable[[int, str], str],
) -> tuple[list[str], list[int]]:
    """(paths, labels) of the image files in one folder per class: class_dirs[c]'s files get label c.

    Args:
      class_dirs: the class folders, in label order.
      list_files: folder -> the names (paths relative to it) of its image files, in their order.
      no_images_message: (label, folder) -> the DataError message for a class folder without images;
        every class needs at least one image.
    """
    paths, labels = [], []
    for label, class_dir in enumerate(class_dirs):
        files = list_files(class_dir)
        if not files:
            raise DataError(no_images_message(label, class_dir))
        paths += [os.path.join(class_dir, f) for f in files]
        labels += [label] * len(files)
    return paths, labels


def decode_one(path: str) -> np.ndarray:
    """One image file as uint8 [H, W, 3] at its own size; an unreadable file raises DataError naming it."""
    import tensorflow as tf

    try:
        data = tf.io.read_file(path)
        return tf.io.decode_image(data, channels=3, expand_animations=False).numpy()
    except (tf.errors.OpError, ValueError) as error:
        raise DataError(
            f"cannot read image {path} ({type(error).__name__}); replace or delete the file"
        ) from error


def decode_images(paths: np.ndarray, size: int, batch_size: int = 512) -> np.ndarray:
    """Decodes image files in parallel (tf.data) into uint8 [N, size, size, 3].

    Greyscale and RGBA files become RGB; other sizes are resized (bilinear). An
    unreadable file raises DataError naming it.
    """
    import keras
    import tensorflow as tf

    def decode(path):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        image.set_shape([None, None, 3])
        if_resized = tf.cast(tf.image.resize(image, [size, size]) + 0.5, tf.uint8)
        same = tf.logical_and(tf.shape(image)[0] == size, tf.shape(image)[1] == size)
        return tf.cond(same, lambda: tf.image.resize_with_crop_or_pad(image, size, size), lambda: if_resized)

    dataset = (
        tf.data.Dataset.from_tensor_slices(paths)
        .map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .batch(batch_size)
    )
    chunks = []
    show_progress = len(paths) > 5000 and sys.stdout.isatty()
    progress = keras.utils.Progbar(len(paths), unit_name="image") if show_progress else None
    iterator = iter(dataset)
    while True:
        try:
            chunk = next(iterator)
        except StopIteration:
            break
        except tf.errors.OpError as error:
            # Find the culprit among the files of the failing batch and name it.
            start = len(chunks) * batch_size
            for path in paths[start : start + batch_size]:
                decode_one(str(path))
            raise DataError(
                f"cannot decode images under {os.path.dirname(str(paths[start]))}: {error}"
            ) from error
        chunks.append(chunk.numpy())
        if progress:
            progress.add(len(chunks[-1]))
    if not chunks:
        return np.zeros((0, size, size, 3), np.uint8)
    return np.concatenate(chunks)


# --------------------------------------------------------------------------- checking image files


def undecodable_files(paths: Sequence[str]) -> list[int]:
    """Positions of the files among `paths` that TensorFlow cannot read or decode whole (a damaged JPEG
    body behind a valid header, for instance). Decodes every file, in parallel: seconds per thousand
    images."""
    import tensorflow as tf

    def check(position, path):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        return position, tf.shape(image)[0]

    dataset = tf.data.Dataset.from_tensor_slices(
        (np.arange(len(paths), dtype=np.int64), np.asarray(paths, str))
    )
    decoded = dataset.map(check, num_parallel_calls=tf.data.AUTOTUNE).ignore_errors().batch(256)
    good = {int(k) for positions, _ in decoded.as_numpy_iterator() for k in positions}
    return [k for k in range(len(paths)) if k not in good]


def image_file_problem(path: str) -> str:
    """What stops `path` from being decoded, judged by its first bytes: "" when it looks like an image.

    Otherwise MISSING ("missing": no such file), "empty" (zero bytes), "not an image" (the first
    bytes are none of IMAGE_SIGNATURES, nor WebP's) or "unreadable (<OSError>)". One open and
    one read of 16 bytes: as cheap as os.stat. A file that starts like an image can still fail to
    decode (truncated); the training pipelines drop such files (see input_pipeline).
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except (FileNotFoundError, NotADirectoryError):
        return MISSING
    except OSError as error:
        return f"unreadable ({type(error).__name__})"
    try:
        head = os.read(fd, 16)
    except OSError as error:  # IsADirectoryError, EIO.
        return f"unreadable ({type(error).__name__})"
    finally:
        os.close(fd)
    if not head:
        return "empty"
    if head.startswith(IMAGE_SIGNATURES) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        return ""
    return "not an image"


def check_image_files(paths: Sequence[str], threads: int = 16) -> list[str]:
    """`image_file_problem` of every path, in order; threads overlap the file system's latency.

    437,513 iNaturalist files are checked in seconds when the file system has them cached;
    on a cold disk or a network file system the threads keep many requests in flight.
    """
    paths = [str(p) for p in paths]
    chunk = 4096
    if len(paths) <= chunk or threads <= 1:
        return [image_file_problem(p) for p in paths]
    with futures.ThreadPoolExecutor(max_workers=threads) as pool:
        chunks = pool.map(
            lambda start: [image_file_problem(p) for p in paths[start : start + chunk]],
            range(0, len(paths), chunk),
        )
        return [problem for problems in chunks for problem in problems]


def first_few(named: list[str]) -> str:
    """The first SHOWN_FILES entries and how many are left: 'a, b, c, d, e (and 12 more)'."""
    shown = ", ".join(named[:SHOWN_FILES])
    return shown + (f" (and {len(named) - SHOWN_FILES:,} more)" if len(named) > SHOWN_FILES else "")


def files_phrase(count: int) -> str:
    return f"{count:,} image file{'' if count == 1 else 's'}"


def screen_image_files(
    splits: dict[str, tuple[Sequence[str], Sequence[str]]],
    data_dir: str,
    bad_images: str,
    listed_in: dict[str, str] | None = None,
    missing_hint: str = "restore them",
) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
    """Checks every image file of {split: (paths, ids)} (`check_image_files`) before any training.

    A missing file is a DataError that counts the missing files of all splits and names the
    first few (by id). Unreadable files (empty, not an image) are a DataError too with
    bad_images="error"; with "skip" they are left out and one warning line counts and names them.
    listed_in[split] says where a split's list comes from in messages (default "<split>/").

    Returns ({split: indices of the files kept, int64, increasing}, {split: [ids of the files
    left out]}, the latter holding only the splits that lost files).
    """
    listed_in = listed_in or {name: f"{name}/" for name in splits}
    problems = {name: check_image_files(paths) for name, (paths, _) in splits.items()}
    bad = {name: [i for i, problem in enumerate(found) if problem] for name, found in problems.items()}

    def where(counts: dict[str, int]) -> str:
        return " and ".join(
            f"{listed_in[name]} ({count:,} of {len(splits[name][0]):,})"
            for name, count in counts.items()
            if count
        )

    missing = {
        name: [splits[name][1][i] for i in bad[name] if problems[name][i] == MISSING] for name in splits
    }
    count = sum(len(m) for m in missing.values())
    if count:
        raise DataError(
            f"{files_phrase(count)} listed in {where({n: len(m) for n, m in missing.items()})} "
            f"{'does' if count == 1 else 'do'} not exist under {data_dir}: "
            f"{first_few([i for m in missing.values() for i in m])}; {missing_hint}"
        )
    count = sum(len(b) for b in bad.values())
    kept = {name: np.arange(len(paths), dtype=np.int64) for name, (paths, _) in splits.items()}
    if not count:
        return kept, {}
    named = [f"{splits[name][1][i]} ({problems[name][i]})" for name in splits for i in bad[name]]
    counts = where({n: len(b) for n, b in bad.items()})
    if bad_images == "error":
        raise DataError(
            f"{files_phrase(count)} listed in {counts} under {data_dir} {'is' if count == 1 else 'are'} not "
            "readable as images: "
            f"{first_few(named)}; replace or delete them, or pass --bad_images=skip to leave them out "
            "(the run records which)"
        )
    skipped = {name: [str(splits[name][1][i]) for i in bad[name]] for name in splits if bad[name]}
    kept = {name: np.setdiff1d(indices, bad[name]).astype(np.int64) for name, indices in kept.items()}
    logging.warning(
        "--bad_images=skip: left out %s (unreadable as images) listed in %s under %s: %s",
        files_phrase(count),
        counts,
        data_dir,
        first_few(named),
    )
    return kept, skipped


def skip_unreadable(train: tuple[list, list], test: tuple[list, list], data_dir: str):
    """bad_images="skip" for in-memory sources: ((paths, labels) of train and test kept, skipped ids)."""
    splits = {"train": train, "test": test}
    kept, skipped = screen_image_files(
        {name: (paths, [os.path.relpath(p, data_dir) for p in paths]) for name, (paths, _) in splits.items()},
        data_dir,
        "skip",
    )
    left = [tuple([values[i] for i in kept[name]] for values in splits[name]) for name in ("train", "test")]
    return left[0], left[1], skipped
