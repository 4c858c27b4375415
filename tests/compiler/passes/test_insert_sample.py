"""insert_sample's contract with its callers, on a hand-traced graph (no compile)."""

import torch
from torch.fx.experimental.proxy_tensor import make_fx

from pqt_compile import PQTConfig
from pqt_compile.compiler.passes.insert_sample import insert_sample
from pqt_compile.compiler.passes.weight_edges import find_weight_edges


def _two_linears(w1, w2, x, seed, keys):
    return (x @ w1.t()) @ w2.t()


def test_a_key_of_that_makes_nodes_is_called_once_per_weight_and_every_new_node_has_a_value():
    """key_of may make its key node (the docstring's contract): each weight's key is made once and
    read by both its block values and the graph's one stream-words op, and every node the pass
    adds carries meta['val'] (the partitioner and Inductor read it). 128 x 128 weights take the
    split form on the CPU (NOTE [saved block values])."""
    args = (torch.randn(128, 128), torch.randn(128, 128), torch.randn(4, 128), torch.tensor(1), torch.tensor([5, 6]))
    graph = make_fx(_two_linears, tracing_mode="fake")(*args).graph
    w1, w2, _, seed, keys = [n for n in graph.nodes if n.op == "placeholder"]
    edges, _ = find_weight_edges(graph, {w1: "w1", w2: "w2"})
    made: dict[str, torch.fx.Node] = {}
    calls: list[str] = []

    def key_of(g: torch.fx.Graph, edge) -> torch.fx.Node:
        calls.append(edge.name)
        made[edge.name] = g.call_function(torch.ops.aten.select.int, (keys, 0, 0 if edge.name == "w1" else 1))
        return made[edge.name]

    insert_sample(graph, edges, seed, key_of, PQTConfig(), tag_recompute=True)
    graph.lint()

    assert sorted(calls) == ["w1", "w2"]
    words = [n for n in graph.nodes if n.target == torch.ops.pqt.stream_words.default]
    assert len(words) == 1 and list(words[0].args[1]) == [made["w1"], made["w2"]]
    values = {n.args[0]: n for n in graph.nodes if n.target == torch.ops.pqt.block_values.default}
    assert values[w1].args[1] is made["w1"] and values[w2].args[1] is made["w2"]
    missing = [n.name for n in graph.nodes if n.op == "call_function" and "val" not in n.meta]
    assert missing == []
