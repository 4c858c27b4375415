"""The `pqt` torch.compile backend.

    torch.compile(model, backend="pqt", options={"format": "fp4_e2m1", "max_autotune": True})
    pqt_compile.compile(model, config=PQTConfig(...), mode="max-autotune")

Per Dynamo graph: register the model being compiled (its weights' names key their noise,
naming.py; NOTE [names from the compiled model]), name the graph's Parameter inputs, append the seed and keys inputs
(graph_abi.py), and hand the graph to Inductor with the SamplePass installed as its joint-graph
custom pass, patched for this compile only. The result is a `PQTCompiled` (wrapper.py), which
supplies seed and keys at each call.
"""

from __future__ import annotations

import dataclasses
import operator
import typing
from typing import Any, Callable, Optional, Sequence

import torch

from .. import guards, naming, steps
from ..compat import (compile_fx, compiled_module, copy_dynamo_graph_attrs, frame_modules, frame_root_module,
                      ieee_division_patches, inductor_config, inductor_config_options, inductor_option_type, mode_options,
                      compile_in_place, parameters_as_attributes_cause)
from ..config import PQTConfig, config_or_default
from ..formats import parse_format
from ..moe import check_experts
from ..naming import GraphWeights, ResolvedWeights
from ..scale_groups import members_in
from ..selection import admits_fn
from ..sharding import is_dtensor, shard_layout
from . import cached_warnings, graph_abi
from .passes.manager import PassManager
from .passes.matvec_as_matmul import MatVecAsMatmulPass
from .passes.sample_pass import SamplePass
from .passes.template_layout_pass import TemplateLayoutPass
from .wrapper import PQTCompiled

__all__ = ["pqt_backend", "compile", "split_options", "GraphCompiler", "register_roots"]


def split_options(options: Optional[dict]) -> tuple[PQTConfig, dict]:
    """Split torch.compile options into the PQTConfig and Inductor config patches.

    A key that is neither a PQTConfig field nor an Inductor config option is refused by name.
    """
    options = dict(options or {})
    base = options.pop("config") if isinstance(options.get("config"), PQTConfig) else PQTConfig()
    fields = {f.name for f in dataclasses.fields(PQTConfig)} | {"seed"}  # seed: refused with its fix
    pqt = {k: v for k, v in options.items() if k in fields}
    rest = {k: v for k, v in options.items() if k not in fields}
    unknown = sorted(set(rest) - inductor_config_options())
    if unknown:
        raise ValueError(
            f"pqt backend: unknown option(s) {unknown}; accepted: the PQTConfig fields {sorted(fields - {'seed'})} "
            "and Inductor config options"
        )
    for name, value in rest.items():  # as torch.compile checks Inductor's options ("False" would be true)
        declared = inductor_option_type(name)
        if typing.get_origin(declared) is None and isinstance(declared, type) and not isinstance(value, declared):
            raise ValueError(f"pqt backend: Inductor option {name!r} takes a {declared.__name__}, got "
                             f"{type(value).__name__} {value!r}")
    return (base.replace(**pqt) if pqt else base), rest


def pqt_backend(gm: torch.fx.GraphModule, example_inputs: Sequence[Any], mode: Optional[str] = None,
                options: Optional[dict] = None) -> Callable:
    """The Dynamo backend registered as "pqt" (entry point `torch_dynamo_backends`)."""
    config, inductor_patches = split_options(options)
    patches = {**(mode_options(mode) if mode and mode != "default" else {}), **inductor_patches}
    return compile_graph(gm, list(example_inputs), config, patches)


