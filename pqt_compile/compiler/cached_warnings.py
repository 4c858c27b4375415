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
every warm start, and is never a warning lost.

The records live in `<Inductor's cache directory>/pqt_warnings/`, one small JSON file per key:
removing the cache directory removes them with the entries they describe.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from typing import Any, Optional, Sequence

import torch

from ..compat import inductor_cache_dir

__all__ = ["record_key", "load", "save"]

log = logging.getLogger("pqt_compile.cached_warnings")

_SUBDIR = "pqt_warnings"
_LAYOUT = 1  # the record's format: a record of another layout is treated as missing


def record_key(gm: torch.fx.GraphModule, example_inputs: Sequence[Any], pass_uuid: Optional[str]) -> Optional[str]:
    """The key of a compile's record: the pass's uuid (its settings and the sources that shape its
    rewrite: passes/base.py NOTE [cache safety]), the Dynamo graph's code with pqt's inputs added,
    the inputs' metadata and the torch release. None when the pass has no uuid (explain's
    recording: Inductor's caches are bypassed and the pass always runs)."""
    if pass_uuid is None:
        return None
    h = hashlib.sha256()
    for part in (str(_LAYOUT), torch.__version__, pass_uuid, gm.code, *map(_describe, example_inputs)):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


def _describe(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        strides = x.stride() if x.layout == torch.strided else x.layout
        return f"{type(x).__name__} {x.dtype} {tuple(x.shape)} {strides} {x.device.type} {x.requires_grad}"
    if isinstance(x, (bool, int, float, str, type(None))):
        return f"{type(x).__name__} {x!r}"
    return type(x).__name__  # a SymInt, a device mesh: its type (the graph's code says how it is used)


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


def save(key: str, messages: Sequence[str]) -> None:
    """Record `messages` under `key`, atomically (ranks and processes sharing a cache directory
    write the same record). A directory that cannot be written leaves no record: the next cache
    hit compiles once more instead (NOTE [warnings on a cache hit])."""
    path = _path(key)
    folder = os.path.dirname(path)
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump({"layout": _LAYOUT, "warnings": list(messages)}, f)
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        log.debug("pqt: no record of the pass's warnings at %s (%s)", path, e)
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
