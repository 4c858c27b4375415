"""The eager reference: what a compiled PQT training step computes, in plain eager torch.

`sampled_weights` returns the sample of every weight the compiler samples; `run` runs the
model's forward with those samples on the matmul paths (an embedding lookup of a tied weight
reads the clean weight). `run` traces the forward with make_fx and applies the compiler's own
pattern rules (compiler/passes: find_weight_edges / insert_sample / emit_template_layouts) and its names (naming.py:
canonical names, so a model holding compiled blocks is keyed as the plain model), so both
sample the same weights on the same paths, along the same axes, in the same dtypes, with the
same keys; it then replays the graph eagerly with the op's torch implementation. Gradients
flow to the model's parameters.

NOTE [trace as the call runs]: the trace is taken under the caller's grad mode, with the
parameters' and inputs' own requires_grad, so that it records the ops the real call would run.
Some ops pick their forward by grad mode: scaled_dot_product_attention asks its efficient and
cuDNN kernels for the logsumexp only when grad is on and an input requires grad (the backward
needs it). A trace under no_grad recorded the inference variant, and the replay's backward
then read a missing logsumexp: cuDNN raised "LSE is not correctly aligned", or under bf16
autocast returned gradients 10^4 times too large (H200, issue 25). Replayed under grad, each
recorded aten op differentiates with its own derivative formula, exactly as in the eager model;
`pqt.sample` passes the gradient straight through to the weight. So the replay is the autograd
of the eager model with each sampled weight replaced by its sample. `trace` returns that graph
(tests compare its ops with those a real call dispatches).

NOTE [grad mode inside forward]: make_fx records aten ops, not grad-mode switches, so a forward
that turns grad off inside (`with torch.no_grad():` around part of it) is replayed with grad on:
the reference's outputs then require grad where the eager model's do not, and gradients reach
weights that the eager backward never touches. pqt-check refuses such a model by name
(tools/check.py); compare the module that trains.
"""

from __future__ import annotations

import warnings
from typing import Any, Optional

import torch
from torch.fx.experimental.proxy_tensor import make_fx

from . import op as _op  # noqa: F401  (registers pqt::sample)
from .compat import allow_nested_fx_trace, pytree
from .compiler import graph_abi
from .compiler.passes import SkippedWeight, WeightEdge, emit_template_layouts, find_weight_edges, insert_sample
from .compiler.targets import gemm_templates
from .config import PQTConfig, config_or_default
from .moe import check_experts, traced_as_compiled
from .naming import named_parameters
from .op import sample
from .scale_groups import group_tensor_amax
from .seeds import check_seed, key_for_name
from .selection import admits_fn, module_rule_axes, module_rules_miss

__all__ = ["sampled_weights", "run", "trace", "trace_weight_edges", "sampled_axes", "ReferenceTraceError"]


class ReferenceTraceError(RuntimeError):
    """The reference could not trace the model's forward (it traces with fake tensors)."""

    @classmethod
    def of(cls, model: torch.nn.Module, e: BaseException) -> "ReferenceTraceError":
        """One line: the model, where in the user's code the trace stopped, the cause, the fix."""
        where = _user_frame(e)
        at = f" at {where}" if where else ""
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        name = type(e).__name__
        if name in ("GuardOnDataDependentSymNode", "DataDependentOutputException"):
            cause = "data-dependent control flow (Python branches on a tensor's value, or .item() / .tolist())"
            fix = ("compute the branch outside the model, or write it with torch.where / torch.cond, "
                   "so that one graph holds both sides")
        elif name in ("UnsupportedOperatorException", "DynamicOutputShapeException", "UnsupportedFakeTensorException"):
            cause = f"an op that fake tensors cannot run ({first})"
            fix = "register a fake (meta) implementation for it (torch.library.register_fake), or exclude that part"
        else:
            cause = f"{name}: {first}"
            fix = "run the model once eagerly on the same inputs to see the error; the reference traces with fake tensors"
        return cls(f"pqt reference: cannot trace {type(model).__name__}'s forward{at}: {cause}; {fix}")