def _copy_dynamo_graph(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """A copy of Dynamo's graph module that we may add inputs to (Dynamo reads its own again
    after the backend returns, so it must stay as it was)."""
    graph = torch.fx.Graph()
    val_map: dict = {}
    graph.output(graph.graph_copy(gm.graph, val_map))
    out = torch.fx.GraphModule(gm, graph)
    copy_dynamo_graph_attrs(gm, out, val_map)
    return out


class GraphCompiler:
    """Compiles one Dynamo graph, with the seed and keys inputs, through Inductor and the pass.

    Kept by the wrapper to compile a variant of a shared graph on first use (NOTE [shared
    graphs] in wrapper.py).
    """

    def __init__(self, gm: torch.fx.GraphModule, config: PQTConfig, patches: dict, weights: GraphWeights,
                 key_slots: tuple[int, ...]) -> None:
        """key_slots: the slots of `weights` that get a key input (graph_abi.key_slots)."""
        self.gm = _copy_dynamo_graph(gm)
        graph_abi.add_inputs(self.gm.graph, dynamo=True, num_weights=len(key_slots))
        self.gm.recompile()
        self.config = config
        self.patches = patches
        self.weights = weights
        self.key_slots = key_slots
        # NOTE [training graphs]: a graph compiled with grad enabled is a training graph, and its
        # weights are sampled, whether or not an input requires grad: AOTAutograd then builds an
        # inference graph (a frozen block in a graph of its own, after a graph break or compiled
        # per block), which must sample as the same frozen weights do inside a joint graph (the
        # noise must not depend on where Dynamo splits the model). Dynamo guards on grad mode at a
        # frame's entry, so a call under no_grad gets a graph of its own (clean); a no_grad block
        # inside a frame entered with grad is part of this graph, as it is of a joint one. The
        # wrapper's per-module training flags still switch weights off in eval mode, and steps.py
        # NOTE [frozen graphs] keeps the seed moving when no backward runs through the graph.
        self.training = torch.is_grad_enabled()

    def compile(self, resolved: ResolvedWeights, example_inputs: list) -> Callable:
        """Compile with the pass deciding include/exclude from `resolved`'s names.

        The pass sees AOTAutograd's primal inputs, where a DTensor weight is its local shard
        (graph_abi.primal_positions); each shard's place in its full weight goes with it
        (sharding.py NOTE [global index])."""
        aliases = {n: a for n, a in zip(resolved.names, resolved.aliases) if a}
        primal, num_primals = graph_abi.primal_positions(example_inputs)
        shards = {primal[pos]: layout for pos, name in zip(self.weights.positions, resolved.names)
                  if (layout := shard_layout(name, example_inputs[pos])) is not None}
        two_level = parse_format(self.config.format).two_level
        members = _group_members(self.config, [example_inputs[pos] for pos in self.weights.positions],
                                 resolved.names) if two_level else frozenset()
        pass_ = SamplePass(self.config, {primal[pos]: n for pos, n in zip(self.weights.positions, resolved.names)},
                           num_primals, aliases, {primal[pos]: n for pos, n in self.weights.buffers.items()},
                           shards=shards, sample_inference=self.training,
                           key_inputs={primal[self.weights.positions[s]]: i for i, s in enumerate(self.key_slots)},
                           group_members=members)
        passes = PassManager([pass_, MatVecAsMatmulPass(), TemplateLayoutPass()])
        # NVFP4 divides: on a torch without ops.div_rn, Triton must divide as IEEE does (compat NOTE
        # [division on torch 2.11]); a patch the user gave explicitly wins (the lowering then refuses).
        division = ieee_division_patches() if two_level else {}
        # The seed and keys are 0-d int64 inputs: no size check per call (compat NOTE [0-d input
        # asserts]). Fixed here, so not in the pass's cache_key: put it there if it ever varies.
        # NOTE [matmuls stay matmuls]: Inductor's decomposition table rewrites some matmuls into
        # multiplies and sums while AOTAutograd traces, before the joint-graph pass runs: on the
        # CPU one row times one column, tiny ones and K = 1; on a GPU K = 1 and, under
        # coordinate-descent tuning (max-autotune), every one-row or one-column matmul, such as a
        # Linear(d, 1) value head. The pass would then find no matmul and the weight would train
        # clean, where the reference samples it. A pqt compile keeps them matmuls (an extern GEMM
        # call for a tiny product, where Inductor would have fused a reduction), bar bmm's outer
        # products (K = 1: rotary tables, no weight). Inductor has no lowering of mv and addmv: the
        # MatVecAsMatmulPass turns them into one-column mm and addmm after the sampling (an ATen
        # fallback would be refused wherever CI is set). Fixed here, like the asserts: not in
        # the pass's cache_key.
        patches = {**division, **self.patches, "joint_custom_pre_pass": passes}
        return cached_warnings.compile_and_warn(
            lambda autograd_cache: compile_fx(self.gm, example_inputs, patches, scalar_index_asserts=False,
                                              keep_matmuls=True, autograd_cache=autograd_cache),
            pass_, self.gm, example_inputs)


#: Dynamo-level calls that multiply by an operand (functions, and the names of Tensor methods)
_MATMUL_FUNCTIONS = {torch.matmul, torch.mm, torch.bmm, torch.mv, torch.einsum, torch.addmm, torch.baddbmm, torch.addbmm,
                     torch.addmv, torch.tensordot, torch.inner, torch.nn.functional.linear, torch._C._nn.linear,
                     torch.nn.functional.bilinear, operator.matmul}
_MATMUL_METHODS = {"matmul", "mm", "bmm", "mv", "addmm", "baddbmm", "addbmm", "addmv", "__matmul__", "__rmatmul__"}


def _attributes_reach_a_matmul(gm: torch.fx.GraphModule) -> bool:
    """Whether a Parameter the graph holds as an attribute reaches a matmul in it (directly or through
    anything computed from it). A compiled optimizer step (`torch.compile(opt.step, backend="pqt")`)
    holds the parameters it updates as attributes and multiplies none: nothing to sample there. A
    submodule call (inline_inbuilt_nn_modules off) may hide one: counted as reaching one."""
    if any(n.op == "call_module" for n in gm.graph.nodes):
        return True
    reached = {n for n in gm.graph.nodes if n.op == "get_attr"}
    for n in gm.graph.nodes:  # topological order
        if n in reached or not any(a in reached for a in n.all_input_nodes):
            continue
        if (n.op == "call_function" and n.target in _MATMUL_FUNCTIONS) or (n.op == "call_method" and n.target in _MATMUL_METHODS):
            return True
        reached.add(n)
    return False


def compile_graph(gm: torch.fx.GraphModule, example_inputs: list, config: PQTConfig, inductor_patches: dict) -> Callable:
    """Compile one Dynamo graph with PQT. Returns a PQTCompiled (or Inductor's own result for a
    graph without weights)."""
    from . import lowering  # noqa: F401  (registers the Inductor lowering of pqt.sample)

    if any(True for _ in gm.parameters()):  # checked first: such a graph has no Parameter inputs
        # Inductor freezing lifts the weights of a no_grad graph into constants. Such a graph runs
        # clean anyway unless the config samples in eval: then it is plain Inductor's, frozen.
        grad_enabled = torch.is_grad_enabled()
        if not grad_enabled and not config.sample_in_eval and inductor_config().freezing:
            return compile_fx(gm, example_inputs, inductor_patches)
        if not _attributes_reach_a_matmul(gm):  # a compiled optimizer step: its parameters are state to update
            return compile_fx(gm, example_inputs, inductor_patches)
        raise RuntimeError(
            "pqt: this graph holds its parameters as attributes, and pqt samples weights that reach the graph as "
            f"inputs (Dynamo's default): {parameters_as_attributes_cause(grad_enabled)}"
            + (" (sample_in_eval samples no_grad calls too)" if config.sample_in_eval and not grad_enabled else "")
        )
    roots = register_roots(example_inputs)  # through torch.compile too: the guards and the names need the model
    for root in roots:
        check_experts(root, admits_fn(config, root))  # experts that would run eagerly: refused
    weights = GraphWeights.for_graph(gm, example_inputs, roots[0] if roots else None)
    if not weights.positions:  # no Parameter inputs: nothing to sample
        return compile_fx(gm, example_inputs, inductor_patches)
    _refuse_tensor_subclass_weights(weights, example_inputs)
    _refuse_per_rank_noise_under_tensor_parallelism(config, weights, example_inputs)
    device = example_inputs[weights.positions[0]].device
    key_slots = graph_abi.key_slots([example_inputs[pos] for pos in weights.positions])
    compiler = GraphCompiler(gm, config, inductor_patches, weights, key_slots)
    first = weights.resolve(example_inputs)
    fn = compiler.compile(first, graph_abi.example_inputs(example_inputs, len(key_slots), device))
    # Whether this graph samples, decided here and not from the pass: on a cache hit (FX graph or
    # AOTAutograd cache) the pass does not run again, but the cached graph samples (NOTE [training
    # graphs]).
    return PQTCompiled(fn, compiler, weights, first, config, device, samples=compiler.training or config.sample_in_eval)


def _group_members(config: PQTConfig, params: Sequence[Any], names: Sequence[str]) -> frozenset[str]:
    """The tensor-scale group members of the models that hold this graph's weights (scale_groups.py
    NOTE [groups within one graph]): found by the Parameter objects, or, where the graph's inputs
    are not the model's own (DDP's optimizer compiles each bucket's subgraph with fake inputs), by
    the names of its weights."""
    roots = naming.roots_holding(params)
    if not roots and names:
        wanted = set(names)
        roots = [(r, pre) for r, pre in naming.roots() if wanted <= set(naming.named_parameters(r, pre))]
    return members_in(roots, config)


def register_roots(example_inputs: Sequence[Any]) -> list[torch.nn.Module]:
    """Register the models this graph's weights are named in, and return them (the first names
    the graph; empty if none is known).

    NOTE [names from the compiled model]: a weight's key is its qualified name in the model
    being compiled, whichever entry point compiled it and however Dynamo cut the model into
    frames (README, the seed rule). So the roots registered are:
    1. the module the running torch.compile call compiles (compat.compiled_module: the model
       of torch.compile(model), model.compile() and pqt_compile.compile; for a compiled
       function, the outermost module it is calling). A frame of a block inside it (the
       model's forward skipped for a graph break inside its loop over blocks, a frame resumed
       after a break) or of a decorator's wrapper (transformers' forwards taking *args) gets
       the model's names, not the block's ("fc.weight" in every block) or the decorator's
       (`args.model.layers.0...`, from Dynamo's sources);
    2. the module whose forward Dynamo traces (its `self`), where it is not inside the first;
    3. for weights still unnamed, the modules among the traced frame's locals, then among the
       globals its code names, that hold them (a compiled function `step(model, x)` traced whole,
       or one that reads a module-level `model`: its weights are named in `model`, and the
       optimizer steps over them count).
    Registering wide then narrow keeps the wide names (naming.register). Blocks compiled one by
    one (`block.compile()` inside an eager root) are their own compiled modules: there
    `pqt_compile.register(root)` remains the way to the root's names.
    """
    compiled = compiled_module()
    frame = frame_root_module()
    roots = [compiled] if compiled is not None else []
    if frame is not None and not (compiled is not None and any(m is frame for m in naming.unwrap(compiled).modules())):
        roots.append(frame)
    for m in roots:
        naming.register(m)
    unnamed = {id(p) for p in example_inputs if isinstance(p, torch.nn.Parameter) and naming.lookup(p) is None}
    for m in frame_modules() if unnamed else ():
        if all(m is not r for r in roots) and any(id(p) in unnamed for p in m.parameters()):
            naming.register(m)
            roots.append(m)
    return roots


def _refuse_tensor_subclass_weights(weights: GraphWeights, example_inputs: list) -> None:
    """A weight held as a tensor subclass other than a DTensor (a float8 or NF4 wrapper) reaches
    the joint graph as parts whose meaning the pass does not know: refused by name rather than
    sampling one part as if it were the weight. DTensors are sampled (sharding.py)."""
    for pos, name in zip(weights.positions, weights.names):
        t = example_inputs[pos]
        if hasattr(t, "__tensor_flatten__") and not is_dtensor(t):
            raise NotImplementedError(
                f"pqt: weight {name!r} is a tensor subclass ({type(t).__name__}); pqt samples plain and DTensor "
                "weights only. Keep the weight a plain Parameter while training with pqt (convert it after), or "
                "exclude it in the PQTConfig."
            )


def _refuse_per_rank_noise_under_tensor_parallelism(config: PQTConfig, weights: GraphWeights, example_inputs: list) -> None:
    """per_rank_noise mixes each process's global rank into the seed (wrapper._rank). The ranks of
    a tensor-parallel group hold one model: their shards of a weight, and the replicated weights
    and activations between them, must see one draw. With a rank each, the replicated weights
    drifted apart and the row-parallel all-reduce summed partial products of different models,
    silently. Refused where a graph holds a DTensor weight (its TP shard; FSDP2 alone hands the
    graph plain unsharded Parameters)."""
    if not config.per_rank_noise:
        return
    for pos, name in zip(weights.positions, weights.names):
        if is_dtensor(example_inputs[pos]):
            raise ValueError(
                f"pqt: per_rank_noise=True with the tensor-parallel (DTensor) weight {name!r}: the ranks of a tensor-"
                "parallel group hold one model and must draw the same noise, but per_rank_noise gives every process "
                "its own draw, so they would train different models. Use per_rank_noise=False (the default) with "
                "tensor parallelism."
            )


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: hashed by identity, as the closure was
class _ConfiguredBackend:
    """`pqt_backend` with a compile's mode and options: a module-level class rather than a closure,
    so that the compiled module pickles (`torch.save(pqt_compile.compile(model))`), as one that
    torch.compile(backend="pqt") returns does."""

    mode: Optional[str]
    options: dict

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: Sequence[Any]) -> Callable:
        return pqt_backend(gm, example_inputs, mode=self.mode, options=dict(self.options))


