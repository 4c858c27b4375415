"""A node's fake value: read where a pass inspects the graph, filled where a pass adds a node.

Every pqt pass works on aten-level graphs whose nodes carry `meta["val"]` (a FakeTensor in a
compile; nothing in the eager reference, which replays real tensors). A node a pass inserts
needs a value too, so that the passes after it, and Inductor, see its shape and dtype.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch.fx import Graph, Node

__all__ = ["val", "fake_mode_of", "set_val"]


def val(n: object) -> Optional[Any]:
    """`n`'s fake value (None for a non-node argument or a node without one)."""
    return n.meta.get("val") if isinstance(n, Node) else None


def fake_mode_of(graph: Graph) -> Optional[Any]:
    """The FakeTensorMode of `graph`'s values (None in a graph without fake values)."""
    for n in graph.nodes:
        v = n.meta.get("val")
        if isinstance(v, torch.Tensor) and hasattr(v, "fake_mode"):
            return v.fake_mode
    return None


def set_val(node: Node, fake_mode: Optional[Any]) -> None:
    """Fill node.meta['val'] by running its target on the inputs' fake values.

    Skipped where an input has no value (the eager reference replays real tensors and needs none).
    """
    if fake_mode is None or any(a.meta.get("val") is None for a in node.all_input_nodes):
        return
    args, kwargs = torch.fx.node.map_arg((node.args, node.kwargs), lambda a: a.meta.get("val"))
    with fake_mode:
        node.meta["val"] = node.target(*args, **kwargs)
