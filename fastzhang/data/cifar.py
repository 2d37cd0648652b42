"""Read CIFAR-10 or CIFAR-100 from an official layout, validate every byte's place, fingerprint it.

A `CifarSpec` (CIFAR10, CIFAR100; SPECS by name) names each data set's files in the
python layout (pickles, read through data/safe_pickle.py) and the binary layout
(records of label byte(s) + 3072 pixel bytes), and its classes: the one place a
class count comes from. A tarball holds the python folder; download.py extracts it.
Both data sets hold 50,000 training and 10,000 test images; CIFAR-100 is trained on
its 100 fine labels.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np

from fastzhang.data import safe_pickle
from fastzhang.errors import DataError

IMAGE_SHAPE = (3, 32, 32)
IMAGE_BYTES = 3 * 32 * 32
# The unit of a data set's size: CIFAR-10's batch file. Every data set here has
# TRAIN_BATCHES * PER_BATCH training and PER_BATCH test images (tests use tiny units).
PER_BATCH = 10_000
TRAIN_BATCHES = 5
LAYOUTS = ("python", "binary")  # folders of batch files; a tarball holds the python folder


@dataclass(frozen=True)
class CifarSpec:
    """One data set's official release: its files in each layout and its classes."""

    name: str  # the config's `dataset`
    title: str  # "CIFAR-10", for messages
    classes: tuple[str, ...]  # label k names classes[k]
    folders: MappingProxyType  # layout -> the batches folder's official name
    tarball: str
    train_files: MappingProxyType  # layout -> the training files, in order
    test_files: MappingProxyType  # layout -> the test file
    label_key: str  # python layout: the list of labels trained on
    label_bytes: int  # binary layout: label bytes before each image's pixels; the last is ours
    meta: str  # python layout: the class names file, extracted with the batches

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def files(self, layout: str) -> tuple[str, ...]:
        """The batch files of `layout`: training files, then the test file."""
        return self.train_files[layout] + (self.test_files[layout],)


CIFAR10 = CifarSpec(
    name="cifar10", title="CIFAR-10",
    classes=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
    folders=MappingProxyType({"python": "cifar-10-batches-py", "binary": "cifar-10-batches-bin"}),
    tarball="cifar-10-python.tar.gz",
    train_files=MappingProxyType({"python": tuple(f"data_batch_{i}" for i in range(1, 6)),
                                  "binary": tuple(f"data_batch_{i}.bin" for i in range(1, 6))}),
    test_files=MappingProxyType({"python": "test_batch", "binary": "test_batch.bin"}),
    label_key="labels", label_bytes=1, meta="batches.meta",
)
CIFAR100 = CifarSpec(
    name="cifar100", title="CIFAR-100",
    # The fine labels' names, in label order (the release's meta file: fine_label_names).
    classes=(
        "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
        "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
        "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur",
        "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard",
        "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle",
        "mountain", "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear",
        "pickup_truck", "pine_tree", "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon",
        "ray", "road", "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail",
        "snake", "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone",
        "television", "tiger", "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale",
        "willow_tree", "wolf", "woman", "worm",
    ),
    folders=MappingProxyType({"python": "cifar-100-python", "binary": "cifar-100-binary"}),
    tarball="cifar-100-python.tar.gz",
    train_files=MappingProxyType({"python": ("train",), "binary": ("train.bin",)}),
    test_files=MappingProxyType({"python": "test", "binary": "test.bin"}),
    label_key="fine_labels", label_bytes=2, meta="meta",
)
SPECS = {spec.name: spec for spec in (CIFAR10, CIFAR100)}

