"""A restricted unpickler for the python layout of CIFAR-10 and CIFAR-100.

`pickle.load` runs whatever callable a file names, so a crafted `data_batch_1`
could execute code the moment it is read. The official batches (protocol-2
pickles written by Python 2) only ever name three globals: numpy's array
reconstructor, `numpy.ndarray` and `numpy.dtype`. `load` admits exactly those,
under either numpy module path (`numpy.core` before numpy 2, `numpy._core`
after), and refuses every other global with a `DataError` naming the file,
before anything runs.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from fastzhang.errors import DataError

# numpy 2 moved numpy.core to numpy._core; importing numpy.core now only warns,
# so take the reconstructor from ndarray's own pickling recipe instead.
_RECONSTRUCT = np.ndarray((0,), np.uint8).__reduce__()[0]

ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class ForbiddenGlobal(pickle.UnpicklingError):
    """The pickle names a global that a CIFAR batch never contains."""


class RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED[(module, name)]
        except KeyError:
            raise ForbiddenGlobal(f"{module}.{name}") from None


def load(path: str | Path) -> Any:
    """Unpickle `path` admitting only numpy arrays and dtypes; Python 2 `str` objects (the official files' keys,
    labels and pixels) stay `bytes`, as the official loader expects."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return RestrictedUnpickler(f, encoding="bytes").load()
    except ForbiddenGlobal as e:
        raise DataError(f"{path}: refused to unpickle: it asks for {e}, which a CIFAR batch never contains "
                        "(only numpy arrays are allowed); the file is corrupt or was crafted") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    except Exception as e:  # any failure to decode garbage is a bad file, never a crash
        reason = "file is truncated" if isinstance(e, EOFError) else f"{type(e).__name__}: {e}"
        raise DataError(f"{path}: not a readable CIFAR pickle ({reason})") from None
