"""transformers' mixture-of-experts modules: which experts implementations pqt samples, the
refusal of the others, and the expert weights' reduction axes by module type.

transformers 5.x stores a layer's experts as 3-D Parameters (`gate_up_proj`, `down_proj`) and
runs them as `config.experts_implementation` says (the `@use_experts_implementation` decorator,
whose classes carry `has_gate`, `is_transposed`, `_is_expert_parallel` and `config`):

  batched_mm  W[expert_ids] (index on dim 0) -> bmm                                 sampled
  grouped_mm  W (or W^T) -> aten._grouped_mm (bf16), or under torch.compile for other
              dtypes transformers::grouped_mm_fallback                             sampled
  eager       a Python loop over the experts hit (nonzero, .item()): Dynamo breaks the graph
              and runs it eagerly, so the expert weights would train clean         refused
  deepgemm, sonicmoe, ...  kernels pqt cannot see into                             refused

Sampled experts follow compiler/passes/weight_edges.py NOTE [expert paths]: the full 3-D
Parameter is sampled once per step, blocks along each expert's own reduction axis (axis 2 of
Mixtral/Qwen's [E, N, K], axis 1 of gpt-oss's transposed [E, K, N]).
"""

from __future__ import annotations

import contextlib
import sys
from typing import Callable, Iterator

import torch

__all__ = ["SAMPLED_IMPLEMENTATIONS", "experts_modules", "check_experts", "expert_axes", "traced_as_compiled"]

SAMPLED_IMPLEMENTATIONS = ("batched_mm", "grouped_mm")


def experts_modules(model: torch.nn.Module) -> dict[str, tuple[torch.nn.Module, str]]:
    """{qualified module name: (module, its experts_implementation)} of transformers experts modules."""
    out = {}
    for name, m in model.named_modules():
        cfg = getattr(m, "config", None)
        if hasattr(m, "_is_expert_parallel") and hasattr(m, "is_transposed") and cfg is not None:
            out[name] = (m, getattr(cfg, "_experts_implementation", None) or "eager")
    return out


def check_experts(model: torch.nn.Module, admits: Callable[[str], bool]) -> None:
    """Refuse, naming the modules, weights and fix, experts whose implementation pqt cannot
    sample exactly (admits: the config's include/exclude over qualified names)."""
    bad = []
    for name, (m, impl) in experts_modules(model).items():
        prefix = f"{name}." if name else ""
        weights = [prefix + n for n, p in m.named_parameters(recurse=False) if p.dim() == 3 and admits(prefix + n)]
        if weights and impl not in SAMPLED_IMPLEMENTATIONS:
            bad.append((name, impl, weights))
    if not bad:
        return
    name, impl, weights = bad[0]
    why = ("its Python loop over the experts that tokens hit breaks the graph, so Dynamo runs it eagerly and the "
           "expert weights would train without noise" if impl == "eager" else "its kernel is opaque to pqt")
    raise ValueError(
        f"pqt: {len(bad)} experts module(s) run experts_implementation={impl!r} (first: {name}, weights "
        f"{', '.join(weights)}), which pqt cannot sample: {why}. Use model.set_experts_implementation('grouped_mm') "
        "(or 'batched_mm'), or from_pretrained(..., experts_implementation='grouped_mm'); or exclude the expert "
        "weights in the PQTConfig."
    )


def expert_axes(module: torch.nn.Module) -> dict[str, int]:
    """{parameter name in `module`: reduction axis} of an experts module's 3-D weights: axis 2 of
    [E, N, K] (Mixtral, Qwen: F.linear(x, W[e])), axis 1 of [E, K, N] (gpt-oss, is_transposed)."""
    axis = 1 if getattr(module, "is_transposed", False) else 2
    return {n: axis for n, p in module.named_parameters(recurse=False) if p.dim() == 3}


@contextlib.contextmanager
def traced_as_compiled() -> Iterator[None]:
    """Trace transformers' experts as Dynamo sees them (for the eager reference's make_fx trace).

    grouped_mm experts pick their kernel by transformers' `is_torchdynamo_compiling()`: under
    torch.compile, non-bf16 weights run `transformers::grouped_mm_fallback`; otherwise
    `F.grouped_mm`, whose meta kernel accepts only bf16 (torch 2.13), so a fake trace of fp32
    experts would fail. Only that module's flag is switched: switching torch.compiler.is_compiling
    would make compiled blocks inside the model run their compiled code on fake tensors.
    """
    moe = sys.modules.get("transformers.integrations.moe")
    if moe is None or not hasattr(moe, "is_torchdynamo_compiling"):
        yield
        return
    saved = moe.is_torchdynamo_compiling
    moe.is_torchdynamo_compiling = lambda: True
    try:
        yield
    finally:
        moe.is_torchdynamo_compiling = saved
