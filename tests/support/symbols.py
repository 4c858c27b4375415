"""Resolving a dotted path to a private torch / Triton symbol, for the test-support modules'
version checks (triton_cpu.unavailable, fake_cuda.missing_symbols)."""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["resolve"]


def resolve(path: str) -> Any:
    """The object at `path` ("pkg.module.Class.attr"): the longest importable module prefix, then
    attributes. Raises ImportError or AttributeError where the symbol has moved."""
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for name in parts[i:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(path)
