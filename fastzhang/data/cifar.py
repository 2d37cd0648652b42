"""Read CIFAR-10 from any official layout, validate every byte's place, fingerprint it.

This module reads files; data/download.py finds (or fetches) them and
data/sources.py puts the two together. Layouts:
* python:  `cifar-10-batches-py/` with pickled `data_batch_1..5` and `test_batch`,
           read through the restricted unpickler in data/safe_pickle.py;
* binary:  `cifar-10-batches-bin/` with `data_batch_1..5.bin` and `test_batch.bin`,
           records of 1 label byte + 3072 pixel bytes;
* tarball: `cifar-10-python.tar.gz`, extracted once into the cache (download.py), then read as python.

Fingerprints (both sha256 hex):
* `fingerprint(...)`: sha256 of the header `fastzhang-data-v1 {n_train} {n_test}\\n`
  followed by the bytes of train images (uint8, [N, 3, 32, 32] C order), train
  labels (little-endian int64), test images, test labels. It changes with the
  order of the images, so it names one exact file set.
* `content_fingerprint(...)`: order-independent. Each image's record (its label
  as one byte, then its 3072 pixel bytes) is hashed with sha256; the digests of
  each split are sorted; the result is the sha256 of the header
  `fastzhang-content-v1 {n_train} {n_test}\\n`, the sorted train digests and the
  sorted test digests. The official release and any reshuffled copy of it share it.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fastzhang.data import safe_pickle
from fastzhang.errors import DataError

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
NUM_CLASSES = len(CLASSES)  # the one count of classes: labels, randomizations, the synthetic set, chance
IMAGE_SHAPE = (3, 32, 32)
IMAGE_BYTES = 3 * 32 * 32
PER_BATCH = 10_000  # images per official batch file: 5 x 10,000 train, 10,000 test
TRAIN_BATCHES = 5
BATCH_FILES = {
    "python": tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",),
    "binary": tuple(f"data_batch_{i}.bin" for i in range(1, 6)) + ("test_batch.bin",),
}

# Exact fingerprints, computed from the files themselves (`fastzhang data info`).
KNOWN_FINGERPRINTS = {
    "16b77e7a3b1a0909beca18254c3b0174a72ec6a66c1294c93ae10558aa41b4b3":
        "CIFAR-10 offline copy (shuffled order)",
}
# Order-independent fingerprints: the official images and labels in any order.
KNOWN_CONTENT_FINGERPRINTS = {
    "2fa348f3aa3b98b320256545c0f4db48fb30df457530e35c3d1ca796f5aa5a4d": "CIFAR-10 (official images and labels)",
}


@dataclass(frozen=True, eq=False)
class CifarArrays:
    """A decoded data set: uint8 images [N, 3, 32, 32], int64 labels [N]."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    source: str  # what was found: a folder or a tarball
    layout: str  # "python" | "binary" | "tarball" | "synthetic"
    fingerprint: str
    fingerprint_name: str | None
    content_fingerprint: str | None = None
    content_fingerprint_name: str | None = None
    batches_dir: str | None = None  # the folder actually read (the cache, for a tarball)


# ------------------------------------------------------------------------------------------
# Fingerprints


def fingerprint(train_images, train_labels, test_images, test_labels) -> str:
    """sha256 hex over the arrays in file order (module docstring has the exact recipe)."""
    h = hashlib.sha256(f"fastzhang-data-v1 {len(train_labels)} {len(test_labels)}\n".encode())
    for arr, dtype in ((train_images, np.uint8), (train_labels, "<i8"), (test_images, np.uint8), (test_labels, "<i8")):
        h.update(memoryview(np.ascontiguousarray(arr, dtype=dtype)).cast("B"))
    return h.hexdigest()


def _sorted_digests(images: np.ndarray, labels: np.ndarray) -> bytes:
    flat = np.ascontiguousarray(images, dtype=np.uint8).reshape(len(images), -1)
    tags = np.asarray(labels).astype(np.uint8)
    digests = []
    for row, tag in zip(flat, tags.tobytes()):
        h = hashlib.sha256(bytes((tag,)))
        h.update(row)
        digests.append(h.digest())
    digests.sort()
    return b"".join(digests)


def content_fingerprint(train_images, train_labels, test_images, test_labels) -> str:
    """Order-independent sha256 hex: the same images with the same labels in any order."""
    h = hashlib.sha256(f"fastzhang-content-v1 {len(train_labels)} {len(test_labels)}\n".encode())
    h.update(_sorted_digests(train_images, train_labels))
    h.update(_sorted_digests(test_images, test_labels))
    return h.hexdigest()


def fingerprints(train_images, train_labels, test_images, test_labels) -> tuple[str, str]:
    """(exact, content) fingerprints, hashed side by side (hashlib releases the GIL)."""
    args = (train_images, train_labels, test_images, test_labels)
    with ThreadPoolExecutor(max_workers=2) as pool:
        exact = pool.submit(fingerprint, *args)
        content = pool.submit(content_fingerprint, *args)
        return exact.result(), content.result()


