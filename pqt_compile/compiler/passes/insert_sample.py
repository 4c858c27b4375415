"""insert_sample: put `pqt.sample` on every weight->matmul path found by find_weight_edges.

Before (nn.Linear under bf16 autocast, joint graph)::

    primals_1: f32[N, K]                      # the weight
    _to_copy = aten._to_copy(primals_1, dtype=bf16)
    t = aten.t(_to_copy)
    mm = aten.mm(x, t)                        # forward
    t_1 = aten.t(t); mm_1 = aten.mm(grad, t_1)   # backward: grad_input

After::

    w_hat = pqt.sample(primals_1, seed, key, 1, fmt, B, noise, std, bf16)   # tagged recompute
    t_2 = aten.t(w_hat)
    mm = aten.mm(x, t_2)
    t_3 = aten.t(t_2); mm_1 = aten.mm(grad, t_3)

NOTE [one rounding]: a dtype cast on the path is absorbed into the sample (its out_dtype),
never applied after it: casting an fp32 sample to bf16 would round twice and differ from
method.md's single round-to-nearest-even of float32(w) + Δ r.

NOTE [recompute]: the sample node is tagged MUST_RECOMPUTE, so the partitioner saves the
clean weight (and the seed) for backward and regenerates the sample there instead of
keeping a second copy of every weight alive between forward and backward. With
PQTConfig(share_sample=True) it is tagged MUST_SAVE instead: the forward's sample is saved
for the backward (memory for speed: one sample pass per step instead of two).

NOTE [saved block values]: where the lowering takes the per-block form on the C++ backend
(compiler/targets.py `saves_block_values`: a weight above CPP_ONE_KERNEL_MAX_NUMEL, or with a
ragged last block), a training graph's sample is split in three ops (sample_parts.py)::

    words = pqt.stream_words(seed, [key, ...])                      # one per graph, below
    words_1 = aten.select(words, 0, 0)                               # tagged MUST_SAVE
    values = pqt.block_values(primals_1, key, 1, fmt, B, noise)     # tagged MUST_SAVE
    w_hat = pqt.sample_from_values(primals_1, values, words_1, 1, fmt, B, noise, std, bf16)  # recompute

so the backward regenerates only the element part, from the forward's values (0.375 bytes per
parameter for a float format's three fp32 values per block of 32; int formats and NVFP4 one)
and words (8 bytes per weight): no block amax pass, no block values and no stream words in the
backward, about 60% fewer operations for Inductor to generate and compile there, and the C++
backward skips its read of w for the amax. The element part is the same Pointwise as pqt.sample's
(lowering/forms.py), so the bits are the same. Not in the one-kernel form (Triton, small C++
weights): there the values never leave the kernel, and saving them would add a buffer and, on
a GPU, a store per block for nothing the backward's one kernel needs. Not under share_sample
(no regeneration) nor in graphs with no backward.

NOTE [one words op per graph]: the stream words of all the graph's split weights are one
`pqt.stream_words` node (keys in edge order, row i for the i-th), and each weight reads its row, a
`select` tagged MUST_SAVE. Inductor generates and compiles the words' ~55 operations once per
graph instead of once per weight (17 weights in a 4-layer GPT-2: about 0.5 s of code generation
and about 0.2 s of g++, docs/results.md session 16). The backward saves the rows (views of one
buffer), not the buffer: a kernel reading row i of a saved [n, 2] buffer would have i in its
code, and the backward's kernels of same-shaped layers would no longer be one compiled kernel
(graph_abi.py NOTE [one input per key]); a row passed as its own input keeps them one. Under
functorch's non-default `recompute_views=True` the partitioner recomputes every view whatever its
tag, so it saves the buffer and selects in the backward: same bits, more backward code. Each
weight's key is made (or found) once, before the words node, which goes before the first
computation.

NOTE [NVFP4 tensor amax]: an nvfp4 sample needs the whole weight's max |w| (its tensor scale,
formula_nvfp4.py). The pass computes it once per weight per step, `amax(abs(float32(w)))`, and
gives it to the op as `tensor_amax`, tagged MUST_SAVE: the backward's regeneration reads the
forward's value (4 bytes) instead of reducing the weight again. A tensor-parallel shard's amax is
the max over the ranks that split the weight (`reduce_amax`: one all-reduce of one number per
weight per step, NaN made +Inf first, since a MAX all-reduce may drop a NaN; an Inf amax gives
the tensor no scales, as a NaN does).

NOTE [shared tensor scales]: the members of a tensor-scale group (scale_groups.py: q_proj, k_proj
and v_proj of one attention, by default for nvfp4) read one amax, the maximum of their own, made
once per step in the forward and saved like theirs, so the group trains under the one tensor scale
that vLLM applies to the fused layer. Graph before (two members; `a_q` ... as above, each the
amax of abs of the fp32 detached weight)::

    s_q = pqt.sample(w_q, seed, key_q, 1, "nvfp4", 16, ..., None, 0, a_q)
    s_k = pqt.sample(w_k, seed, key_k, 1, "nvfp4", 16, ..., None, 0, a_k)

after::

    a_qk = aten.maximum(a_q, a_k)
    s_q = pqt.sample(w_q, seed, key_q, 1, "nvfp4", 16, ..., None, 0, a_qk)
    s_k = pqt.sample(w_k, seed, key_k, 1, "nvfp4", 16, ..., None, 0, a_qk)
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch.fx import Graph, Node
from torch.utils.checkpoint import CheckpointPolicy

from ...config import PQTConfig
from ...formats import parse_format
from ...op import RTN
from ...scale_groups import groups_among
from ..targets import saves_block_values
from .axis_tracking import is_dtype_cast
from .node_values import fake_mode_of, set_val, val
from .weight_edges import WeightEdge

__all__ = ["insert_sample"]


def _tensor_amax(graph: Graph, weight: Node, fake_mode, reduce_amax, edge) -> Node:
    """The node of max |w| over the whole weight, fp32 0-d (NOTE [NVFP4 tensor amax])."""
    aten = torch.ops.aten
    # Detached: the scale takes no gradient (method.md), and the eager reference replays this graph
    # under autograd, where the op's None gradient for tensor_amax would still be fed to the chain.
    clean = graph.call_function(aten.detach.default, (weight,))
    w32 = graph.call_function(torch.ops.prims.convert_element_type.default, (clean, torch.float32))
    absw = graph.call_function(aten.abs.default, (w32,))
    amax = graph.call_function(aten.amax.default, (absw, []))  # dim=[]: over every dim, NaN propagated
    for n in (clean, w32, absw, amax):
        set_val(n, fake_mode)
    if reduce_amax is not None:
        node, amax = amax, reduce_amax(graph, edge, amax)
        # The reduction's nodes were made at this insertion point, inputs first, so they follow
        # the local amax in graph order up to the one returned: give each its value in turn.
        while node is not amax:
            node = node.next
            set_val(node, fake_mode)
    return amax


def insert_sample(
    graph: Graph,
    edges: list[WeightEdge],
    seed: Node,
    key_of: Callable[[Graph, WeightEdge], Node],
    config: PQTConfig,
    tag_recompute: bool = True,
    index_args: Optional[dict[Node, tuple]] = None,
    reduce_amax: Optional[Callable[[Graph, WeightEdge, Node], Node]] = None,
) -> dict[tuple[str, torch.dtype], Node]:
    """Rewire every matmul path of every edge to one sample per (weight, dtype).

    Args:
        graph: the graph to rewrite in place.
        edges: from find_weight_edges.
        seed: a node holding the step's int64 seed.
        key_of: makes (or returns) the node holding an edge's int64 key.
        config: format, block size and noise.
        tag_recompute: tag samples MUST_RECOMPUTE, or MUST_SAVE under config.share_sample (joint graphs).
        index_args: {weight node: (index_strides, index_offset)} of weights that are a shard of a
            larger weight (sharding.py NOTE [global index]); the others draw with their own index.
        reduce_amax: for nvfp4, turns a weight's local amax node into the whole weight's (a shard's
            all-reduce; NOTE [NVFP4 tensor amax]); None: the weights are whole.
    Returns:
        {(weight name, dtype): sample node}.
    """
    fake_mode = fake_mode_of(graph)
    two_level = parse_format(config.format).two_level
    samples: dict[tuple[str, torch.dtype], Node] = {}
    # Keys and samples go right after the placeholders, before the first computation.
    anchor = next(n for n in graph.nodes if n.op != "placeholder")
    position = {n: i for i, n in enumerate(graph.nodes)}

    def splits(edge: WeightEdge) -> bool:
        """NOTE [saved block values]: whether this weight's sample is split in three ops."""
        w_val = val(edge.node)
        return (tag_recompute and not config.share_sample and w_val is not None
                and saves_block_values(w_val.device, tuple(w_val.shape), edge.axis % w_val.dim(), config.block_code))

    # Each edge's key is made (or found) once, before the words op that reads the split ones.
    keys: dict[str, Node] = {}
    with graph.inserting_before(anchor):
        for edge in edges:
            key = keys[edge.name] = key_of(graph, edge)
            if key.op != "placeholder" and "val" not in key.meta:
                set_val(key, fake_mode)
    # NOTE [one words op per graph]: the split weights' stream words, one row per weight.
    split_edges = [e for e in edges if splits(e)]
    split_names = {e.name for e in split_edges}
    words_row: dict[str, Node] = {}
    if split_edges and config.op_noise != RTN:
        with graph.inserting_before(anchor):
            words = graph.call_function(torch.ops.pqt.stream_words.default,
                                        (seed, [keys[e.name] for e in split_edges]))
            set_val(words, fake_mode)
            words.meta["original_aten"] = words.target  # kernel names, as new_node below
            for i, e in enumerate(split_edges):
                row = graph.call_function(torch.ops.aten.select.int, (words, 0, i))
                set_val(row, fake_mode)
                row.meta["recompute"] = CheckpointPolicy.MUST_SAVE  # the row, not the whole buffer
                words_row[e.name] = row
    # NVFP4: each weight's amax, once per step (NOTE [NVFP4 tensor amax]); a group's members read the
    # group's (NOTE [shared tensor scales]).
    amax_of: dict[str, Node] = {}
    if two_level:
        with graph.inserting_before(anchor):
            for edge in edges:
                amax_of[edge.name] = _tensor_amax(graph, edge.node, fake_mode, reduce_amax, edge)
            for group in groups_among([e.name for e in edges], config):
                shared = amax_of[group[0]]
                for name in group[1:]:  # maximum propagates a NaN, as amax does
                    shared = graph.call_function(torch.ops.aten.maximum.default, (shared, amax_of[name]))
                    set_val(shared, fake_mode)
                for name in group:
                    amax_of[name] = shared
            if tag_recompute:
                for amax_t in amax_of.values():
                    amax_t.meta["recompute"] = CheckpointPolicy.MUST_SAVE
    for edge in edges:
        if edge.expert_axes and config.block_size == "tensor":
            raise ValueError(
                f"pqt: weight {edge.name!r} holds experts along axis {edge.expert_axes[0]}; block_size='tensor' would "
                "give all experts one scale. Use an int block size or 'row' (per expert), or exclude the weight."
            )
        fwd_dtypes = edge.dtypes
        strides, offset = (index_args or {}).get(edge.node, (None, 0))
        shard_args = () if strides is None else (strides, offset)
        key = keys[edge.name]
        if two_level:
            shard_args = (strides, offset, amax_of[edge.name])
        memo: dict[tuple[Node, torch.dtype], Node] = {}
        split = edge.name in split_names
        parts: list[Optional[Node]] = []  # NOTE [saved block values]: this weight's values and words, made once

        def new_node(target, args: tuple, policy) -> Node:
            with graph.inserting_before(anchor):
                n = graph.call_function(target, args)
            set_val(n, fake_mode)
            # Inductor names a kernel after its nodes' original_aten: "...fused...sample..." kernels
            # are the samples in generated code and in a GPU profile (benchmarks/step_profile.py).
            n.meta["original_aten"] = n.target
            if tag_recompute:
                n.meta["recompute"] = policy
            return n

        def sample_for(dtype: torch.dtype) -> Node:
            if (edge.name, dtype) not in samples:
                grid = (config.format, config.block_code, config.op_noise)
                if split:
                    if not parts:
                        amax_arg = shard_args[2:]  # NVFP4's tensor amax
                        parts.append(new_node(torch.ops.pqt.block_values.default,
                                              (edge.node, key, edge.axis, *grid, *amax_arg), CheckpointPolicy.MUST_SAVE))
                        parts.append(words_row.get(edge.name))  # None under "rtn": no draw
                    s = new_node(torch.ops.pqt.sample_from_values.default,
                                 (edge.node, parts[0], parts[1], edge.axis, *grid, config.op_noise_std, dtype,
                                  *shard_args[:2]), CheckpointPolicy.MUST_RECOMPUTE)
                else:
                    s = new_node(torch.ops.pqt.sample.default,
                                 (edge.node, seed, key, edge.axis, *grid, config.op_noise_std, dtype, *shard_args),
                                 CheckpointPolicy.MUST_SAVE if config.share_sample else CheckpointPolicy.MUST_RECOMPUTE)
                s.meta["pqt_weight"] = edge.name
                samples[(edge.name, dtype)] = s
            return samples[(edge.name, dtype)]

        # Earliest matmul first: a path node made for one use is shared by the later ones (memo),
        # so it must come before all of them (an unbind's items feed matmuls in any order).
        for use in sorted(edge.uses, key=lambda u: position[u.matmul]):
            # A backward path reuses the forward sample whose dtype it reads (NOTE [forward decides]).
            dtype = use.dtype if (not use.is_backward or use.dtype in fwd_dtypes) else None
            if dtype is None:
                dtype = fwd_dtypes[0]
            prev = sample_for(dtype)
            for old in use.path:
                if (old, dtype) in memo:
                    prev = memo[(old, dtype)]
                    continue
                if is_dtype_cast(old):
                    new = prev  # absorbed into the sample (NOTE [one rounding])
                else:
                    with graph.inserting_before(use.matmul):
                        new = graph.call_function(old.target, (prev, *old.args[1:]), dict(old.kwargs))
                    set_val(new, fake_mode)
                memo[(old, dtype)] = prev = new
            if val(prev) is not None and val(prev).dtype != use.dtype:
                # A backward matmul that read the weight in another dtype: cast the sample.
                with graph.inserting_before(use.matmul):
                    prev = graph.call_function(torch.ops.prims.convert_element_type.default, (prev, use.dtype))
                set_val(prev, fake_mode)
            use.matmul.replace_input_with(use.path[-1] if use.path else edge.node, prev)
    graph.eliminate_dead_code()
    return samples
