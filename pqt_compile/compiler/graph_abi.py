"""The two inputs pqt adds to every graph it compiles, in one place.

Layout of a PQT graph's inputs::

    [*the Dynamo graph's inputs, pqt_seed, pqt_keys]

* `pqt_seed`: int64, 0-d. The call's seed (NOTE [the seed rule] in seeds.py); 0 in a call that
  samples nothing.
* `pqt_keys`: int64, [W], W = the number of Parameter inputs. Slot i holds the key of the i-th
  Parameter input in input order (a buffer or activation has no slot), or DISABLED_KEY: the
  graph passes that weight through unsampled this call (eval mode; a block sharing the graph
  that include/exclude keeps clean). The op reads a negative key as "no noise" (formula.py).

Written by the backend (`add_inputs`, `example_inputs`), filled at run time by the wrapper
(`keys_tensor`, `seed_tensor`), found by the pass (`find_inputs`) and by the eager reference.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch.fx import Graph, Node

from ..compat import mark_added_input

__all__ = ["SEED", "KEYS", "DISABLED_KEY", "add_inputs", "example_inputs", "seed_tensor", "keys_tensor",
           "find_inputs", "key_of_slot", "primal_positions"]

SEED = "pqt_seed"
KEYS = "pqt_keys"
DISABLED_KEY = -1


def add_inputs(graph: Graph, dynamo: bool) -> tuple[Node, Node]:
    """Append the seed and keys placeholders after `graph`'s own; `dynamo`: mark them for
    AOTAutograd as inputs that user code does not hold."""
    last = [n for n in graph.nodes if n.op == "placeholder"]
    anchor = last[-1].next if last else next(iter(graph.nodes))
    with graph.inserting_before(anchor):
        seed, keys = graph.placeholder(SEED), graph.placeholder(KEYS)
    if dynamo:
        mark_added_input(seed)
        mark_added_input(keys)
    return seed, keys


def example_inputs(args: Sequence[object], num_weights: int, device: torch.device) -> list:
    """`args` followed by example seed and keys (what a compile with these inputs needs)."""
    return [*args, seed_tensor(0, device), torch.zeros(num_weights, dtype=torch.int64, device=device)]


def seed_tensor(seed: int, device: torch.device) -> torch.Tensor:
    return torch.tensor(seed, dtype=torch.int64, device=device)


def keys_tensor(keys: Sequence[int], device: torch.device) -> torch.Tensor:
    return torch.tensor(list(keys), dtype=torch.int64, device=device)


def primal_positions(inputs: Sequence[object]) -> tuple[list[int], int]:
    """(the position of each of `inputs` among the joint graph's primal inputs, their number).

    AOTAutograd passes a tensor subclass as its flattened parts, in `__tensor_flatten__` order and
    recursively: a DTensor weight as its local tensor (the rank's shard, at the returned position)
    followed by its device mesh (an opaque object). Every other input is one primal.
    """
    positions, n = [], 0
    for x in inputs:
        positions.append(n)
        n += _num_parts(x)
    return positions, n


def _num_parts(x: object) -> int:
    if not (isinstance(x, torch.Tensor) and hasattr(x, "__tensor_flatten__")):
        return 1
    attrs, _ = x.__tensor_flatten__()
    return sum(_num_parts(getattr(x, a)) for a in attrs)


def find_inputs(primals: Sequence[Node], num_weights: int) -> tuple[Node, Node]:
    """The seed and keys placeholders among a joint or inference graph's primal inputs.

    Checked by their fake values, not only by position: a torch release that laid out
    AOTAutograd's inputs otherwise must fail here, not sample with a weight as its seed.
    """
    if len(primals) < 2:
        raise RuntimeError(f"pqt: a PQT graph has at least 2 inputs ({SEED}, {KEYS}); this one has {len(primals)}")
    seed, keys = primals[-2], primals[-1]
    sv, kv = seed.meta.get("val"), keys.meta.get("val")
    ok = (isinstance(sv, torch.Tensor) and sv.dtype == torch.int64 and sv.dim() == 0
          and isinstance(kv, torch.Tensor) and kv.dtype == torch.int64 and tuple(kv.shape) == (num_weights,))
    if not ok:
        raise RuntimeError(
            f"pqt: the graph's last two inputs are not {SEED} (int64 []) and {KEYS} (int64 [{num_weights}]) but "
            f"{_describe(sv)} and {_describe(kv)}; this torch release lays out AOTAutograd's inputs differently "
            "(please report it with your torch version)"
        )
    return seed, keys


def _describe(v: object) -> str:
    return f"{v.dtype} {list(v.shape)}" if isinstance(v, torch.Tensor) else repr(type(v).__name__)


def key_of_slot(graph: Graph, keys: Node, slot: int) -> Node:
    """A node holding the key of the slot-th Parameter input (insert it where it is needed)."""
    return graph.call_function(torch.ops.aten.select.int, (keys, 0, slot))
