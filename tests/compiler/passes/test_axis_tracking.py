"""axis_tracking on graphs traced by make_fx: where each transparent op moves a weight's axes,
and which ops end a path. Tracing only (no compile)."""

from typing import Callable, Optional

import pytest
import torch
from torch.fx import Node
from torch.fx.experimental.proxy_tensor import make_fx

from pqt_compile.compiler.passes.axis_tracking import MIXED, passes_through, step_dims

pytestmark = pytest.mark.private_api  # make_fx graphs and symbolic shapes: CI reruns it on the newest torch


def _track(fn: Callable[[torch.Tensor], torch.Tensor], w: torch.Tensor) -> Optional[list]:
    """The weight axes of `fn(w)`'s dims, walked node by node from w's placeholder along the
    chain that `fn` traces to, or None where an op ends the path."""
    graph = make_fx(fn, tracing_mode="fake")(w).graph
    node = next(n for n in graph.nodes if n.op == "placeholder")
    dims: Optional[list] = list(range(w.dim()))
    while True:
        users = [u for u in node.users if u.op == "call_function"]
        if not users:
            return dims
        (user,) = users
        if not passes_through(user, node, dims):
            return None
        dims = step_dims(user, dims)
        node = user


@pytest.mark.parametrize(
    "fn, expected",
    [
        (lambda w: w.t(), [1, 0]),
        (lambda w: w.transpose(0, 1).unsqueeze(0), [None, 1, 0]),
        (lambda w: w.unsqueeze(0).expand(3, 4, 6), [None, 0, 1]),
        (lambda w: w.to(torch.bfloat16).view(4, 6), [0, 1]),
        (lambda w: w.reshape(4, 2, 3), [0, MIXED, MIXED]),  # one axis split in two: no clean axis
        (lambda w: w.reshape(24), [MIXED]),  # two axes merged
        (lambda w: w.reshape(1, 4, 6).squeeze(0), [0, 1]),
        (lambda w: w.permute(1, 0).contiguous(), [1, 0]),
    ],
    ids=["t", "transpose_unsqueeze", "expand", "cast_view", "split", "merge", "squeeze", "permute_contiguous"],
)
def test_transparent_ops_move_the_weight_axes(fn, expected):
    assert _track(fn, torch.randn(4, 6)) == expected


@pytest.mark.parametrize("fn", [lambda w: w * 2.0, lambda w: w[:2], lambda w: w.abs()], ids=["mul", "slice_2d", "abs"])
def test_other_ops_end_the_path(fn):
    # A 2-D slice is not an expert pick (weight_edges.py NOTE [expert paths]): the path ends there.
    assert _track(fn, torch.randn(4, 6)) is None


def test_picking_an_expert_drops_its_axis():
    experts = torch.randn(3, 4, 6)
    assert _track(lambda w: w.select(0, 1), experts) == [1, 2]
    assert _track(lambda w: w[torch.tensor([2, 0])], experts) == [None, 1, 2]
    assert _track(lambda w: w.select(1, 1), experts) is None  # not the expert axis


def test_a_cast_to_another_device_is_not_transparent():
    def fn(w: torch.Tensor) -> torch.Tensor:
        return w.to("meta")

    assert _track(fn, torch.randn(4, 6)) is None
