"""graph_abi.py: the seed and keys inputs, in one place."""

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from pqt_compile.compiler import graph_abi

pytestmark = pytest.mark.private_api  # exercises private torch/Triton APIs: CI reruns it on the newest torch


def _graph_with(seed_val, keys_val):
    g = torch.fx.Graph()
    w = g.placeholder("w")
    seed, keys = graph_abi.add_inputs(g, dynamo=False)
    g.output(w)
    with FakeTensorMode():
        w.meta["val"] = torch.empty(4, 4)
        seed.meta["val"], keys.meta["val"] = seed_val(), keys_val()
    return g


def test_inputs_are_appended_after_the_graphs_own_and_found_by_their_values():
    g = _graph_with(lambda: torch.empty((), dtype=torch.int64), lambda: torch.empty(1, dtype=torch.int64))
    names = [n.name for n in g.nodes if n.op == "placeholder"]
    assert names == ["w", graph_abi.SEED, graph_abi.KEYS]
    primals = [n for n in g.nodes if n.op == "placeholder"]
    assert graph_abi.find_inputs(primals, 1) == (primals[1], primals[2])


@pytest.mark.parametrize("seed_val,keys_val,num", [
    (lambda: torch.empty((), dtype=torch.float32), lambda: torch.empty(1, dtype=torch.int64), 1),  # a weight where the seed was
    (lambda: torch.empty((), dtype=torch.int64), lambda: torch.empty(2, dtype=torch.int64), 1),  # keys of another graph
])
def test_a_layout_that_moved_is_refused(seed_val, keys_val, num):
    primals = [n for n in _graph_with(seed_val, keys_val).nodes if n.op == "placeholder"]
    with pytest.raises(RuntimeError, match="lays out AOTAutograd"):
        graph_abi.find_inputs(primals, num)


def test_example_and_runtime_values():
    ex = graph_abi.example_inputs([torch.ones(2)], 3, torch.device("cpu"))
    assert ex[1].dtype == torch.int64 and ex[1].dim() == 0 and ex[2].shape == (3,)
    keys = graph_abi.keys_tensor([5, graph_abi.DISABLED_KEY], torch.device("cpu"))
    assert keys.tolist() == [5, -1]
