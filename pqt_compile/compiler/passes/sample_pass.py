"""SamplePass: the joint-graph pass that samples every weight->matmul edge.

Runs as Inductor's `joint_custom_pre_pass`, on the joint forward+backward graph of a training
compile and on the graph of an inference compile (Inductor runs its joint passes on both).

Precondition: the graph's primal inputs are the Dynamo graph's inputs in order followed by the
inputs of compiler/graph_abi.py (`pqt_seed`, then one `pqt_key_i` per keyed weight);
`weight_inputs` says which primal positions hold Parameters and their qualified names, and
`key_inputs` which of them has which key (graph_abi NOTE [keyed inputs only]).

Before / after: see insert_sample.py. In an inference graph (no tangents) it does nothing
unless the config asks for sampling in eval (`sample_in_eval`) or the graph was compiled with
grad enabled, its inputs frozen (`sample_inference`: compiler/backend.py NOTE [training graphs]).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence

import torch
from torch.fx import Graph, Node

from ...compat import all_reduce_max_ops
from ...config import PQTConfig
from ...formats import parse_format
from ...scale_groups import groups_among, missing_members
from ...selection import Reason, admits
from ...sharding import ShardLayout, check_blocks
from .. import graph_abi
from .base import PQTPass, active_recording
from .insert_sample import insert_sample
from .weight_edges import SkippedWeight, WeightEdge, find_weight_edges

__all__ = ["SamplePass", "SampleRecord", "EdgeSummary", "not_followed_warnings", "warn_all"]


@dataclass(frozen=True)
class EdgeSummary:
    """A sampled weight as explain reports it (no FX nodes: NOTE [recording] in base.py)."""

    name: str
    axis: int
    dtypes: tuple[str, ...]
    forward_uses: int
    backward_uses: int
    notes: tuple[str, ...]

    @classmethod
    def of(cls, edge: WeightEdge) -> "EdgeSummary":
        return cls(edge.name, edge.axis, tuple(str(d).replace("torch.", "") for d in edge.dtypes),
                   sum(not u.is_backward for u in edge.uses), sum(u.is_backward for u in edge.uses), tuple(edge.notes))


@dataclass
class SampleRecord:
    """What one run of the pass found and did (kept only while recording)."""

    is_joint: bool
    edges: list[EdgeSummary] = field(default_factory=list)
    skipped: list[SkippedWeight] = field(default_factory=list)
    sampled: bool = False


class SamplePass(PQTPass):
    name = "pqt_sample_pass"

    def __init__(self, config: PQTConfig, weight_inputs: dict[int, str], num_inputs: int,
                 aliases: Optional[dict[str, tuple[str, ...]]] = None, buffer_inputs: Optional[dict[int, str]] = None,
                 dump_dir: Optional[str] = None, shards: Optional[dict[int, ShardLayout]] = None, *,
                 key_inputs: dict[int, int], sample_inference: bool = False,
                 group_members: frozenset[str] = frozenset()) -> None:
        """
        Args:
            config: the PQT settings.
            weight_inputs: {input position: qualified name} of the Parameter inputs.
            num_inputs: number of graph inputs, pqt_seed and the pqt_key_i (the last 1 + W) included.
            key_inputs: {input position: i} of the weights whose key is pqt_key_i (graph_abi.key_slots).
            aliases: {name: other names} of tied Parameters (include/exclude match them too).
            buffer_inputs: {input position: name} of module buffers: never sampled; those that feed
                a matmul are reported as skipped ("not a Parameter").
            shards: {input position: layout} of the weights that are this rank's shard of a DTensor
                (sharding.py NOTE [global index]): sampled as the slice of the full weight's sample.
            sample_inference: sample in an inference graph too: one compiled with grad enabled,
                where no input requires grad (compiler/backend.py NOTE [training graphs]).
        """
        super().__init__(dump_dir)
        self.config = config
        self.aliases = dict(aliases or {})
        self.buffer_inputs = dict(buffer_inputs or {})
        self.weight_inputs = dict(weight_inputs)
        self.num_inputs = num_inputs
        self.shards = dict(shards or {})
        self.key_inputs = dict(key_inputs)
        self.sample_inference = sample_inference
        self.group_members = frozenset(group_members)
        self.warnings: list[str] = []  # what its runs warned, for a cache hit to say again (cached_warnings.py)

    def cache_key(self) -> tuple:
        return (*super().cache_key(), repr(self.config), sorted(self.weight_inputs.items()), sorted(self.aliases.items()),
                self.num_inputs, sorted(self.shards.items()),  # a shard's offset differs per rank
                sorted(self.key_inputs.items()), self.sample_inference, sorted(self.group_members))

    def run(self, graph: Graph) -> None:
        placeholders = [n for n in graph.nodes if n.op == "placeholder"]
        primals = [n for n in placeholders if not n.name.startswith("tangents")]
        is_joint = len(primals) != len(placeholders)
        if len(primals) != self.num_inputs:
            raise RuntimeError(
                f"pqt: the graph has {len(primals)} inputs where the backend passed {self.num_inputs}; "
                "this torch version lays out AOTAutograd inputs differently (please report it)"
            )
        seed, keys = graph_abi.find_inputs(primals, len(self.key_inputs))
        weights = {primals[pos]: name for pos, name in self.weight_inputs.items()}
        buffers = {primals[pos]: name for pos, name in self.buffer_inputs.items()}
        edges, skipped = find_weight_edges(graph, weights, lambda n: admits(self.config, n, self.aliases.get(n, ())),
                                           constants=buffers)
        shards = {primals[pos]: layout for pos, layout in self.shards.items()}
        for e in edges:
            if e.node in shards:
                layout = shards[e.node]
                check_blocks(e.name, layout, e.axis, self.config.block_code)
                if not layout.is_whole:  # shown by explain and pqt-dump
                    e.notes.append(f"tensor-parallel shard {layout.local_shape} of {layout.global_shape} at offset "
                                   f"{layout.offsets} {layout.placements}: the full weight's draw indices and blocks")
        split = False  # a tensor-scale group the model holds is split across graphs here
        if parse_format(self.config.format).two_level and self.config.tensor_scale_groups:
            split = _note_scale_groups(edges, self.config, self.group_members, self.weight_inputs.values())
        index_args = {node: layout.op_args() for node, layout in shards.items()}
        buffer_edges, _ = find_weight_edges(graph, buffers)
        skipped += [SkippedWeight(e.name, Reason.BUFFER) for e in buffer_edges]
        sampled = is_joint or self.config.sample_in_eval or self.sample_inference
        if sampled:
            messages = not_followed_warnings(skipped, edges)
            self.warnings += messages
            warn_all(messages)
        recorder = active_recording()
        if recorder is not None:
            recorder.records.append(SampleRecord(is_joint, [EdgeSummary.of(e) for e in edges], skipped, sampled))
        if not sampled:
            return
        if split:  # one text for every graph: Python's filter shows it once (explain names the weights)
            self.warnings.append(SPLIT_GROUP_WARNING)
            warn_all([SPLIT_GROUP_WARNING])
        slot = {primals[pos]: i for pos, i in self.key_inputs.items()}

        def key_of(g: Graph, edge: WeightEdge) -> Node:
            if edge.node not in slot:  # graph_abi.key_slots and the selection rules disagree
                raise RuntimeError(f"pqt: weight {edge.name!r} is sampled but has no key input (graph_abi.key_slots); "
                                   "please report it with the model and your torch version")
            return graph_abi.key_of_slot(keys, slot[edge.node])

        def reduce_amax(g: Graph, edge: WeightEdge, amax: Node) -> Node:
            """NOTE [NVFP4 tensor amax]: a shard's amax, maxed over the ranks that split its weight."""
            layout = shards.get(edge.node)
            if layout is None or layout.is_whole:
                return amax
            all_reduce, wait = all_reduce_max_ops()
            aten = torch.ops.aten  # ops Inductor lowers as they are (a joint graph is decomposed already)
            inf = g.call_function(aten.full.default, ([], float("inf")),
                                  {"dtype": torch.float32, "device": amax.meta["val"].device})
            node = g.call_function(aten.where.self, (g.call_function(aten.isnan.default, (amax,)), inf, amax))
            for group in layout.groups:
                node = g.call_function(wait, (g.call_function(all_reduce, (node, "max", group)),))
            return node

        insert_sample(graph, edges, seed, key_of, self.config, tag_recompute=is_joint, index_args=index_args,
                      reduce_amax=reduce_amax)


