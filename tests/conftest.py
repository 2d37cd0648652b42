"""Shared fixtures: tiny CIFAR-10 and CIFAR-100 folders in every official layout, and an isolated cache.

`make_cifar_dir(tmp_path, layout, per_batch=20)` writes a data folder that the
loader reads exactly like the real one (python pickles in the official Python 2
style, the binary records, or the gzip tarball) and returns the arrays it holds,
so a test compares what was loaded with what was written. Load it with
`sources.load_dataset("cifar10", fx.root, download=False, per_batch=fx.per_batch)`.
`dataset="cifar100"` writes CIFAR-100's files instead (`train`/`test` with fine and
coarse labels, 2-byte binary labels).

The fault-injection tests (test_faults_*.py, test_bad_input.py) share the helpers
at the end: `Fz` runs a real `fastzhang` process, `reference_run` trains an
uninterrupted reference once per session, `assert_same_training` compares two
checkpoints bitwise.
"""

from __future__ import annotations

import contextlib
import http.server
import io
import math
import os
import pickle
import re
import struct
import subprocess
import sys
import tarfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
LAYOUTS = ("python", "binary", "tarball")
PY_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
BIN_FILES = tuple(f"{n}.bin" for n in PY_FILES)
CLASSES = (b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck")


@dataclass(frozen=True)
class Format:
    """One data set's official files, as these fixtures write them (independently of fastzhang's CifarSpec)."""

    python_dir: str
    binary_dir: str
    tarball: str
    python_files: tuple[str, ...]  # the training files, then the test file
    num_classes: int


FORMATS = {
    "cifar10": Format("cifar-10-batches-py", "cifar-10-batches-bin", "cifar-10-python.tar.gz", PY_FILES, 10),
    "cifar100": Format("cifar-100-python", "cifar-100-binary", "cifar-100-python.tar.gz", ("train", "test"), 100),
}
_USER_CACHE = {k: os.environ.get(k) for k in ("FASTZHANG_CACHE", "XDG_CACHE_HOME", "HOME")}


@dataclass
class CifarFixture:
    root: Path  # the data folder to hand to the loader
    path: Path  # the batches folder or the tarball inside it
    layout: str
    per_batch: int
    train_images: np.ndarray  # uint8 [5 * per_batch, 3, 32, 32]
    train_labels: np.ndarray  # int64
    test_images: np.ndarray
    test_labels: np.ndarray

    def arrays(self):
        return self.train_images, self.train_labels, self.test_images, self.test_labels


def cifar_arrays(per_batch: int = 20, seed: int = 0, num_classes: int = 10):
    """(train_x, train_y, test_x, test_y) shaped like CIFAR-10 with 5 * per_batch / per_batch images."""
    g = np.random.default_rng(seed)
    n_train = 5 * per_batch
    train_x = g.integers(0, 256, size=(n_train, 3, 32, 32), dtype=np.uint8)
    test_x = g.integers(0, 256, size=(per_batch, 3, 32, 32), dtype=np.uint8)
    train_y = g.permutation(np.arange(n_train, dtype=np.int64) % num_classes)
    test_y = g.permutation(np.arange(per_batch, dtype=np.int64) % num_classes)
    return train_x, train_y, test_x, test_y


def numpy_preprocess(images: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Reference for data.preprocess in float64 numpy: scale to [0, 1], crop 28x28 at
    (dy, dx), then (x - mean) / max(std, 1/sqrt(28*28*3)) per image (population std)."""
    out = []
    for img, (dy, dx) in zip(images, offsets):
        x = img[:, dy:dy + 28, dx:dx + 28].astype(np.float64) / 255.0
        out.append((x - x.mean()) / max(x.std(), 1.0 / math.sqrt(28 * 28 * 3)))
    return np.stack(out)


# ------------------------------------------------------------------------------------------
# Pickles as the official release has them: protocol 2, written by Python 2


class Py2Pickler(pickle._Pickler):
    """Protocol 2 as Python 2 wrote it: bytes as BINSTRING (not _codecs.encode), numpy.core paths."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_bytes(self, obj: bytes) -> None:
        n = len(obj)
        head = pickle.SHORT_BINSTRING + bytes((n,)) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)
        self.write(head + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_bytes

    def save_py2_str(self, obj: str) -> None:  # Python 2 str (numpy's dtype codes) was bytes
        self.save_py2_bytes(obj.encode("ascii")) if obj.isascii() else pickle._Pickler.save_str(self, obj)

    dispatch[str] = save_py2_str

    def save_global(self, obj, name=None):
        if getattr(obj, "__name__", None) == "_reconstruct":  # numpy 2 says numpy._core
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)


def py2_pickle(obj) -> bytes:
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def batch_dict(images: np.ndarray, labels: np.ndarray, name: str, style: str = "py2", dataset: str = "cifar10") -> dict:
    """A batch file's dict; CIFAR-100's holds fine labels and the coarse ones (here fine // 5)."""
    data = np.ascontiguousarray(images.reshape(len(images), -1))
    fnames = [f"img_{i:05d}.png" for i in range(len(labels))]
    if dataset == "cifar100":
        named = {"fine_labels": [int(v) for v in labels], "coarse_labels": [int(v) // 5 for v in labels]}
    else:
        named = {"labels": [int(v) for v in labels]}
    entries = {"batch_label": name, **named, "data": data, "filenames": fnames}
    if style == "py2":  # Python 2 str is bytes: keys, batch label and file names
        return {k.encode(): (v.encode() if isinstance(v, str) else [f.encode() for f in v] if k == "filenames" else v)
                for k, v in entries.items()}
    return entries


def dump_batch(obj, style: str = "py2") -> bytes:
    """py2: the official files' form; py3: a re-pickled copy (protocol 4, str keys)."""
    return py2_pickle(obj) if style == "py2" else pickle.dumps(obj, protocol=4)


# ------------------------------------------------------------------------------------------
# Writers


def _split(arrays, per_batch, dataset="cifar10"):
    """[(images, labels)] per file: the training files share 5 * per_batch images, the test file holds per_batch."""
    train_x, train_y, test_x, test_y = arrays
    files = len(FORMATS[dataset].python_files) - 1
    size = 5 * per_batch // files
    parts = [(train_x[i * size:(i + 1) * size], train_y[i * size:(i + 1) * size]) for i in range(files)]
    return parts + [(test_x, test_y)]


def _meta(dataset: str, per_batch: int) -> tuple[str, dict]:
    if dataset == "cifar100":
        return "meta", {b"fine_label_names": [f"fine_{k}".encode() for k in range(100)],
                        b"coarse_label_names": [f"coarse_{k}".encode() for k in range(20)]}
    return "batches.meta", {b"label_names": list(CLASSES), b"num_cases_per_batch": per_batch, b"num_vis": 3072}


def write_python_dir(folder: Path, arrays, per_batch: int, style: str = "py2", dataset: str = "cifar10") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, (x, y) in zip(FORMATS[dataset].python_files, _split(arrays, per_batch, dataset)):
        (folder / name).write_bytes(dump_batch(batch_dict(x, y, name, style, dataset), style))
    meta_name, meta = _meta(dataset, per_batch)
    (folder / meta_name).write_bytes(py2_pickle(meta))
    return folder


def write_binary_dir(folder: Path, arrays, per_batch: int, dataset: str = "cifar10") -> Path:
    """Records of label byte(s) + 3072 pixels; CIFAR-100's lead with the coarse label, then the fine one."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, (x, y) in zip(FORMATS[dataset].python_files, _split(arrays, per_batch, dataset)):
        heads = [y // 5, y] if dataset == "cifar100" else [y]
        records = np.concatenate([*(h.astype(np.uint8)[:, None] for h in heads), x.reshape(len(x), -1)], axis=1)
        (folder / f"{name}.bin").write_bytes(records.tobytes())
    (folder / "batches.meta.txt").write_text("\n".join(c.decode() for c in CLASSES) + "\n")
    return folder


def write_tarball(path: Path, arrays, per_batch: int, style: str = "py2", skip: tuple[str, ...] = (),
                  dataset: str = "cifar10") -> Path:
    """The official tarball's shape: cifar-10-batches-py/<files> (or cifar-100-python/); `skip` leaves files out."""
    fmt = FORMATS[dataset]
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        for name, (x, y) in [*zip(fmt.python_files, _split(arrays, per_batch, dataset))]:
            if name in skip:
                continue
            blob = dump_batch(batch_dict(x, y, name, style, dataset), style)
            info = tarfile.TarInfo(f"{fmt.python_dir}/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path


def make_cifar_dir(tmp_path: Path, layout: str = "python", *, per_batch: int = 20, seed: int = 0,
                   style: str = "py2", name: str | None = None, dataset: str = "cifar10") -> CifarFixture:
    """A data folder `tmp_path/<name or data-layout>` holding a tiny CIFAR-10 (or CIFAR-100) in `layout`."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}")
    fmt = FORMATS[dataset]
    arrays = cifar_arrays(per_batch, seed, fmt.num_classes)
    root = tmp_path / (name or f"data-{layout}")
    if layout == "python":
        path = write_python_dir(root / fmt.python_dir, arrays, per_batch, style, dataset)
    elif layout == "binary":
        path = write_binary_dir(root / fmt.binary_dir, arrays, per_batch, dataset)
    else:
        path = write_tarball(root / fmt.tarball, arrays, per_batch, style, dataset=dataset)
    return CifarFixture(root, path, layout, per_batch, *arrays)


@contextlib.contextmanager
def served(folder: Path):
    """Serve `folder` over HTTP on 127.0.0.1 (never the network); yields the base URL."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(folder), **k)

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


# ------------------------------------------------------------------------------------------
# Fixtures


DRY_ENV = "FASTZHANG_GPU_DRY_RUN"


@pytest.fixture(scope="session")
def device():
    """The device of the tests and benchmarks marked `cuda`: CUDA when there is one, unless
    FASTZHANG_GPU_DRY_RUN=1; the CPU otherwise. bench/conftest.py shares this fixture."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() and os.environ.get(DRY_ENV) != "1" else "cpu")


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch) -> Path:
    """Every test extracts into its own cache, never the user's ~/.cache."""
    cache = tmp_path_factory.mktemp("fastzhang-cache")
    monkeypatch.setenv("FASTZHANG_CACHE", str(cache))
    return cache


@pytest.fixture
def make_cifar(tmp_path):
    """Factory: make_cifar("binary", per_batch=20, seed=1) -> CifarFixture under tmp_path."""
    return lambda layout="python", **kw: make_cifar_dir(tmp_path, layout, **kw)


@pytest.fixture(params=LAYOUTS)
def cifar_any(request, tmp_path) -> CifarFixture:
    """The same tiny data set once per layout."""
    return make_cifar_dir(tmp_path, request.param)


@pytest.fixture(params=LAYOUTS)
def cifar100_any(request, tmp_path) -> CifarFixture:
    """A tiny CIFAR-100 once per layout."""
    return make_cifar_dir(tmp_path, request.param, dataset="cifar100")


@pytest.fixture
def cifar_python(tmp_path) -> CifarFixture:
    return make_cifar_dir(tmp_path, "python")


@pytest.fixture
def cifar_binary(tmp_path) -> CifarFixture:
    return make_cifar_dir(tmp_path, "binary")


@pytest.fixture
def cifar_tarball(tmp_path) -> CifarFixture:
    return make_cifar_dir(tmp_path, "tarball")


def find_shared_cifar() -> Path | None:
    """The real CIFAR-10: $FASTZHANG_DATA if it holds it, else ../shared/data beside the repo."""
    for candidate in (os.environ.get("FASTZHANG_DATA"), REPO.parent / "shared" / "data"):
        if not candidate:
            continue
        p = Path(candidate)
        if (p / "cifar-10-python.tar.gz").is_file() or (p / "cifar-10-batches-py").is_dir():
            return p
    return None


@pytest.fixture
def shared_cifar() -> Path:
    """Path of the real CIFAR-10, or skip the test."""
    path = find_shared_cifar()
    if path is None:
        pytest.skip("real CIFAR-10 not found (set FASTZHANG_DATA or provide ../shared/data)")
    return path


@pytest.fixture
def user_env() -> dict:
    """os.environ with the user's own cache settings (a real-data test reuses their extraction)."""
    env = dict(os.environ)
    for key, value in _USER_CACHE.items():
        env.pop(key, None)
        if value is not None:
            env[key] = value
    return env


# ------------------------------------------------------------------------------------------
# Fault-injection helpers: real `fastzhang` processes, their output, reference runs


FZ = (sys.executable, "-m", "fastzhang")
# The tiny real run of the fault-injection tests: 1,024 synthetic images, 64 steps per epoch.
# Random labels keep every step's gradient large, so a skipped or repeated step shows in the weights.
TINY_RUN = ("run", "--model", "mlp1", "--dataset", "synthetic", "--randomization", "random_labels",
            "--batch-size", "16", "--device", "cpu")
# Timing is measured, not computed: it may differ between two runs of the same experiment.
TIMING = ("epoch_seconds", "eval_seconds", "images_per_second")


def fz_env(**extra: str) -> dict:
    """The environment of a `fastzhang` child process.

    One thread per process: a result is bitwise reproducible only at a fixed thread
    count, and two OpenMP threads per process on a shared 2-core machine spin-wait on
    each other until the run crawls.
    """
    # A PYTHONPATH of ours comes first: `make gpu-check` puts its offline install of fastzhang there.
    path = os.pathsep.join(filter(None, (os.environ.get("PYTHONPATH"), str(REPO))))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": path}
    env.update(extra)
    return env


class Fz:
    """One `python -m fastzhang ...` child process; stdout and stderr go to files (no pipe can fill)."""

    def __init__(self, args, cwd: Path, *, name: str = "fz", env: dict | None = None, logs: Path | None = None):
        self.cwd = Path(cwd)
        logs = Path(logs or cwd)
        self.out_path, self.err_path = logs / f"{name}.out", logs / f"{name}.err"
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen([*FZ, *map(str, args)], cwd=self.cwd, stdout=out, stderr=err,
                                         stdin=subprocess.DEVNULL, env=env or fz_env())
        self.pid = self.proc.pid

    @property
    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def wait(self, timeout: float = 120) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"`fastzhang` did not finish in {timeout} s; stderr:\n{self.stderr[-2000:]}")

    def wait_for(self, pattern: str, timeout: float = 60) -> re.Match:
        """The first match of `pattern` in stderr, waiting for it while the process runs."""
        deadline = time.monotonic() + timeout
        while True:
            found = re.search(pattern, self.stderr)
            if found:
                return found
            if self.proc.poll() is not None and not re.search(pattern, self.stderr):
                raise AssertionError(f"exited with {self.proc.returncode} before {pattern!r}:\n{self.stderr[-2000:]}")
            if time.monotonic() > deadline:
                self.proc.kill()
                raise AssertionError(f"no {pattern!r} on stderr within {timeout} s:\n{self.stderr[-2000:]}")
            time.sleep(0.01)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def stderr_lines(text: str) -> list[str]:
    """Non-empty stderr lines, with progress-bar redraws (carriage returns) dropped."""
    return [line.split("\r")[-1] for line in text.splitlines() if line.split("\r")[-1].strip()]


def files_under(folder: Path, *, skip_locks: bool = True) -> dict[str, bytes]:
    """Every file below `folder` (relative name -> bytes); lock files hold a pid only while held."""
    folder = Path(folder)
    if not folder.is_dir():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not (skip_locks and p.name.endswith(".lock"))}


def temporaries(*folders: Path) -> set[str]:
    """Names of the hidden `.tmp` files atomic_write leaves when its process dies mid-write."""
    return {p.name for folder in folders if Path(folder).is_dir() for p in Path(folder).glob(".*.tmp")}


def run_cli(argv: list[str]) -> int:
    """`fastzhang.cli.main(argv)` in this process, with argparse's SystemExit turned into its code."""
    from fastzhang.cli import main

    try:
        return main([str(a) for a in argv])
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1


def assert_same_training(got: dict, want: dict) -> None:
    """Bitwise-equal model, optimizer and scheduler state and progress; equal metric lists (timing aside)."""
    import torch

    assert (got["epoch"], got["step_in_epoch"], got["global_step"]) == \
        (want["epoch"], want["step_in_epoch"], want["global_step"])
    assert got["model_state_dict"].keys() == want["model_state_dict"].keys()
    for key, tensor in want["model_state_dict"].items():
        assert torch.equal(got["model_state_dict"][key], tensor), key
    assert got["optimizer_state_dict"]["state"].keys() == want["optimizer_state_dict"]["state"].keys()
    for index, buffers in want["optimizer_state_dict"]["state"].items():
        for name, value in buffers.items():
            assert torch.equal(got["optimizer_state_dict"]["state"][index][name], value), (index, name)
    assert got["optimizer_state_dict"]["param_groups"] == want["optimizer_state_dict"]["param_groups"]
    assert got["scheduler_state_dict"] == want["scheduler_state_dict"]
    assert got["best_test_acc"] == want["best_test_acc"]
    assert_same_metrics(got["all_metrics"], want["all_metrics"])


def assert_same_metrics(got: dict, want: dict) -> None:
    """Equal metric series (a checkpoint's `all_metrics`), timing aside."""
    assert got.keys() == want.keys()
    for key, value in want.items():
        if key not in TIMING:
            assert got[key] == value, key


def assert_same_results(got: dict, want: dict) -> None:
    """Two results files of one experiment: equal metrics, series and summaries, timing aside."""
    series = lambda m: {k: v for k, v in m.items() if isinstance(v, list)}  # noqa: E731
    assert_same_metrics(series(got["metrics"]), series(want["metrics"]))
    for key in ("best_test_acc", "final_train_acc", "final_test_acc", "fit_epoch", "fit_step"):
        assert got["metrics"][key] == want["metrics"][key], key
    assert (got["completed"], got["total_epochs"]) == (want["completed"], want["total_epochs"])


class ReferenceRun:
    """An uninterrupted `fastzhang run` in its own folder, started at once, read when needed."""

    def __init__(self, args: tuple[str, ...], folder: Path):
        self.args, self.folder = args, folder
        self.fz = Fz([*args, "--quiet"], folder, name="reference")
        self._result = None

    def result(self) -> tuple[dict, dict]:
        """(final checkpoint payload, results file) of the finished run."""
        if self._result is None:
            from fastzhang import checkpoint, results

            assert self.fz.wait(timeout=300) == 0, self.fz.stderr
            [ckpt] = (self.folder / "checkpoints").glob("*_checkpoint.pth")
            [entry] = results.scan(self.folder / "results")
            assert entry.problem is None, entry.problem
            self._result = checkpoint.load(ckpt), entry.payload
        return self._result


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory):
    """reference_run(args) -> ReferenceRun: one uninterrupted run per argument list, shared by tests.

    Call it first thing in a test, so the reference trains while the test does its own work.
    """
    runs: dict[tuple[str, ...], ReferenceRun] = {}

    def get(args) -> ReferenceRun:
        args = tuple(map(str, args))
        if args not in runs:
            runs[args] = ReferenceRun(args, tmp_path_factory.mktemp("reference"))
        return runs[args]

    yield get
    for run in runs.values():
        run.fz.kill()


@pytest.fixture(scope="module")
def one_thread():
    """Train in this process on one thread, like the `fastzhang` children (see fz_env)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def in_tmp_path(tmp_path, monkeypatch, one_thread):
    """`run_cli` commands in tmp_path (where the default checkpoints/ and results/ go), on one thread."""
    monkeypatch.chdir(tmp_path)
