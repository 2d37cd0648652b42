"""The test suite's own helpers, imported from tests/ by path (bench/ has a conftest.py of its own)."""

from __future__ import annotations

import importlib.util
import sys

from gpu_check.plan import REPO


def test_module(name: str):
    """tests/<name>.py as a module (tests/conftest.py: the `Fz` runner and the bitwise comparisons)."""
    key = f"gpu_check_tests_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, REPO / "tests" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[key]
            raise
    return sys.modules[key]
