"""NVFP4 tensor-scale groups: sibling weights that serving engines fuse share one tensor scale.

vLLM and SGLang load a Llama-style attention's q_proj, k_proj and v_proj (and an MLP's gate_proj
and up_proj) as one fused nn.Linear, and apply one NVFP4 tensor scale (`weight_global_scale`) to
the fused weight. A group of siblings therefore has to be trained and stored under one tensor
scale, the one the group's max |w| gives; llm-compressor shares its global scales the same way.

The rule, in one place for the compiler pass, the eager reference, `quantize` / `pack` and every
writer: weights named `<parent>.<member>.weight`, with the members of one group of
`PQTConfig.tensor_scale_groups` under the same parent, form a group; each member's tensor amax is
the group's (the max over the members' max |w|). A weight in no group keeps its own.
Only the members that are sampled form the group (an excluded sibling is stored dense).

NOTE [groups within one graph]: the compiled step computes the group's amax in the graph that
samples the members, so it can share a scale only among the members that are inputs of that
graph. Where the model holds members that the graph does not (a graph break between q_proj and
k_proj, DDP's optimizer compiling each gradient bucket's subgraph apart: every member of a real
Llama fills a 25 MB bucket of its own, or each nn.Linear compiled alone), the graph groups the
members it holds and warns (`missing_members`, sample_pass.py), while the export stores the whole
group's scale. With power-of-two tensor scales the two differ only in blocks that the group's
scale pushes below E4M3's normal range (in tests/test_scale_groups.py's model the first values
changed with a sibling 2^13 times larger), so training there stays possible (a refusal would
rule out DDP) and is not silent. A module compiled alone knows its parent only through
`pqt_compile.register(model)`: without it its weight's name has no parent and forms no group, as
its noise key has no parent either (naming.py).
"""

from __future__ import annotations

from typing import Iterable, Mapping, Optional

import torch

from .config import PQTConfig
from .naming import named_parameters
from .selection import could_be_sampled

__all__ = ["groups_among", "group_tensor_amax", "members_in", "missing_members", "shared_with"]

_LEAF = "weight"


def _split(name: str) -> Optional[tuple[str, str]]:
    """(parent, module) of a weight name `<parent>.<module>.weight`; None for any other name."""
    head, _, leaf = name.rpartition(".")
    if leaf != _LEAF or not head:
        return None
    parent, _, module = head.rpartition(".")
    return parent, module


def _join(parent: str, module: str) -> str:
    return f"{parent}.{module}.{_LEAF}" if parent else f"{module}.{_LEAF}"


def _siblings(name: str, config: PQTConfig) -> Optional[tuple[str, ...]]:
    """The names of every member of `name`'s group (itself included), or None outside any group."""
    split = _split(name)
    if split is None:
        return None
    parent, module = split
    for group in config.tensor_scale_groups:
        if module in group:
            return tuple(_join(parent, m) for m in group)
    return None


def groups_among(names: Iterable[str], config: PQTConfig) -> list[tuple[str, ...]]:
    """The groups of two or more of `names` (the sampled weights of a graph or a model) that share
    a tensor scale, each in its config order, in the order their first member appears."""
    present = dict.fromkeys(names)
    groups, seen = [], set()
    for name in present:
        siblings = _siblings(name, config)
        if siblings is None or siblings in seen:
            continue
        seen.add(siblings)
        members = tuple(n for n in siblings if n in present)
        if len(members) > 1:
            groups.append(members)
    return groups


def shared_with(name: str, names: Iterable[str], config: PQTConfig) -> tuple[str, ...]:
    """The other members of `name`'s group among `names` (empty where it keeps its own scale)."""
    for group in groups_among(names, config):
        if name in group:
            return tuple(n for n in group if n != name)
    return ()


def members_in(models: Iterable[tuple[torch.nn.Module, str]], config: PQTConfig) -> frozenset[str]:
    """The names of the group members among the weights of `models` ((module, name prefix) pairs,
    naming.roots_holding) that `config` would sample if a matmul read them."""
    if not config.tensor_scale_groups:
        return frozenset()
    names = set()
    for model, prefix in models:
        names.update(n for n, p in named_parameters(model, prefix).items()
                     if _siblings(n, config) is not None and could_be_sampled(p, config, n))
    return frozenset(names)


def missing_members(graph_names: Iterable[str], model_names: Iterable[str], config: PQTConfig) -> dict[str, tuple[str, ...]]:
    """{a member sampled in this graph: its sampled siblings in the model that the graph lacks}
    (NOTE [groups within one graph]). `model_names`: the model's sampled weights' names."""
    in_graph = set(graph_names)
    model = set(model_names)
    missing = {}
    for name in sorted(in_graph):
        siblings = _siblings(name, config)
        if siblings is None:
            continue
        lacking = tuple(n for n in siblings if n in model and n not in in_graph)
        if lacking:
            missing[name] = lacking
    return missing


def group_tensor_amax(weights: Mapping[str, torch.Tensor], config: PQTConfig, *,
                      nonfinite: str = "propagate") -> dict[str, torch.Tensor]:
    """{name: the group's max |w| (fp32, 0-d)} for each of `weights` (the sampled weights, by name)
    that is in a group; the others are absent (their own amax applies). For `quantize` / `pack`
    and the writers: what the compiled step gives the op as `tensor_amax`.

    A member holding NaN or Inf: "propagate" (the reference, as the compiled step: the group gets
    no scales), "refuse" (the writers: a ValueError naming that member, as `pack` would, rather
    than its siblings) or "skip" (`quantize_model`: the group's amax from its finite members, so
    they are still quantized; the member itself is absent, so `quantize` leaves it as it is)."""
    if nonfinite not in ("propagate", "refuse", "skip"):
        raise ValueError(f"nonfinite must be 'propagate', 'refuse' or 'skip', got {nonfinite!r}")
    out = {}
    for group in groups_among(weights, config):
        amaxes = [weights[n].detach().float().abs().amax().cpu() for n in group]
        for n, a in zip(group, amaxes):
            if nonfinite == "refuse" and not bool(torch.isfinite(a)):
                raise ValueError(f"pqt.pack: {n} holds NaN or Inf, which no format code represents; fix the weight first")
        if nonfinite == "skip":  # the non-finite member keeps its own (NaN or Inf: left as it is)
            finite = [(n, a) for n, a in zip(group, amaxes) if bool(torch.isfinite(a))]
            if not finite:
                continue
            group, amaxes = tuple(n for n, _ in finite), [a for _, a in finite]
        amax = torch.stack(amaxes).amax()
        for n in group:
            out[n] = amax
    return out
