"""The eager reference: what a compiled PQT training step computes, in plain eager torch.

`sampled_weights` returns the sample of every weight the compiler samples; `run` runs the
model's forward with those samples on the matmul paths (an embedding lookup of a tied weight
reads the clean weight). `run` traces the forward with make_fx and applies the compiler's own
pattern rules (passes.find_weight_edges / insert_sample), so both sample the same weights on
the same paths, along the same axes, in the same dtypes; it then replays the graph eagerly
with the op's torch implementation. Gradients flow to the model's parameters.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.utils._pytree as pytree
from torch.fx.experimental.proxy_tensor import make_fx

from . import op as _op  # noqa: F401  (registers pqt::sample)
from .config import PQTConfig
from .op import sample
from .passes import SkippedWeight, WeightEdge, find_weight_edges, insert_sample
from .seeds import key_for_name

__all__ = ["sampled_weights", "run", "trace_weight_edges", "linear_weight_axes", "parameter_aliases"]


def _named_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    # Deduplicated: a tied weight appears once, under its first registered name.
    return dict(model.named_parameters())


def parameter_aliases(model: torch.nn.Module) -> dict[str, tuple[str, ...]]:
    """{canonical name: its other names} for tied Parameters (GPT-2: wte.weight -> (lm_head.weight,))."""
    canon = {id(p): n for n, p in _named_parameters(model).items()}
    out: dict[str, tuple[str, ...]] = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        if canon.get(id(p), n) != n:
            out[canon[id(p)]] = (*out.get(canon[id(p)], ()), n)
    return out


def admits_fn(config: PQTConfig, aliases: dict[str, tuple[str, ...]]):
    """config.admits, aware of each weight's other names."""
    return lambda name: config.admits(name, aliases.get(name, ()))


def linear_weight_axes(model: torch.nn.Module) -> dict[str, int]:
    """Module-type rules, for when no example input is at hand: nn.Linear (axis 1) and
    transformers' Conv1D (weight [K, N], axis 0). A weight tied to an embedding is listed
    once, under its canonical name (the first in `named_parameters`)."""
    canon = {id(p): n for n, p in _named_parameters(model).items()}
    axes: dict[str, int] = {}
    for module in model.modules():
        w = getattr(module, "weight", None)
        if not isinstance(w, torch.nn.Parameter) or id(w) not in canon:
            continue
        if isinstance(module, torch.nn.Linear):
            axes.setdefault(canon[id(w)], 1)
        elif type(module).__name__ == "Conv1D" and w.dim() == 2 and w.shape == (getattr(module, "nx", -1), getattr(module, "nf", -1)):
            axes.setdefault(canon[id(w)], 0)
    return axes


