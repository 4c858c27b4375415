"""Which weights are sampled: the one rule, used by the pass, the reference, export and the guards.

A weight is sampled if and only if
1. it is a Parameter (a buffer never is);
2. its dtype is float32, bfloat16 or float16;
3. a forward matmul (mm, addmm, mv, addmv, bmm, baddbmm, addbmm: what linear, matmul and einsum
   lower to; compiler/passes/matmul_ops.py) reads
   it as an operand;
4. it has at least 2 dims;
5. that matmul contracts a single axis of it: the axis its blocks run along;
6. the config's include/exclude patterns admit one of its names (a tied weight has several).

Rules 3 and 5 need a graph: `compiler/passes/weight_edges.find_weight_edges` finds them and asks
`skip_reason` for the verdict. Without a graph (export with no example input),
`module_rule_axes` applies rules 3 and 5 per module type (nn.Linear, HF Conv1D, tied weights),
and the guards use `could_be_sampled` (rules 1, 2, 4, 6) for weights no graph received.
"""

from __future__ import annotations

import functools
import re
from typing import Optional

import torch

from .blocks import SUPPORTED_DTYPES
from .config import PQTConfig
from .moe import expert_axes, experts_modules
from .naming import named_parameters, parameter_aliases

__all__ = ["admits", "admits_fn", "skip_reason", "samplable", "could_be_sampled", "module_rule_axes", "module_rules_miss",
           "not_matmul_weights", "Reason"]


class Reason:
    """Why a Parameter is not sampled (the words explain and pqt-dump print)."""

    DTYPE = "unsupported dtype {dtype}"
    NOT_MATMUL = "not a matmul operand"
    NOT_FOLLOWED = "reaches a matmul through {op}, which pqt does not follow: it trains without noise"
    NOT_MATRIX = "not a matrix (fewer than 2 dims)"
    MIXED_AXES = "the contracted dim spans several weight axes"
    EXCLUDED = "excluded by the config's include/exclude patterns"
    BUFFER = "not a Parameter (a buffer)"


@functools.lru_cache(maxsize=65536)
def admits(config: PQTConfig, name: str, aliases: tuple[str, ...] = ()) -> bool:
    """Whether the weight named `name` (with other names `aliases`) passes include/exclude.

    Included if any of its names matches `include` (or `include` is empty); excluded if any
    matches `exclude`, so `exclude=["lm_head"]` also keeps GPT-2's tied wte/lm_head clean.
    Memoised: a graph shared by several blocks asks on every call.
    """
    names = (name, *aliases)
    if config.include and not any(re.search(p, n) for p in config.include for n in names):
        return False
    return not any(re.search(p, n) for p in config.exclude for n in names)


def skip_reason(*, dtype: Optional[torch.dtype], ndim: int, forward_matmul: bool, single_axis: bool,
                admitted: bool) -> Optional[str]:
    """The first of rules 2-6 that a Parameter fails, as a Reason text; None if it is sampled."""
    if dtype not in SUPPORTED_DTYPES:
        return Reason.DTYPE.format(dtype=dtype)
    if not forward_matmul:
        return Reason.NOT_MATMUL
    if ndim < 2:
        return Reason.NOT_MATRIX
    if not single_axis:
        return Reason.MIXED_AXES
    if not admitted:
        return Reason.EXCLUDED
    return None


def admits_fn(config: PQTConfig, model: torch.nn.Module):
    """`admits` over a model's qualified names (its tied names included)."""
    aliases = parameter_aliases(model)
    return lambda name: admits(config, name, aliases.get(name, ()))


def samplable(p: object) -> bool:
    """Rules 1, 2 and 4: whether some config could sample `p` (a Parameter of a supported dtype with
    at least 2 dims) if a matmul read it. A graph input that is not gets no key (graph_abi.py)."""
    return isinstance(p, torch.nn.Parameter) and p.dtype in SUPPORTED_DTYPES and p.dim() >= 2


