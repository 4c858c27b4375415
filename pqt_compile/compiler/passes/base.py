"""PQTPass: the base of pqt_compile's graph passes, cache-safe through uuid().

NOTE [cache safety]: Inductor's FX graph cache and AOTAutograd cache key a compile on the
Inductor config, which holds our custom pass; a pass object without a stable uuid() turns
the cache off, and one whose uuid() missed something that changes the rewrite would return
a graph compiled for other settings. uuid() therefore hashes the source of every module
that shapes the rewritten graph (the passes, the formula, the op, the block math, the graph
inputs' layout, the lowering and the codegen-target rules) plus `cache_key()`, which each pass extends with its settings.
The seed is a runtime input, never part of a key: another seed hits the same cache entries.

NOTE [recording]: passes keep nothing of a graph after they ran (no FX nodes, no fake tensors)
unless `recording()` is active, as explain / pqt-dump make it: then each pass's graph text
before and after, and what the SamplePass found, go to the active Recording, and the passes'
uuid() is None, so that no cache hit skips them.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import torch

from ...compat import custom_graph_pass_base, trace_artifact

__all__ = ["PQTPass", "source_hash", "recording", "active_recording", "Recording", "PassDump"]

log = logging.getLogger("pqt_compile.passes")
_PKG = Path(__file__).resolve().parents[2]  # the pqt_compile package
_SOURCES = ("formula.py", "formula_noise.py", "formula_nvfp4.py", "rounding.py", "op.py", "sample_parts.py", "formats.py", "blocks.py",
            "config.py", "selection.py", "sharding.py", "compiler/passes", "compiler/lowering", "compiler/graph_abi.py",
            "compiler/targets.py", "compat/inductor.py")  # compat/inductor.py: the wrappers' input checks (NOTE [0-d input asserts])


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


@dataclass
class Recording:
    """What the passes of the compiles inside `recording()` saw (NOTE [recording])."""

    dumps: list[PassDump] = field(default_factory=list)
    records: list[Any] = field(default_factory=list)  # SampleRecord, one per SamplePass run


_RECORDER: contextvars.ContextVar[Optional[Recording]] = contextvars.ContextVar("pqt_pass_recorder", default=None)


@contextlib.contextmanager
def recording() -> Iterator[Recording]:
    """Collect every pass's graph before and after it runs, and the SamplePass's findings."""
    rec = Recording()
    token = _RECORDER.set(rec)
    try:
        yield rec
    finally:
        _RECORDER.reset(token)


def active_recording() -> Optional[Recording]:
    """The Recording of the enclosing `recording()`, or None."""
    return _RECORDER.get()


class PQTPass(custom_graph_pass_base()):  # type: ignore[misc]
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

    @property
    def runs(self) -> int:
        """How many graphs this pass object has rewritten (0 after a compile that a cache served)."""
        return self._runs

    def cache_key(self) -> tuple[Any, ...]:
        return (type(self).__qualname__,)

    def uuid(self) -> Optional[str]:
        # None while recording: Inductor then bypasses its caches, so the pass runs and records.
        if active_recording() is not None:
            return None
        return hashlib.sha256(f"{source_hash()}|{self.cache_key()!r}".encode()).hexdigest()

    def __call__(self, graph: torch.fx.Graph) -> None:
        self._runs += 1
        self._dump(graph, "before")
        self.run(graph)
        self._dump(graph, "after")

    def _dump(self, graph: torch.fx.Graph, when: str) -> None:
        trace_artifact(f"{self.name}_{when}", lambda: str(graph))
        recorder = active_recording()
        if recorder is not None:
            recorder.dumps.append((self.name, self._runs, when, str(graph)))
        if not self.dump_dir:
            return
        os.makedirs(self.dump_dir, exist_ok=True)
        path = os.path.join(self.dump_dir, f"{self.name}.{self._runs}.{when}.txt")
        with open(path, "w") as f:
            f.write(str(graph))
        log.debug("pqt: wrote %s", path)
