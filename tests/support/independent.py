"""An eager oracle for the reference that shares none of its tracing: the model's own forward
(torch.func.functional_call) with each sampled weight substituted by its sample.

* Which weights and along which axis: selection.module_rule_axes (by module type: nn.Linear,
  HF Conv1D, transformers experts; a tied weight once), not the traced graph rules; plus the
  routers of transformers' MoE layers (`*TopKRouter`: F.linear over their `weight`), which
  module_rule_axes does not know.
* The sample: pqt_compile.sample (the eager op, held to the formula by its own tests), in the
  dtype the matmul reads: the autocast dtype under autocast (one rounding, as the compiler's
  NOTE [one rounding]), else the weight's.
* Substitution: straight through, exactly: forward returns the sample itself, backward hands
  the gradient to the weight unchanged (cast to its dtype). The formula w + (w_hat - w).detach()
  is not exact in floating point (w + (w_hat - w) can round off w_hat), so it is not used.
* Tied weights: each module reads its own name of the weight (functional_call with
  tie_weights=False): an nn.Embedding reads the clean weight, every other module the sample.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from pqt_compile import PQTConfig, key_for_name, sample
from pqt_compile.naming import named_parameters
from pqt_compile.selection import admits, module_rule_axes


class _StraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w: torch.Tensor, w_hat: torch.Tensor) -> torch.Tensor:
        ctx.dtype = w.dtype
        return w_hat.view_as(w_hat)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad.to(ctx.dtype), None


def straight_through(w: torch.Tensor, w_hat: torch.Tensor) -> torch.Tensor:
    """w_hat in the forward; the identity to w in the backward."""
    return _StraightThrough.apply(w, w_hat)


def substitutions(model: torch.nn.Module, seed: int, config: PQTConfig,
                  dtype: Optional[torch.dtype] = None) -> dict[str, torch.Tensor]:
    """{every qualified name (tied names each): the tensor functional_call should read there}."""
    params = named_parameters(model)
    canon = {id(p): n for n, p in params.items()}
    axes = module_rule_axes(model, config)
    for module in model.modules():
        w = getattr(module, "weight", None)
        if type(module).__name__.endswith("TopKRouter") and id(w) in canon and admits(config, canon[id(w)]):
            axes.setdefault(canon[id(w)], 1)
    samples = {}
    for name, axis in axes.items():
        p = params[name]
        out = dtype if dtype is not None and p.dtype == torch.float32 else p.dtype
        with torch.no_grad():
            samples[name] = sample(p, seed=seed, key=key_for_name(name), axis=axis, config=config, out_dtype=out)
    mapping: dict[str, torch.Tensor] = {}
    for mod_name, module in model.named_modules(remove_duplicate=False):
        for p_name, p in module.named_parameters(recurse=False):
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            name = canon.get(id(p))
            clean = isinstance(module, torch.nn.Embedding) or name not in samples
            mapping[full] = p if clean else straight_through(p, samples[name])
    return mapping


def run(model: torch.nn.Module, *args: Any, seed: int, config: Optional[PQTConfig] = None, **kwargs: Any) -> Any:
    """The model's forward with its sampled weights substituted (see the module docstring)."""
    config = config or PQTConfig()
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
    if dtype is None and torch.cuda.is_available() and torch.is_autocast_enabled("cuda"):
        dtype = torch.get_autocast_dtype("cuda")
    mapping = substitutions(model, seed, config, dtype)
    return torch.func.functional_call(model, mapping, args, kwargs, tie_weights=False, strict=False)


def _plain(v: Any) -> Any:
    """A call argument as compared: tensors by dtype and shape only, other values as they are."""
    if isinstance(v, (torch.Tensor, torch.fx.Node)):
        val = v.meta.get("val") if isinstance(v, torch.fx.Node) else v
        return ("T", val.dtype, tuple(val.shape)) if isinstance(val, torch.Tensor) else ("T",)
    if isinstance(v, (list, tuple)):
        return type(v)(_plain(x) for x in v)
    return v


def dispatched_ops(fn, *args: Any, **kwargs: Any) -> list[tuple]:
    """[(aten overload, its arguments as `_plain` compares them)] that a real call dispatches
    below autograd, in order: what make_fx records for the same call."""
    from torch.utils._python_dispatch import TorchDispatchMode

    calls: list[tuple] = []

    class _Log(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, a=(), k=None):
            calls.append((func, _plain(tuple(a)), _plain(dict(k or {}))))
            return func(*a, **(k or {}))

    with _Log():
        fn(*args, **kwargs)
    return calls


def graph_ops(gm: torch.fx.GraphModule) -> list[tuple]:
    """[(overload, arguments)] of a traced graph's calls, as `dispatched_ops` lists them.

    torch 2.15's make_fx records the detach that autograd applies to an op's saved outputs as an
    `aten.alias` that nothing uses (2.13 records `aten.detach`); both are identities on values,
    and an unused node feeds nothing, so such an alias is listed as the detach a real call
    dispatches. An alias that something uses is listed as it is.
    """
    def target(n: torch.fx.Node) -> Any:
        return torch.ops.aten.detach.default if n.target is torch.ops.aten.alias.default and not n.users else n.target

    return [(target(n), _plain(tuple(n.args)), _plain(dict(n.kwargs))) for n in gm.graph.nodes
            if n.op == "call_function" and isinstance(n.target, torch._ops.OpOverload)]