def could_be_sampled(p: torch.Tensor, config: PQTConfig, name: str, aliases: tuple[str, ...] = ()) -> bool:
    """Rules 1, 2, 4 and 6: `p` would be sampled if a matmul read it."""
    return samplable(p) and admits(config, name, aliases)


def module_rule_axes(model: torch.nn.Module, config: PQTConfig) -> dict[str, int]:
    """{name: reduction axis} of the sampled weights, by module type, without tracing.

    nn.Linear's weight [N, K] is contracted along axis 1; transformers' Conv1D holds [K, N]
    (used as x @ W) and is contracted along axis 0; transformers' MoE experts [E, N, K] along
    axis 2, or 1 where transposed (moe.expert_axes); a weight tied to an embedding is listed
    once, under its first name. Pass example inputs to export instead to apply the graph rules.
    """
    params = named_parameters(model)
    canon = {id(p): n for n, p in params.items()}
    aliases = parameter_aliases(model)
    axes: dict[str, int] = {}
    experts = {m for m, _ in experts_modules(model).values()}
    for module in model.modules():
        for pname, axis in expert_axes(module).items() if module in experts else ():
            p = getattr(module, pname)
            if id(p) in canon and could_be_sampled(p, config, canon[id(p)], aliases.get(canon[id(p)], ())):
                axes.setdefault(canon[id(p)], axis)
        w = getattr(module, "weight", None)
        if not isinstance(w, torch.nn.Parameter) or id(w) not in canon:
            continue
        name = canon[id(w)]
        if not could_be_sampled(w, config, name, aliases.get(name, ())):
            continue
        if isinstance(module, torch.nn.Linear):
            axes.setdefault(name, 1)
        elif type(module).__name__ == "Conv1D" and w.dim() == 2 and w.shape == (getattr(module, "nx", -1), getattr(module, "nf", -1)):
            axes.setdefault(name, 0)
    return axes


#: Modules whose own weight no matmul reads (a lookup, a convolution): never sampled.
_NOT_MATMUL_MODULES = (torch.nn.Embedding, torch.nn.EmbeddingBag, torch.nn.modules.conv._ConvNd)


def module_rules_miss(model: torch.nn.Module, config: PQTConfig, axes: dict[str, int]) -> list[str]:
    """The admitted matrix Parameters that `module_rule_axes` (its result: `axes`) cannot place:
    neither a module rule's weight nor an embedding's or a convolution's. A matmul may read them
    (x @ W with a bare Parameter, nn.MultiheadAttention's in_proj_weight), and only tracing the
    forward tells."""
    params = named_parameters(model)
    aliases = parameter_aliases(model)
    # A MoE router (transformers' *TopKRouter: a bare [E, H] weight read by F.linear) is sampled in
    # training but kept in full precision by the engines (llama.cpp's ffn_gate_inp, gpt-oss's and
    # vLLM's unconverted gates), and by the exports: placed, not missed.
    owned_elsewhere = not_matmul_weights(model) | {id(p) for m in model.modules()
                                                   if type(m).__name__.lower().endswith("router")
                                                   for p in m.parameters(recurse=False)}
    # An experts module's other Parameters (gpt-oss's [E, N] biases) are added, never multiplied.
    for m, _ in experts_modules(model).values():
        owned_elsewhere |= {id(p) for n, p in m.named_parameters(recurse=False) if n not in expert_axes(m)}
    return [n for n, p in params.items() if n not in axes and id(p) not in owned_elsewhere
            and could_be_sampled(p, config, n, aliases.get(n, ()))]


def not_matmul_weights(model: torch.nn.Module) -> set[int]:
    """ids of the Parameters whose modules all read them without a matmul (an embedding's table, a
    convolution's kernel): never sampled, whatever the patterns say. A table tied to a head (a
    Linear's weight too) is not one of them: the head's matmul reads it."""
    lookups, others = set(), set()
    for m in model.modules():
        into = lookups if isinstance(m, _NOT_MATMUL_MODULES) else others
        into.update(id(p) for p in m.parameters(recurse=False))
    return lookups - others
