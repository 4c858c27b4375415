"""The pass's warnings on a compile that Inductor's caches serve (cached_warnings.py NOTE
[warnings on a cache hit]): a weight that trains clean is said to on every run, warm or cold."""

from __future__ import annotations

import warnings
from typing import Callable

import pytest
import torch
from torch import nn

import pqt_compile
from pqt_compile.compiler import cached_warnings

pytestmark = pytest.mark.private_api  # AOTAutograd's cache and Inductor's cache directory: CI reruns it on the newest torch


class _SplitQKV(nn.Module):
    """A fused weight split in the forward: the pass does not follow the split (it warns)."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(8, 24, bias=False)
        self.out = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv.weight.split(8)
        return self.out(nn.functional.linear(x, q) * nn.functional.linear(x, k) + nn.functional.linear(x, v))


def _train_step_warnings(make: Callable[[], nn.Module], batch: int = 4, **compile_kwargs) -> list[str]:
    """The pqt warnings of one training step of a fresh compile (Dynamo reset: Inductor's on-disk
    caches are what a second compile of the same graph can reuse)."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pqt_compile.compile(make(), **compile_kwargs)(torch.randn(batch, 8)).sum().backward()
    return [str(w.message) for w in caught if str(w.message).startswith("pqt:")]


def _aot_counts() -> dict:
    return dict(torch._dynamo.utils.counters["aot_autograd"])


def test_a_warm_cache_says_the_pass_warnings_again_and_a_lost_record_is_rebuilt(tmp_path, monkeypatch):
    """Before, the second compile (AOTAutograd's cache hit) trained qkv clean and said nothing."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    records = tmp_path / "pqt_warnings"
    torch._dynamo.utils.counters.clear()

    cold = _train_step_warnings(_SplitQKV)
    assert len(cold) == 1 and "weight 'qkv.weight' reaches a matmul through aten::split" in cold[0], cold
    assert _aot_counts().get("autograd_cache_saved") == 1, _aot_counts()

    warm = _train_step_warnings(_SplitQKV)
    assert _aot_counts().get("autograd_cache_hit") == 1, _aot_counts()  # the pass did not run ...
    assert warm == cold  # ... and its warning came back from the record
    [record] = list(records.iterdir())
    assert cached_warnings.load(record.stem) == cold

    record.unlink()  # a hit with no record (e.g. caches copied from another machine)
    assert _train_step_warnings(_SplitQKV) == cold
    assert _aot_counts().get("autograd_cache_hit") == 2, _aot_counts()
    assert cached_warnings.load(record.stem) == cold  # compiled past the cache once: the record is back


def test_a_warm_cache_of_a_graph_without_warnings_says_nothing_and_compiles_once(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    torch._dynamo.utils.counters.clear()
    make = lambda: nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))  # noqa: E731
    assert _train_step_warnings(make) == []
    assert _train_step_warnings(make) == []
    counts = _aot_counts()
    # One graph compiled twice: a miss, then a hit served whole (its record said "no warnings").
    assert counts.get("autograd_cache_miss") == 1 and counts.get("autograd_cache_hit") == 1, counts
    assert counts.get("total") == 2, counts
    [record] = list((tmp_path / "pqt_warnings").iterdir())
    assert cached_warnings.load(record.stem) == []


def test_a_dynamic_graph_first_called_at_another_size_finds_its_record(tmp_path, monkeypatch):
    """The key holds the inputs as Dynamo traced them (a dynamic dim is its symbol): before, the
    second size missed the record and compiled the graph once more at every warm start."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    torch._dynamo.utils.counters.clear()
    cold = _train_step_warnings(_SplitQKV, batch=4, dynamic=True)
    assert len(cold) == 1, cold
    assert _train_step_warnings(_SplitQKV, batch=5, dynamic=True) == cold
    counts = _aot_counts()
    assert counts.get("autograd_cache_hit") == 1 and counts.get("total") == 2, counts  # no third compile
    assert len(list((tmp_path / "pqt_warnings").iterdir())) == 1


def _with_body(body: Callable[[torch.Tensor], torch.Tensor]) -> torch.fx.GraphModule:
    """A graph whose only op calls the submodule `body`: what Dynamo makes of a checkpointed block
    (its body a graph module of its own, called by a higher-order op)."""
    root = nn.Module()
    root.body = torch.fx.symbolic_trace(body)
    graph = torch.fx.Graph()
    graph.output(graph.call_module("body", (graph.placeholder("x"),)))
    return torch.fx.GraphModule(root, graph)


def test_the_key_holds_the_code_of_submodules():
    """Two graphs alike but for a checkpointed body: before, they shared one record, and a warm
    run said the other body's warnings (or none)."""
    x = [torch.randn(4, 8)]
    split = _with_body(lambda t: t.split(4)[0])
    same = cached_warnings.record_key(split, x, "uuid")
    assert same == cached_warnings.record_key(_with_body(lambda t: t.split(4)[0]), x, "uuid")
    assert same != cached_warnings.record_key(_with_body(lambda t: t.relu()), x, "uuid")
    assert same != cached_warnings.record_key(split, [torch.randn(4, 6)], "uuid")
    assert same != cached_warnings.record_key(split, x, "another pass uuid")
    assert cached_warnings.record_key(split, x, None) is None  # explain's recording: no record