def _note_scale_groups(edges: Sequence[WeightEdge], config: PQTConfig, model_members: frozenset[str],
                       graph_weights: Iterable[str]) -> bool:
    """Note on each tensor-scale group member's edge the siblings it shares a scale with here, and
    those the model holds that this graph does not (explain, pqt-dump); returns whether there are
    any of the latter (scale_groups.py NOTE [groups within one graph])."""
    names = [e.name for e in edges]
    notes: dict[str, list[str]] = {}
    for group in groups_among(names, config):
        for name in group:
            others = ", ".join(n.rsplit(".", 2)[-2] for n in group if n != name)  # siblings: one parent
            notes.setdefault(name, []).append(f"nvfp4 tensor scale shared with {others} (PQTConfig.tensor_scale_groups)")
    missing = missing_members(names, model_members - set(graph_weights), config)
    for name, lacking in missing.items():
        notes.setdefault(name, []).append(
            f"nvfp4 tensor-scale group split: {', '.join(n.rsplit('.', 2)[-2] for n in lacking)} in another compiled "
            "graph, so not in this scale (the export's includes them)")
    for e in edges:
        e.notes += notes.get(e.name, [])
    return bool(missing)


#: scale_groups.py NOTE [groups within one graph]: one text whichever graph and weights, so that
#: Python's warning filter shows it once (a Llama under DDP splits every group).
SPLIT_GROUP_WARNING = (
    "pqt: some nvfp4 tensor-scale groups (PQTConfig.tensor_scale_groups: q_proj/k_proj/v_proj, gate_proj/up_proj) "
    "are split across compiled graphs (a graph break between members, DDP's bucket split, or each module compiled "
    "on its own): each graph shares a scale among the members it holds, while quantize_model and the writers store "
    "the whole group's. The two differ only in blocks that the group's scale pushes below E4M3's normal range "
    "(where a sibling is thousands of times larger). pqt_compile.explain(model, ...) names the weights. To train "
    "under the group's scale, compile the members in one graph (remove the graph break; under DDP, "
    "torch._dynamo.config.optimize_ddp = False); to silence this, PQTConfig(format='nvfp4', "
    "tensor_scale_groups=()) gives every weight its own scale everywhere."
)


