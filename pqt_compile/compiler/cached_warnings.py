"""The SamplePass's warnings, kept beside Inductor's caches for the compiles those caches serve.

NOTE [warnings on a cache hit]: the pass warns when an admitted weight reaches a matmul by a path
it does not follow (weight_edges.py NOTE [ops not followed]): that weight trains without noise.
The pass runs inside AOTAutograd, so a compile that AOTAutograd's cache serves (the second run of
the same script, with Inductor's cache directory warm) does not run it: the weight trained clean
and nothing said so. Each compile's warnings (none, too) are therefore written next to Inductor's
caches, under a key of what decides them (`record_key`), and a compile whose pass did not run says
them again. A cache hit with no record (caches copied from another machine, written by an older
pqt_compile, or a record removed) is compiled once more past AOTAutograd's cache
(compat.compile_fx's autograd_cache=False): the pass runs and its record is written. That costs
the tracing and partitioning that the cache saves, once (about 3 s for GPT-2 4 x 128 on the CPU;
Inductor's FX graph cache still serves the kernels). A record that cannot be written costs that at
every warm start (said once per process, as a logged warning), and is never a warning lost.

The records live in `<Inductor's cache directory>/pqt_warnings/`, one small JSON file per key,
written whether or not Inductor's caches are on and never evicted: removing the cache directory
removes them with the entries they describe. Caches moved to another machine
(`torch.compiler.save_cache_artifacts` / `load_cache_artifacts`, a remote AOTAutograd cache) do
not carry them: there each graph compiles once more on its first warm start, unless the
`pqt_warnings` folder is copied along.

The key describes the Dynamo graph as AOTAutograd's cache does, up to what decides the pass's
findings: the code of every graph module in it (a checkpointed or otherwise wrapped body is a
submodule of its own) and each input's metadata as Dynamo traced it (`example_value`: a dynamic
dim is its symbol, so a dynamic graph's first call at another size finds the record).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from typing import Any, Callable, Optional, Protocol, Sequence, TypeVar

import torch

from ..compat import inductor_cache_dir
from .passes.sample_pass import warn_all

__all__ = ["record_key", "compile_and_warn", "load", "save"]

log = logging.getLogger("pqt_compile.cached_warnings")

_SUBDIR = "pqt_warnings"
_LAYOUT = 1  # the record's format: a record of another layout is treated as missing
_T = TypeVar("_T")


class _WarningPass(Protocol):
    """What `compile_and_warn` reads of the SamplePass."""

    runs: int  # graphs it rewrote in this compile (0: a cache served it)
    warnings: list[str]  # what those runs warned

    def uuid(self) -> Optional[str]: ...


def record_key(gm: torch.fx.GraphModule, example_inputs: Sequence[Any], pass_uuid: Optional[str]) -> Optional[str]:
    """The key of a compile's record: the pass's uuid (its settings and the sources that shape its
    rewrite: passes/base.py NOTE [cache safety]), the code of every graph module in `gm` (the
    Dynamo graph with pqt's inputs added), its inputs' metadata as Dynamo traced them (else as
    given) and the torch release. None when the pass has no uuid (explain's recording: Inductor's
    caches are bypassed and the pass always runs)."""
    if pass_uuid is None:
        return None
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    traced = [n.meta.get("example_value", x) for n, x in zip(placeholders, example_inputs)]
    codes = [f"{name}\n{m.code}" for name, m in sorted(gm.named_modules()) if isinstance(m, torch.fx.GraphModule)]
    h = hashlib.sha256()
    for part in (str(_LAYOUT), torch.__version__, pass_uuid, *codes, str(len(example_inputs)), *map(_describe, traced)):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


def _describe(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        strides = [str(s) for s in x.stride()] if x.layout == torch.strided else x.layout
        shape = [str(d) for d in x.shape]  # a dynamic dim of a traced value: its symbol
        return f"{x.dtype} {shape} {strides} {x.device.type} {x.requires_grad}"
    if isinstance(x, (bool, int, float, str, type(None))):
        return f"{type(x).__name__} {x!r}"
    return type(x).__name__  # a SymInt, a device mesh: its type (the graph's code says how it is used)


def compile_and_warn(compile: Callable[[bool], _T], pass_: _WarningPass, gm: torch.fx.GraphModule,
                     example_inputs: Sequence[Any]) -> _T:
    """`compile(autograd_cache)` of `gm`, with the pass's warnings said whether or not it ran (NOTE
    [warnings on a cache hit]): from its record when a cache served the compile, and by compiling
    once more past AOTAutograd's cache when there is no record. The key is taken before compiling
    (Inductor's pre-grad passes may rewrite `gm`)."""
    key = record_key(gm, example_inputs, pass_.uuid())
    fn = compile(True)
    if key is None:
        return fn
    if not pass_.runs:
        recorded = load(key)
        if recorded is not None:
            warn_all(recorded)
            return fn
        fn = compile(False)
    save(key, pass_.warnings)
    return fn


def _path(key: str) -> str:
    return os.path.join(inductor_cache_dir(), _SUBDIR, f"{key}.json")


def load(key: str) -> Optional[list[str]]:
    """The warnings recorded under `key`, or None if there is no readable record."""
    try:
        with open(_path(key)) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    messages = data.get("warnings") if isinstance(data, dict) and data.get("layout") == _LAYOUT else None
    if isinstance(messages, list) and all(isinstance(m, str) for m in messages):
        return messages
    return None


_unwritable_said = False


def save(key: str, messages: Sequence[str]) -> None:
    """Record `messages` under `key`, atomically (ranks and processes sharing a cache directory
    write the same record). Where no record can be written, the next cache hit compiles once more
    instead (NOTE [warnings on a cache hit]); that is logged once per process."""
    global _unwritable_said
    tmp = None
    try:
        path = _path(key)
        folder = os.path.dirname(path)
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump({"layout": _LAYOUT, "warnings": list(messages)}, f)
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        if not _unwritable_said:
            _unwritable_said = True
            log.warning("pqt: cannot record the pass's warnings under %s (%s): each warm start will compile "
                        "every PQT graph once more to say them; make that folder writable", _SUBDIR, e)
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
