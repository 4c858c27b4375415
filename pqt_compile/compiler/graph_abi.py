"""The inputs pqt adds to every graph it compiles, in one place.

Layout of a PQT graph's inputs::

    [*the Dynamo graph's inputs, pqt_seed, pqt_key_0, ..., pqt_key_{W-1}]

* `pqt_seed`: int64, 0-d. The call's seed (NOTE [the seed rule] in seeds.py); 0 in a call that
  samples nothing.
* `pqt_key_i`: int64, 0-d, one per keyed Parameter input (W of them, in input order): the key of
  the i-th keyed Parameter input, or DISABLED_KEY: the graph passes that weight through
  unsampled this call (eval mode; a block sharing the graph that include/exclude keeps clean).
  The op reads a negative key as "no noise" (formula.py). A Parameter input is keyed when some
  config could sample it (`key_slots`: selection.samplable, a supported dtype and at least 2
  dims); a bias or a norm's weight is never sampled and gets no input (NOTE [keyed inputs only]).

NOTE [one input per key]: each key is its own 0-d input, not a slot of one [W] tensor. A kernel
that read slot i of a [W] tensor has i baked into its code, so the samples of W same-shaped
weights were W different kernels to compile (C++ or Triton), and the backward saved one view per
weight; with one input per key they are one kernel, compiled once, and the backward saves the
key inputs themselves.

NOTE [keyed inputs only]: every graph input costs host time at every call (checked by
`assert_size_stride`, carried through AOTAutograd's runtime wrappers, and saved for the backward
where a regeneration reads it), so an input no weight can use is not added: a model's 1-D
Parameters (biases, norms) are about half of its Parameter inputs. Which inputs are keyed depends
only on their dtype and number of dims, which Dynamo's guards fix per graph.

Written by the backend (`add_inputs`, `example_inputs`), filled at run time by the wrapper
(`key_tensors`, `SeedTensors`), found by the pass (`find_inputs`) and by the eager reference.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch.fx import Graph, Node

from ..compat import mark_added_input
from ..selection import samplable

__all__ = ["SEED", "KEY", "DISABLED_KEY", "key_slots", "add_inputs", "example_inputs", "seed_tensor", "SeedTensors",
           "key_tensors", "find_inputs", "key_of_slot", "primal_positions"]

SEED = "pqt_seed"
KEY = "pqt_key_{}"
DISABLED_KEY = -1


def key_slots(params: Sequence[object]) -> tuple[int, ...]:
    """The positions among a graph's Parameter inputs `params` that get a `pqt_key_i` input, in
    order (NOTE [keyed inputs only])."""
    return tuple(i for i, p in enumerate(params) if samplable(p))


def add_inputs(graph: Graph, dynamo: bool, num_weights: int) -> tuple[Node, list[Node]]:
    """Append the seed and `num_weights` key placeholders after `graph`'s own; `dynamo`: mark them
    for AOTAutograd as inputs that user code does not hold. Returns (seed, keys)."""
    last = [n for n in graph.nodes if n.op == "placeholder"]
    anchor = last[-1].next if last else next(iter(graph.nodes))
    with graph.inserting_before(anchor):
        seed = graph.placeholder(SEED)
        keys = [graph.placeholder(KEY.format(i)) for i in range(num_weights)]
    if dynamo:
        for node in (seed, *keys):
            mark_added_input(node)
    return seed, keys


def example_inputs(args: Sequence[object], num_weights: int, device: torch.device) -> list:
    """`args` followed by example seed and keys (what a compile with these inputs needs)."""
    return [*args, seed_tensor(0, device), *key_tensors([0] * num_weights, device)]


class _SeedTensors:
    """The last seed's tensor per device (NOTE [seed on the device])."""

    def __init__(self) -> None:
        self.last: dict[tuple, tuple[int, torch.Tensor]] = {}


_seeds = _SeedTensors()