def not_followed_warnings(skipped: list[SkippedWeight], edges: Sequence[WeightEdge] = ()) -> list[str]:
    """The warnings for the admitted matrix weights that a matmul reads and the pass leaves clean
    (`SkippedWeight.trains_clean`): reached by a path the pass does not follow (weight_edges.py NOTE
    [ops not followed]), of a dtype it does not sample (float64), or contracted over several axes;
    and for the sampled weights that one such path reads clean (weight_edges.py NOTE [partly clean])."""
    return [f"pqt: weight {s.name!r} {_why_clean(s.reason)} pqt_compile.explain(model, ...) lists every weight."
            for s in skipped if s.trains_clean] + [
        f"pqt: weight {e.name!r} is sampled where a matmul reads it directly, but it also reaches a matmul through "
        f"{e.clean_via}, which pqt does not follow: that product reads the clean weight, without noise. Give that "
        "computation its own Parameter, or exclude the weight in the PQTConfig to train it clean everywhere. "
        "pqt_compile.explain(model, ...) lists every weight." for e in edges if e.clean_via is not None]


def _why_clean(reason: str) -> str:
    if reason.startswith(Reason.NOT_FOLLOWED.split("{")[0]):
        return (f"{reason}. pqt samples a weight that a matmul reads directly or through views, transposes and casts; "
                "a split, slice or concatenation of weights (e.g. nn.MultiheadAttention with key/value other than the "
                "query, a fused weight split in the forward) or a parametrization computes another tensor, and a "
                "recurrent layer (nn.LSTM, nn.GRU, nn.RNN) runs its matmuls inside one op. Read the weight directly "
                "(separate Parameters), or exclude it in the PQTConfig to silence this;")
    if reason.startswith(Reason.DTYPE.split("{")[0]):
        return (f"feeds a matmul but has an {reason} (pqt samples float32, bfloat16 and float16 weights): it trains "
                "without noise. Train in one of those (model.float(), or bfloat16), or exclude it in the PQTConfig;")
    return (f"feeds a matmul that contracts several of its axes at once (an einsum such as 'bhd,hdm->bm'), so it has "
            "no single axis for its blocks: it trains without noise. Store it with those axes as one (a [h*d, m] "
            "Parameter, and a.reshape(b, h*d) @ W), or exclude it in the PQTConfig;")


def warn_all(messages: Sequence[str]) -> None:
    """Warn each of `messages`, from one place whether the pass ran or a cache hit says them again
    (cached_warnings.py NOTE [warnings on a cache hit]): Python's warning filter shows each once."""
    for message in messages:
        warnings.warn(message, UserWarning, stacklevel=1)