def compile(
    model: torch.nn.Module,
    config: Optional[PQTConfig] = None,
    *,
    mode: Optional[str] = None,
    options: Optional[dict] = None,
    inplace: bool = False,
    **kwargs: Any,
) -> torch.nn.Module:
    """`torch.compile(model, backend="pqt")` with a config object.

    `mode` keeps its Inductor meaning and `options` takes Inductor config options (both may be
    given, unlike torch.compile's; PQT settings go in the config only); other kwargs (dynamic,
    fullgraph) go to torch.compile. Also
    registers the model's parameter names, so keys match `reference.run(model, ...)` even when
    blocks are compiled separately, and warns if a training call compiled nothing at all. With
    `inplace=True` the module itself is compiled (`nn.Module.compile`, or where that compiles
    nothing its equivalent: compat.compile_in_place) and returned: for frameworks that expect the
    original class, such as transformers' Trainer.
    """
    cfg = config_or_default(config, "pqt_compile.compile")
    if not isinstance(model, torch.nn.Module) or hasattr(model, "_orig_mod"):
        raise TypeError(
            f"pqt_compile.compile: {type(model).__name__} is {'already compiled' if hasattr(model, '_orig_mod') else 'not an nn.Module'}; "
            "pass the model itself (an already compiled one's model is its ._orig_mod), and compile it once"
        )
    pqt_fields = sorted(set(options or {}) & {f.name for f in dataclasses.fields(PQTConfig)})
    if pqt_fields:  # two places for one setting: the config, which the guards check, would not be what runs
        raise ValueError(f"pqt_compile.compile: {pqt_fields} are PQTConfig fields; give them in the config "
                         f"(PQTConfig({pqt_fields[0]}=...)), and only Inductor options in options=")
    split_options({"config": cfg, **(options or {})})  # refuse bad options now, not at first call
    if mode and mode != "default":
        mode_options(mode)  # ... and a bad mode (Inductor's own message names the modes)
    naming.register(model)
    check_experts(model, admits_fn(cfg, model))
    guards.expect_graphs(model, cfg)  # NOTE [compiled over] in guards.py, checked by the optimizer hook
    steps.install_hook()

    pqt = _ConfiguredBackend(mode, {"config": cfg, **(options or {})})
    if inplace:
        # No nothing-sampled guard here: hooks on the module itself would run inside the compiled call.
        compile_in_place(model, pqt, **kwargs)  # model.compile(), also for nn.Sequential and kin (compat)
        return model
    compiled = torch.compile(model, backend=pqt, **kwargs)
    guards.warn_if_nothing_sampled(compiled, cfg)
    return compiled