class _Traced:
    def __init__(self, model: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        self.params = _named_parameters(model)
        names = list(self.params)
        leaves, self.in_spec = pytree.tree_flatten((args, kwargs))
        self.tensor_pos = [i for i, x in enumerate(leaves) if isinstance(x, torch.Tensor)]
        self.leaves = leaves
        self.out_spec = None

        def forward(param_list: list, tensor_inputs: list):
            filled = list(self.leaves)
            for i, t in zip(self.tensor_pos, tensor_inputs):
                filled[i] = t
            a, k = pytree.tree_unflatten(filled, self.in_spec)
            out = torch.func.functional_call(model, dict(zip(names, param_list)), a, k)
            flat, self.out_spec = pytree.tree_flatten(out)
            # Only tensors can leave a traced graph; other leaves (a KV-cache object) become None.
            self.out_is_tensor = [isinstance(x, torch.Tensor) for x in flat]
            return [x for x in flat if isinstance(x, torch.Tensor)]

        # A model may hold compiled parts (per-block `block.compile()`): the reference must run
        # their original code, so Dynamo is told to inline them rather than refuse the trace.
        with torch.no_grad(), torch._dynamo.config.patch(error_on_nested_fx_trace=False):
            self.gm = make_fx(forward, tracing_mode="fake", _allow_non_fake_inputs=True)(
                list(self.params.values()), [leaves[i] for i in self.tensor_pos]
            )
        placeholders = [n for n in self.gm.graph.nodes if n.op == "placeholder"]
        self.weights = dict(zip(placeholders[: len(names)], names))


def trace_weight_edges(
    model: torch.nn.Module, *args: Any, config: Optional[PQTConfig] = None, **kwargs: Any
) -> tuple[list[WeightEdge], list[SkippedWeight]]:
    """Trace one forward and return the compiler's view: (sampled edges, skipped weights)."""
    config = config or PQTConfig()
    t = _Traced(model, args, kwargs)
    return find_weight_edges(t.gm.graph, t.weights, admits_fn(config, parameter_aliases(model)))


def sampled_weights(
    model: torch.nn.Module,
    *,
    seed: int,
    config: Optional[PQTConfig] = None,
    example_args: Optional[tuple] = None,
    example_kwargs: Optional[dict] = None,
) -> dict[str, torch.Tensor]:
    """{qualified name: sampled weight} for every weight the compiler samples, at `seed`.

    With `example_args` (and/or `example_kwargs`) the forward is traced and the compiler's
    pattern rules decide (exact for any model); without, the module-type rules of
    `linear_weight_axes` are used. Samples are in the weight's dtype (for the dtype a matmul
    reads under autocast, call `run`, which samples in that dtype).
    """
    config = config or PQTConfig()
    params = _named_parameters(model)
    if example_args is not None or example_kwargs is not None:
        edges, _ = trace_weight_edges(model, *(example_args or ()), config=config, **(example_kwargs or {}))
        axes = {e.name: e.axis for e in edges}
    else:
        admits = admits_fn(config, parameter_aliases(model))
        axes = {n: a for n, a in linear_weight_axes(model).items() if admits(n)}
    with torch.no_grad():
        return {
            name: sample(params[name], seed=seed, key=key_for_name(name), axis=axis, config=config)
            for name, axis in axes.items()
        }


def run(model: torch.nn.Module, *args: Any, seed: int, config: Optional[PQTConfig] = None, **kwargs: Any) -> Any:
    """Run the model's forward in eager with every matmul weight sampled at `seed`.

    Matches a compiled call under `pqt_compile.fixed_seed(seed)`: same weights, same axes,
    same dtypes (an autocast cast is absorbed into the sample), same keys. Outputs that are not
    tensors (an HF KV-cache object) come back as None: pass use_cache=False to such models.
    """
    config = config or PQTConfig()
    t = _Traced(model, args, kwargs)
    graph = t.gm.graph
    edges, _ = find_weight_edges(graph, t.weights, admits_fn(config, parameter_aliases(model)))
    first = next(n for n in graph.nodes if n.op != "placeholder")
    with graph.inserting_before(first):
        seed_node = graph.placeholder("pqt_seed")
        keys_node = graph.placeholder("pqt_keys")
    index = {e.name: i for i, e in enumerate(edges)}

    def key_of(g: torch.fx.Graph, edge: WeightEdge) -> torch.fx.Node:
        return g.call_function(torch.ops.aten.select.int, (keys_node, 0, index[edge.name]))

    insert_sample(graph, edges, seed_node, key_of, config, tag_recompute=False)
    t.gm.recompile()
    device = next(iter(t.params.values())).device if t.params else torch.device("cpu")
    keys = torch.tensor([key_for_name(e.name) for e in edges] or [0], dtype=torch.int64, device=device)
    seed_t = torch.tensor(seed, dtype=torch.int64, device=device)
    inputs = [*t.params.values(), *(t.leaves[i] for i in t.tensor_pos), seed_t, keys]
    # The traced graph already holds autocast's casts: replay it as it is.
    with torch.autocast(device.type, enabled=False):
        tensors = iter(torch.fx.Interpreter(t.gm).run(*inputs))
    flat = [next(tensors) if is_t else None for is_t in t.out_is_tensor]
    return pytree.tree_unflatten(flat, t.out_spec)
