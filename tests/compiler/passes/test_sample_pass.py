"""SamplePass: what it keeps after a compile (NOTE [recording] in compiler/passes/base.py)."""

import gc
import weakref

import torch
from torch._subclasses.fake_tensor import FakeTensor

from models import MLP
from pqt_compile.compiler.passes import sample_pass
from pqt_compile.compiler.passes.base import recording
import pytest

pytestmark = pytest.mark.private_api  # exercises private torch/Triton APIs: CI reruns it on the newest torch


def _holds_graph_objects(obj, depth: int = 6) -> list[str]:
    """Paths from `obj` (through attributes, dicts, lists, tuples) to FX nodes or fake tensors."""
    found, seen = [], set()
    stack = [(obj, "pass")]
    while stack:
        o, path = stack.pop()
        if id(o) in seen or path.count(".") + path.count("[") > depth:
            continue
        seen.add(id(o))
        if isinstance(o, (torch.fx.Node, FakeTensor, torch.fx.Graph)):
            found.append(path)
            continue
        if isinstance(o, dict):
            stack += [(v, f"{path}[{k!r}]") for k, v in o.items()]
        elif isinstance(o, (list, tuple, set)):
            stack += [(v, f"{path}[{i}]") for i, v in enumerate(o)]
        elif hasattr(o, "__dict__") and type(o).__module__.startswith("pqt_compile"):
            stack += [(v, f"{path}.{k}") for k, v in vars(o).items()]
    return found


def _compile_and_run(monkeypatch) -> list:
    passes: list = []
    real_init = sample_pass.SamplePass.__init__

    def spy(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        passes.append(self)

    monkeypatch.setattr(sample_pass.SamplePass, "__init__", spy)
    torch._dynamo.reset()
    torch.manual_seed(0)
    m = MLP()
    torch.compile(m, backend="pqt")(torch.randn(4, 32)).sum().backward()
    return passes


def test_the_pass_keeps_no_graph_objects_after_the_compile(monkeypatch):
    passes = _compile_and_run(monkeypatch)
    assert passes  # the pass ran
    refs = [weakref.ref(p) for p in passes]
    del passes
    gc.collect()
    for r in refs:
        p = r()
        if p is not None:  # still alive (held by Inductor's config snapshot): then it must be light
            assert not _holds_graph_objects(p), _holds_graph_objects(p)


def test_while_recording_the_pass_reports_summaries_without_graph_objects(monkeypatch):
    with recording() as rec:
        _compile_and_run(monkeypatch)
    assert rec.records and any(r.sampled and r.edges for r in rec.records)
    assert {e.name for r in rec.records for e in r.edges} == {"fc1.weight", "fc2.weight"}
    assert not _holds_graph_objects(rec.records)
