"""PQTPass: the base of pqt_compile's graph passes, cache-safe through uuid().

NOTE [cache safety]: Inductor's FX graph cache and AOTAutograd cache key a compile on the
Inductor config, which holds our custom pass; a pass object without a stable uuid() turns
the cache off, and one whose uuid() missed something that changes the rewrite would return
a graph compiled for other settings. uuid() therefore hashes the source of every module
that shapes the rewritten graph (the passes, the formula, the op and the lowering) plus
`cache_key()`, which each pass extends with its settings.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import logging
import os
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
from torch._inductor.custom_graph_pass import CustomGraphPass

__all__ = ["PQTPass", "source_hash", "recording", "PassDump"]

log = logging.getLogger("pqt_compile.passes")
_PKG = Path(__file__).resolve().parent.parent
_SOURCES = ("formula.py", "op.py", "formats.py", "config.py", "passes", "lowering")


def source_hash() -> str:
    """sha256 over the sources that shape a rewritten graph (computed once per process)."""
    global _SOURCE_HASH
    if _SOURCE_HASH is None:
        h = hashlib.sha256()
        for name in _SOURCES:
            p = _PKG / name
            files = sorted(p.rglob("*.py")) if p.is_dir() else [p]
            for f in files:
                h.update(str(f.relative_to(_PKG)).encode())
                h.update(f.read_bytes())
        _SOURCE_HASH = h.hexdigest()
    return _SOURCE_HASH


_SOURCE_HASH: Optional[str] = None

PassDump = tuple[str, int, str, str]  # (pass name, run, "before" | "after", graph text)
_RECORDER: contextvars.ContextVar[Optional[list]] = contextvars.ContextVar("pqt_pass_recorder", default=None)


@contextlib.contextmanager
def recording() -> Iterator[list]:
    """Collect every pass's graph before and after it runs (for explain / pqt-dump)."""
    dumps: list = []
    token = _RECORDER.set(dumps)
    try:
        yield dumps
    finally:
        _RECORDER.reset(token)


class PQTPass(CustomGraphPass):
    """A graph pass with a stable uuid and optional before/after dumps.

    Subclasses implement `run(graph)` and extend `cache_key()`. Set the environment variable
    PQT_DUMP_DIR (or `dump_dir`) to write each pass's graph before and after it runs.
    """

    name = "pqt_pass"

    def __init__(self, dump_dir: Optional[str] = None) -> None:
        self.dump_dir = dump_dir or os.environ.get("PQT_DUMP_DIR")
        self._runs = 0

    def run(self, graph: torch.fx.Graph) -> None:
        raise NotImplementedError

    def cache_key(self) -> tuple[Any, ...]:
        return (type(self).__qualname__,)

    def uuid(self) -> str:
        return hashlib.sha256(f"{source_hash()}|{self.cache_key()!r}".encode()).hexdigest()

    def __call__(self, graph: torch.fx.Graph) -> None:
        self._runs += 1
        self._dump(graph, "before")
        self.run(graph)
        self._dump(graph, "after")

    def _dump(self, graph: torch.fx.Graph, when: str) -> None:
        # Structured trace artifacts: free unless TORCH_TRACE is set (tlparse shows them
        # next to PyTorch's own graphs).
        from torch._logging import trace_structured

        trace_structured(
            "artifact",
            metadata_fn=lambda: {"name": f"{self.name}_{when}", "encoding": "string"},
            payload_fn=lambda: str(graph),
        )
        recorder = _RECORDER.get()
        if recorder is not None:
            recorder.append((self.name, self._runs, when, str(graph)))
        if not self.dump_dir:
            return
        os.makedirs(self.dump_dir, exist_ok=True)
        path = os.path.join(self.dump_dir, f"{self.name}.{self._runs}.{when}.txt")
        with open(path, "w") as f:
            f.write(str(graph))
        log.debug("pqt: wrote %s", path)
