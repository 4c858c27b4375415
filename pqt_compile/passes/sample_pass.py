"""SamplePass: the joint-graph pass that samples every weight->matmul edge.

Runs as Inductor's `joint_custom_pre_pass`, on the joint forward+backward graph of a training
compile and on the graph of an inference compile (Inductor runs its joint passes on both).

Inputs of the graph it expects: the Dynamo graph's inputs in order (AOTAutograd's
primals_1..n), the last two being the backend's `pqt_seed` (int64 scalar) and `pqt_keys`
(int64 [number of weight inputs]); `weight_inputs` says which primal positions hold
Parameters and their qualified names.

Before / after: see insert_sample.py. In an inference graph (no tangents) it does nothing
unless the config asks for sampling in eval (`sample_in_eval`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch.fx import Graph, Node

from ..config import PQTConfig
from .base import PQTPass
from .insert_sample import insert_sample
from .weight_edges import SkippedWeight, WeightEdge, find_weight_edges

__all__ = ["SamplePass", "SampleRecord"]


@dataclass
class SampleRecord:
    """What one run of the pass found and did (read by explain / the dump tool)."""

    is_joint: bool
    edges: list[WeightEdge] = field(default_factory=list)
    skipped: list[SkippedWeight] = field(default_factory=list)
    samples: dict = field(default_factory=dict)
    sampled: bool = False


class SamplePass(PQTPass):
    name = "pqt_sample_pass"

    def __init__(self, config: PQTConfig, weight_inputs: dict[int, str], num_inputs: int,
                 aliases: Optional[dict[str, tuple[str, ...]]] = None, buffer_inputs: Optional[dict[int, str]] = None,
                 dump_dir: Optional[str] = None) -> None:
        """
        Args:
            config: the PQT settings.
            weight_inputs: {input position: qualified name} of the Parameter inputs.
            num_inputs: number of graph inputs, pqt_seed and pqt_keys (the last two) included.
            aliases: {name: other names} of tied Parameters (include/exclude match them too).
            buffer_inputs: {input position: name} of module buffers: never sampled; those that feed
                a matmul are reported as skipped ("not a Parameter").
        """
        super().__init__(dump_dir)
        self.config = config
        self.aliases = dict(aliases or {})
        self.buffer_inputs = dict(buffer_inputs or {})
        self.weight_inputs = dict(weight_inputs)
        self.num_inputs = num_inputs
        self.records: list[SampleRecord] = []

    def cache_key(self) -> tuple:
        return (*super().cache_key(), repr(self.config), sorted(self.weight_inputs.items()), sorted(self.aliases.items()), self.num_inputs)

    def run(self, graph: Graph) -> None:
        placeholders = [n for n in graph.nodes if n.op == "placeholder"]
        primals = [n for n in placeholders if not n.name.startswith("tangents")]
        is_joint = len(primals) != len(placeholders)
        record = SampleRecord(is_joint=is_joint)
        self.records.append(record)
        if len(primals) != self.num_inputs:
            raise RuntimeError(
                f"pqt: the graph has {len(primals)} inputs where the backend passed {self.num_inputs}; "
                "this torch version lays out AOTAutograd inputs differently (please report it)"
            )
        weights = {primals[pos]: name for pos, name in self.weight_inputs.items()}
        edges, skipped = find_weight_edges(graph, weights, lambda n: self.config.admits(n, self.aliases.get(n, ())))
        buffers = {primals[pos]: name for pos, name in self.buffer_inputs.items()}
        buffer_edges, _ = find_weight_edges(graph, buffers)
        skipped += [SkippedWeight(e.name, "not a Parameter (a buffer)") for e in buffer_edges]
        record.edges, record.skipped = edges, skipped
        if not is_joint and not self.config.sample_in_eval:
            return
        seed, keys = primals[-2], primals[-1]
        slot = {pos: i for i, pos in enumerate(sorted(self.weight_inputs))}
        position = {primals[pos]: pos for pos in self.weight_inputs}

        def key_of(g: Graph, edge: WeightEdge) -> Node:
            return g.call_function(torch.ops.aten.select.int, (keys, 0, slot[position[edge.node]]))

        record.samples = insert_sample(graph, edges, seed, key_of, self.config, tag_recompute=is_joint)
        record.sampled = True