def _user_frame(e: BaseException) -> str:
    """file:line (function) of the innermost traceback frame outside torch and pqt_compile."""
    import os
    import traceback

    skip = (os.path.dirname(torch.__file__), os.path.dirname(os.path.abspath(__file__)))
    found = ""
    for f in traceback.extract_tb(e.__traceback__):
        path = os.path.abspath(f.filename)
        if not path.startswith(skip) and "<" not in f.filename:
            found = f"{os.path.basename(f.filename)}:{f.lineno} ({f.name})"
    return found


class _Traced:
    def __init__(self, model: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        self.params = named_parameters(model)
        names = list(self.params)
        # functional_call takes the module's own names (a compiled block's `_orig_mod` included).
        own_names = {id(p): n for n, p in model.named_parameters()}
        call_names = [own_names[id(p)] for p in self.params.values()]
        pytree_ = pytree()
        leaves, self.in_spec = pytree_.tree_flatten((args, kwargs))
        self.tensor_pos = [i for i, x in enumerate(leaves) if isinstance(x, torch.Tensor)]
        self.leaves = leaves
        self.out_spec = None

        def forward(param_list: list, tensor_inputs: list):
            filled = list(self.leaves)
            for i, t in zip(self.tensor_pos, tensor_inputs):
                filled[i] = t
            a, k = pytree_.tree_unflatten(filled, self.in_spec)
            out = torch.func.functional_call(model, dict(zip(call_names, param_list)), a, k)
            flat, self.out_spec = pytree_.tree_flatten(out)
            # Only tensors can leave a traced graph; other leaves (a KV-cache object) become None.
            self.out_is_tensor = [isinstance(x, torch.Tensor) for x in flat]
            return [x for x in flat if isinstance(x, torch.Tensor)]

        # A model may hold compiled parts (per-block `block.compile()`): the reference must run
        # their original code, so Dynamo is told to inline them rather than refuse the trace.
        # Grad mode is the caller's (NOTE [trace as the call runs]).
        try:
            with allow_nested_fx_trace(), traced_as_compiled():
                self.gm = make_fx(forward, tracing_mode="fake", _allow_non_fake_inputs=True)(
                    list(self.params.values()), [leaves[i] for i in self.tensor_pos]
                )
        except Exception as e:  # noqa: BLE001 - re-raised with its cause named
            raise ReferenceTraceError.of(model, e) from e
        placeholders = [n for n in self.gm.graph.nodes if n.op == "placeholder"]
        self.weights = dict(zip(placeholders[: len(names)], names))


def trace(model: torch.nn.Module, *args: Any, **kwargs: Any) -> torch.fx.GraphModule:
    """The aten-level forward graph that `run` samples and replays, before sampling: inputs are
    the model's parameters (in `naming.named_parameters` order), then the tensor leaves of
    (args, kwargs). Traced under the caller's grad mode (NOTE [trace as the call runs])."""
    return _Traced(model, args, kwargs).gm


def trace_weight_edges(
    model: torch.nn.Module, *args: Any, config: Optional[PQTConfig] = None, **kwargs: Any
) -> tuple[list[WeightEdge], list[SkippedWeight]]:
    """Trace one forward and return the compiler's view: (sampled edges, skipped weights)."""
    config = config_or_default(config, "pqt_compile.reference.trace_weight_edges")
    t = _Traced(model, args, kwargs)
    return find_weight_edges(t.gm.graph, t.weights, admits_fn(config, model))


def sampled_axes(model: torch.nn.Module, config: PQTConfig, example_args: Optional[tuple] = None,
                 example_kwargs: Optional[dict] = None) -> dict[str, int]:
    """{qualified name: reduction axis} of the weights the compiler samples: traced with the
    compiler's rules when example inputs are given (exact for any model), else by module type
    (selection.module_rule_axes)."""
    if isinstance(example_args, torch.Tensor):  # one input given bare, not as (x,)
        example_args = (example_args,)
    if example_args is not None or example_kwargs is not None:
        edges, _ = trace_weight_edges(model, *(example_args or ()), config=config, **(example_kwargs or {}))
        return {e.name: e.axis for e in edges}
    axes = module_rule_axes(model, config)
    missed = module_rules_miss(model, config, axes)
    if missed:
        warnings.warn(
            f"pqt: without example inputs, the module-type rules cannot tell whether a matmul reads {len(missed)} matrix "
            f"weight(s) of {type(model).__name__}: {', '.join(missed[:8])}{', ...' if len(missed) > 8 else ''}. They are "
            "treated as not sampled (an export keeps them as they are), though training samples any that a matmul "
            "reads (x @ W with a bare Parameter, nn.MultiheadAttention's in_proj_weight). Pass example_args=(...) "
            "to trace the forward and apply the compiler's own rules.",
            stacklevel=3,
        )
    return axes


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
    `selection.module_rule_axes` are used. Samples are in the weight's dtype (for the dtype a matmul
    reads under autocast, call `run`, which samples in that dtype).
    """
    config = config_or_default(config, "pqt_compile.reference.sampled_weights")
    params = named_parameters(model)
    axes = sampled_axes(model, config, example_args, example_kwargs)
    shared = group_tensor_amax({n: params[n] for n in axes}, config)  # NVFP4's tensor-scale groups
    with torch.no_grad():
        return {
            name: sample(params[name], seed=seed, key=key_for_name(name), axis=axis, config=config,
                         tensor_amax=shared.get(name))
            for name, axis in axes.items()
        }


def run(model: torch.nn.Module, *args: Any, seed: int, config: Optional[PQTConfig] = None, **kwargs: Any) -> Any:
    """Run the model's forward in eager with every matmul weight sampled at `seed`.

    Matches a compiled call under `pqt_compile.fixed_seed(seed)`: same weights, same axes,
    same dtypes (an autocast cast is absorbed into the sample), same keys. Outputs that are not
    tensors (an HF KV-cache object) come back as None: pass use_cache=False to such models.
    """
    config = config_or_default(config, "pqt_compile.reference.run")
    check_seed(seed)  # 1.9 or True would be truncated into another draw
    check_experts(model, admits_fn(config, model))  # the compiler's refusal, here too
    t = _Traced(model, args, kwargs)
    graph = t.gm.graph
    edges, _ = find_weight_edges(graph, t.weights, admits_fn(config, model))
    seed_node, key_nodes = graph_abi.add_inputs(graph, dynamo=False, num_weights=max(1, len(edges)))
    slot = {e.name: i for i, e in enumerate(edges)}

    def key_of(g: torch.fx.Graph, edge: WeightEdge) -> torch.fx.Node:
        return graph_abi.key_of_slot(key_nodes, slot[edge.name])

    insert_sample(graph, edges, seed_node, key_of, config, tag_recompute=False)
    # The compiler's layout rule too, under the Inductor config in force here (same values).
    emit_template_layouts(graph, gemm_templates)
    t.gm.recompile()
    device = next(iter(t.params.values())).device if t.params else torch.device("cpu")
    keys = graph_abi.key_tensors([key_for_name(e.name) for e in edges] or [0], device)
    inputs = [*t.params.values(), *(t.leaves[i] for i in t.tensor_pos), graph_abi.seed_tensor(seed, device), *keys]
    # The traced graph already holds autocast's casts: replay it as it is.
    with torch.autocast(device.type, enabled=False):
        tensors = iter(torch.fx.Interpreter(t.gm).run(*inputs))
    flat = [next(tensors) if is_t else None for is_t in t.out_is_tensor]
    return pytree().tree_unflatten(flat, t.out_spec)