# NOTE [seed on the device]: the seed reaches a graph as a 0-d int64 tensor on the graph's device,
# made without a host-device copy: `torch.full` on a GPU launches a fill kernel that takes the
# value as an argument (asynchronous), where `torch.tensor(seed, device="cuda")` copies from host
# memory and waits for the copy (a synchronisation at every graph call). The tensor of the last
# seed is kept per device, so every graph of one step and micro-batch reads the same tensor (one
# fill per micro-batch, not per call; per stream on a GPU, where the fill is ordered). A seed tensor is never written after it is made: a
# backward pass that reads the seed its forward saved, or a CUDA graph replay that copied it into
# its static input, reads its own step's value whatever later steps do. Keys are made once per set
# of weights (`key_tensors`) and cached by the wrapper.
def seed_tensor(seed: int, device: torch.device) -> torch.Tensor:
    """The graph input `pqt_seed` holding `seed` on `device` (NOTE [seed on the device])."""
    # On a GPU the fill is ordered on the current stream: a graph run on another stream gets its own.
    where = (device, torch.cuda.current_stream(device).cuda_stream) if device.type == "cuda" else (device,)
    return _seed_at(where, seed, device)


def _seed_at(where: tuple, seed: int, device: torch.device) -> torch.Tensor:
    hit = _seeds.last.get(where)
    if hit is not None and hit[0] == seed:
        return hit[1]
    t = torch.full((), seed, dtype=torch.int64, device=device)
    _seeds.last[where] = (seed, t)
    return t


class SeedTensors:
    """`seed_tensor` for the graphs of one device, with what depends only on the device decided
    once (a wrapper asks at every call; wrapper.py NOTE [host time per call])."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._where = None if device.type == "cuda" else (device,)  # CUDA: per stream, asked per call

    def tensor(self, seed: int) -> torch.Tensor:
        if self._where is None:
            return seed_tensor(seed, self.device)
        return _seed_at(self._where, seed, self.device)


def key_tensors(keys: Sequence[int], device: torch.device) -> tuple[torch.Tensor, ...]:
    """The graph inputs `pqt_key_i` on `device` (NOTE [one input per key]), each a tensor of its
    own, made without a host-device copy (`torch.full`, as the seed: NOTE [seed on the device]).
    Made once per set of weights and switch pattern: the wrapper caches them.

    NOTE [keys are not views]: AOTAutograd (torch 2.13) detaches every tensor it saves for the
    backward that is a view (`x.detach() if x._is_view()`), at every call; a recomputed sample's
    key is saved, so keys cut as views of one buffer cost a detach per keyed weight per step
    (about 1 us of host time each). torch 2.15 leaves saved graph inputs as they are."""
    return tuple(torch.full((), k, dtype=torch.int64, device=device) for k in keys)


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


def find_inputs(primals: Sequence[Node], num_weights: int) -> tuple[Node, list[Node]]:
    """The seed and key placeholders among a joint or inference graph's primal inputs.

    Checked by their fake values, not only by position: a torch release that laid out
    AOTAutograd's inputs otherwise must fail here, not sample with a weight as its seed.
    """
    if len(primals) < 1 + num_weights:
        raise RuntimeError(f"pqt: a PQT graph with {num_weights} weights has at least {1 + num_weights} inputs "
                           f"({SEED} and one key per weight); this one has {len(primals)}")
    added = list(primals[len(primals) - 1 - num_weights:])
    for node in added:
        v = node.meta.get("val")
        if not (isinstance(v, torch.Tensor) and v.dtype == torch.int64 and v.dim() == 0):
            raise RuntimeError(
                f"pqt: the graph's last {1 + num_weights} inputs should be {SEED} and {num_weights} keys, all int64 [], "
                f"but one is {_describe(v)}; this torch release lays out AOTAutograd's inputs differently "
                "(please report it with your torch version)"
            )
    return added[0], added[1:]


def _describe(v: object) -> str:
    return f"{v.dtype} {list(v.shape)}" if isinstance(v, torch.Tensor) else repr(type(v).__name__)


def key_of_slot(keys: Sequence[Node], slot: int) -> Node:
    """The node holding the key of the slot-th Parameter input."""
    return keys[slot]
