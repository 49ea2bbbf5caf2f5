"""TFDS's download-and-prepare path for CIFAR-10, offline: only the HTTP transport is faked.

`tfds.testing.mock_data` skips preparation, so a module that TFDS imports only while it downloads,
extracts and writes a dataset (importlib_resources for tensorflow-datasets 4.9.10) would be missing
unnoticed until a user's first real `--dataset=cifar10` run. Here the real `cifar10` builder downloads
its real URL through TFDS's downloader (requests, with its checksum check against the URL info),
extracts the tar.gz, writes the records and reads them back through `load_source`: the same code as a
first CIFAR-10 run, except that `requests`' transport serves a tiny tarball in CIFAR-10's binary format.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile

import numpy as np
import pytest

from cdt_tf.datasets import load_source

tfds = pytest.importorskip("tensorflow_datasets")
requests = pytest.importorskip("requests")

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
TRAIN_PER_BATCH = 2  # data_batch_1..5.bin: 10 training images.
NUM_TEST = 4


def _cifar10_tarball() -> tuple[bytes, dict[str, list[tuple[int, np.ndarray]]]]:
    """cifar-10-binary.tar.gz's layout (label byte + 3,072 bytes of R, G, B planes per image), tiny.

    Returns the tar.gz bytes and {split: [(label, uint8 [32, 32, 3])]} in file order.
    """
    rng = np.random.default_rng(0)
    records = {"train": [], "test": []}
    members = {"cifar-10-batches-bin/batches.meta.txt": "".join(f"{n}\n" for n in NAMES).encode()}
    files = [(f"data_batch_{i}.bin", "train", TRAIN_PER_BATCH) for i in range(1, 6)]
    for file_name, split, count in files + [("test_batch.bin", "test", NUM_TEST)]:
        data = b""
        for _ in range(count):
            label = len(records[split]) % 10
            image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            records[split].append((label, image))
            data += bytes([label]) + image.transpose(2, 0, 1).tobytes()
        members[f"cifar-10-batches-bin/{file_name}"] = data
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue(), records


@pytest.fixture
def cifar10_server(monkeypatch):
    """Serves the tiny tarball at CIFAR-10's URL through requests' transport; refuses every other URL.

    TFDS checks a download against the URL's registered size and SHA-256, so the tarball's are
    registered in place of the real file's (the check itself still runs).
    """
    tarball, records = _cifar10_tarball()
    requested = []

    def send(adapter, request, **kwargs):
        requested.append(request.url)
        if request.url != CIFAR10_URL:
            raise requests.ConnectionError(f"no network in tests: {request.url}")
        response = requests.Response()
        response.status_code, response.url, response.request = 200, request.url, request
        response.headers["Content-Length"] = str(len(tarball))
        response.raw = io.BytesIO(tarball)
        return response

    monkeypatch.setattr(requests.adapters.HTTPAdapter, "send", send)

    from tensorflow_datasets.core.download import checksums, download_manager

    url_info = checksums.UrlInfo(
        size=tfds.core.utils.Size(len(tarball)),
        checksum=hashlib.sha256(tarball).hexdigest(),
        filename=os.path.basename(CIFAR10_URL),
    )
    original_init = download_manager.DownloadManager.__init__

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self._url_infos[CIFAR10_URL] = url_info

    monkeypatch.setattr(download_manager.DownloadManager, "__init__", init)
    return records, requested


def test_cifar10_download_and_prepare_offline(tmp_path, cifar10_server):
    records, requested = cifar10_server
    data_dir = str(tmp_path / "tfds")
    os.makedirs(data_dir)
    source = load_source("cifar10", data_dir)  # tfds.load downloads, extracts and prepares.
    assert requested == [CIFAR10_URL]
    assert source.name == "cifar10" and source.class_names == list(NAMES)
    builder = tfds.builder("cifar10", data_dir=data_dir)
    assert builder.is_prepared()
    assert builder.info.splits["train"].num_examples == 5 * TRAIN_PER_BATCH
    # TFDS shuffles records when it writes them: compare as sets of (label, pixels).
    for split, name in ((source.train, "train"), (source.test, "test")):
        expected = sorted((label, image.tobytes()) for label, image in records[name])
        images = split.images()
        assert images.shape == (len(expected), 32, 32, 3) and images.dtype == np.uint8
        got = sorted((int(label), image.tobytes()) for label, image in zip(split.labels, images, strict=True))
        assert got == expected
    # A second load reads the prepared records: nothing is downloaded again.
    load_source("cifar10", data_dir)
    assert requested == [CIFAR10_URL]