def name_fingerprints(exact: str, content: str | None) -> tuple[str | None, str | None]:
    """(name of the data set, name of its content): the exact name wins where known."""
    content_name = KNOWN_CONTENT_FINGERPRINTS.get(content) if content else None
    return KNOWN_FINGERPRINTS.get(exact) or content_name, content_name


# ------------------------------------------------------------------------------------------
# Batch readers: each returns (images uint8 [n, 3072], labels int64 [n]) or raises DataError


def _check_labels(path: Path, labels: np.ndarray, per_batch: int) -> np.ndarray:
    if labels.ndim != 1 or len(labels) != per_batch:
        raise DataError(f"{path}: expected {per_batch} labels, found shape {labels.shape}")
    if labels.dtype.kind not in "iu":
        raise DataError(f"{path}: labels must be integers 0..{NUM_CLASSES - 1}, found dtype {labels.dtype}")
    bad = np.flatnonzero((labels < 0) | (labels >= NUM_CLASSES))
    if len(bad):
        raise DataError(
            f"{path}: labels must be in 0..{NUM_CLASSES - 1}; found {labels[bad[0]]} at index {bad[0]} "
            f"({len(bad)} bad labels)"
        )
    return labels.astype(np.int64)


def read_python_batch(path: Path, per_batch: int) -> tuple[np.ndarray, np.ndarray]:
    obj = safe_pickle.load(path)
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a dict with 'data' and 'labels', found {type(obj).__name__}")
    # Python 2 wrote byte-string keys; a re-pickled copy may have str keys.
    entries = {(k.decode("latin-1") if isinstance(k, bytes) else k): v for k, v in obj.items()}
    missing = [k for k in ("data", "labels") if k not in entries]
    if missing:
        raise DataError(f"{path}: missing key(s) {', '.join(missing)}; found {sorted(map(str, entries))}")
    data = entries["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.shape != (per_batch, IMAGE_BYTES):
        found = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: 'data' must be a uint8 array of shape ({per_batch}, {IMAGE_BYTES}); found {found}")
    try:
        labels = np.asarray(entries["labels"])
    except Exception:
        raise DataError(f"{path}: 'labels' is not a list of integers") from None
    return data, _check_labels(path, labels, per_batch)


def read_binary_batch(path: Path, per_batch: int) -> tuple[np.ndarray, np.ndarray]:
    record = 1 + IMAGE_BYTES
    expected = per_batch * record
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    if raw.size != expected:
        what = "truncated" if raw.size < expected else "too long"
        raise DataError(
            f"{path}: {what}: {raw.size} bytes, expected {per_batch} records of {record} bytes ({expected} bytes)"
        )
    records = raw.reshape(per_batch, record)
    return np.ascontiguousarray(records[:, 1:]), _check_labels(path, records[:, 0], per_batch)


# ------------------------------------------------------------------------------------------
# Folders and data sets


def read_folder(folder: Path, layout: str, per_batch: int) -> tuple[np.ndarray, ...]:
    """All six batches of a python or binary folder -> (train_x, train_y, test_x, test_y)."""
    names = BATCH_FILES[layout]
    missing = [str(folder / n) for n in names if not (folder / n).is_file()]
    if missing:
        raise DataError(
            f"missing batch file(s): {', '.join(missing)} (a {layout} CIFAR-10 folder has {', '.join(names)})"
        )
    reader = read_python_batch if layout == "python" else read_binary_batch
    batches = [reader(folder / n, per_batch) for n in names]
    train_x = np.concatenate([b[0] for b in batches[:TRAIN_BATCHES]]).reshape(-1, *IMAGE_SHAPE)
    train_y = np.concatenate([b[1] for b in batches[:TRAIN_BATCHES]])
    test_x, test_y = batches[TRAIN_BATCHES]
    return train_x, train_y, test_x.reshape(-1, *IMAGE_SHAPE), test_y


def arrays_from(train_x, train_y, test_x, test_y, *, source, layout, batches_dir=None,
                names: tuple[str | None, str | None] | None = None) -> CifarArrays:
    """Wrap decoded arrays, computing both fingerprints; `names` overrides the lookup."""
    exact, content = fingerprints(train_x, train_y, test_x, test_y)
    name, content_name = names if names is not None else name_fingerprints(exact, content)
    return CifarArrays(train_x, train_y, test_x, test_y, source=str(source), layout=layout,
                       fingerprint=exact, fingerprint_name=name, content_fingerprint=content,
                       content_fingerprint_name=content_name, batches_dir=str(batches_dir or source))


def read_cifar10(layout: str, source: str | Path, folder: str | Path, per_batch: int = PER_BATCH) -> CifarArrays:
    """Read the batches of `folder`: `source` itself, or for a tarball the folder it was extracted into.

    Every batch must hold exactly `per_batch` images (10,000 in the real data set;
    tests use tiny fixtures).
    """
    if layout != "tarball":
        return arrays_from(*read_folder(Path(folder), layout, per_batch), source=source, layout=layout)
    try:
        arrays = read_folder(Path(folder), "python", per_batch)
    except DataError as e:
        raise DataError(f"{source}: {e} (delete {folder} to extract the tarball again)") from None
    return arrays_from(*arrays, source=source, layout="tarball", batches_dir=folder)