# Exact fingerprints, computed from the files themselves (`fastzhang data info`). CIFAR-100's
# are added once computed from the official files (none are reachable from here); until then
# `data info` shows CIFAR-100 as "unknown data set" beside its fingerprints.
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
    """A decoded data set: uint8 images [N, 3, 32, 32], int64 labels [N] in 0..num_classes-1."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    source: str  # what was found: a folder or a tarball
    layout: str  # "python" | "binary" | "tarball" | "synthetic"
    fingerprint: str
    fingerprint_name: str | None
    classes: tuple[str, ...]  # label k names classes[k]
    content_fingerprint: str | None = None
    content_fingerprint_name: str | None = None
    batches_dir: str | None = None  # the folder actually read (the cache, for a tarball)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def fingerprint(train_images, train_labels, test_images, test_labels) -> str:
    """sha256 hex of the header `fastzhang-data-v1 {n_train} {n_test}\\n`, then the bytes of the train images
    (uint8 [N, 3, 32, 32]), train labels (little-endian int64), test images, test labels: one exact file set."""
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
    """Order-independent sha256 hex, shared by the official release and any reshuffled copy: each image's record
    (its label as one byte, then its 3072 pixel bytes) is hashed; the result hashes the header
    `fastzhang-content-v1 {n_train} {n_test}\\n`, the sorted train digests and the sorted test digests."""
    h = hashlib.sha256(f"fastzhang-content-v1 {len(train_labels)} {len(test_labels)}\n".encode())
    h.update(_sorted_digests(train_images, train_labels))
    h.update(_sorted_digests(test_images, test_labels))
    return h.hexdigest()


def _check_labels(path: Path, labels: np.ndarray, n: int, spec: CifarSpec) -> np.ndarray:
    top = spec.num_classes - 1
    if labels.ndim != 1 or len(labels) != n:
        raise DataError(f"{path}: expected {n} labels, found shape {labels.shape}")
    if labels.dtype.kind not in "iu":
        raise DataError(f"{path}: labels must be integers 0..{top}, found dtype {labels.dtype}")
    bad = np.flatnonzero((labels < 0) | (labels > top))
    if len(bad):
        raise DataError(f"{path}: labels must be in 0..{top}; found {labels[bad[0]]} at index {bad[0]} "
                        f"({len(bad)} bad labels)")
    return labels.astype(np.int64)


def read_python_batch(path: Path, n: int, spec: CifarSpec) -> tuple[np.ndarray, np.ndarray]:
    """A pickled batch of `n` images: its 'data' and its `spec.label_key` labels."""
    obj = safe_pickle.load(path)
    key = spec.label_key
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a dict with 'data' and '{key}', found {type(obj).__name__}")
    # Python 2 wrote byte-string keys; a re-pickled copy may have str keys.
    entries = {(k.decode("latin-1") if isinstance(k, bytes) else k): v for k, v in obj.items()}
    missing = [k for k in ("data", key) if k not in entries]
    if missing:
        other = [s for s in SPECS.values() if s.label_key != key and s.label_key in entries]
        hint = f" (a {other[0].title} file? dataset: {other[0].name})" if other else ""
        raise DataError(f"{path}: missing key(s) {', '.join(missing)}; found {sorted(map(str, entries))}{hint}")
    data = entries["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.shape != (n, IMAGE_BYTES):
        found = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: 'data' must be a uint8 array of shape ({n}, {IMAGE_BYTES}); found {found}")
    try:
        labels = np.asarray(entries[key])
    except Exception:
        raise DataError(f"{path}: '{key}' is not a list of integers") from None
    return data, _check_labels(path, labels, n, spec)


def read_binary_batch(path: Path, n: int, spec: CifarSpec) -> tuple[np.ndarray, np.ndarray]:
    """A binary batch of `n` records: `spec.label_bytes` label bytes (the last is ours), then pixels."""
    head = spec.label_bytes
    record = head + IMAGE_BYTES
    expected = n * record
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    if raw.size != expected:
        what = "truncated" if raw.size < expected else "too long"
        raise DataError(
            f"{path}: {what}: {raw.size} bytes, expected {n} records of {record} bytes ({expected} bytes)"
        )
    records = raw.reshape(n, record)
    return np.ascontiguousarray(records[:, head:]), _check_labels(path, records[:, head - 1], n, spec)


def arrays_from(train_x, train_y, test_x, test_y, *, source, layout, classes: tuple[str, ...], batches_dir=None,
                names: tuple[str | None, str | None] | None = None) -> CifarArrays:
    """Wrap decoded arrays with both fingerprints, hashed side by side (hashlib releases the GIL), and
    their names (the exact name wins where known); `names` overrides the lookup."""
    args = (train_x, train_y, test_x, test_y)
    with ThreadPoolExecutor(max_workers=2) as pool:
        exact, content = pool.submit(fingerprint, *args), pool.submit(content_fingerprint, *args)
        exact, content = exact.result(), content.result()
    if names is None:
        content_name = KNOWN_CONTENT_FINGERPRINTS.get(content)
        names = KNOWN_FINGERPRINTS.get(exact) or content_name, content_name
    return CifarArrays(*args, source=str(source), layout=layout, fingerprint=exact, fingerprint_name=names[0],
                       classes=tuple(classes), content_fingerprint=content, content_fingerprint_name=names[1],
                       batches_dir=str(batches_dir or source))


def read_cifar(spec: CifarSpec, layout: str, source: str | Path, folder: str | Path, per_batch: int) -> CifarArrays:
    """Every batch file of `folder` (`source` itself, or a tarball's extraction): the test file holds exactly
    `per_batch` images, the training files TRAIN_BATCHES x `per_batch`."""
    folder, files = Path(folder), "python" if layout == "tarball" else layout
    names = spec.files(files)
    missing = [str(folder / n) for n in names if not (folder / n).is_file()]
    try:
        if missing:
            raise DataError(f"missing batch file(s): {', '.join(missing)} "
                            f"(a {files} {spec.title} folder has {', '.join(names)})")
        reader = read_python_batch if files == "python" else read_binary_batch
        per_train_file = TRAIN_BATCHES * per_batch // len(spec.train_files[files])
        train = [reader(folder / n, per_train_file, spec) for n in spec.train_files[files]]
        test_x, test_y = reader(folder / spec.test_files[files], per_batch, spec)
    except DataError as e:
        if layout != "tarball":
            raise
        raise DataError(f"{source}: {e} (delete {folder} to extract the tarball again)") from None
    train_x = np.concatenate([b[0] for b in train]).reshape(-1, *IMAGE_SHAPE)
    train_y = np.concatenate([b[1] for b in train])
    return arrays_from(train_x, train_y, test_x.reshape(-1, *IMAGE_SHAPE), test_y, source=source, layout=layout,
                       classes=spec.classes, batches_dir=folder)
