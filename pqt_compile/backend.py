"""The `pqt` torch.compile backend.

    torch.compile(model, backend="pqt", options={"format": "fp4_e2m1", "max_autotune": True})
    pqt_compile.compile(model, config=PQTConfig(...), mode="max-autotune")

The backend adds two inputs to the Dynamo graph, `pqt_seed` (a fresh int64 every training
call) and `pqt_keys` (one int64 key per Parameter input, from its qualified name), and
hands the graph to Inductor with the SamplePass installed as its joint-graph custom pass,
patched for this compile only. At run time `PQTCompiled` supplies seed and keys, and
switches to a clean graph in eval mode.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Sequence

import torch

from .config import PQTConfig
from .passes.manager import PassManager
from .passes.sample_pass import SamplePass
from .runtime import PQTCompiled, ParamNames, register, with_seed_and_keys

__all__ = ["pqt_backend", "compile", "register", "split_options", "PQTCompiled"]


def split_options(options: Optional[dict]) -> tuple[PQTConfig, dict]:
    """Split torch.compile options into the PQTConfig and Inductor config patches.

    A key that is neither a PQTConfig field nor an Inductor config option is refused by name.
    """
    import torch._inductor.config as inductor_config

    options = dict(options or {})
    if isinstance(options.get("config"), PQTConfig):
        base = options.pop("config")
    else:
        base = PQTConfig()
    fields = {f.name for f in dataclasses.fields(PQTConfig)}
    pqt = {k: v for k, v in options.items() if k in fields}
    rest = {k: v for k, v in options.items() if k not in fields}
    unknown = sorted(k for k in rest if k not in inductor_config._config)  # type: ignore[attr-defined]
    if unknown:
        raise ValueError(
            f"pqt backend: unknown option(s) {unknown}; accepted: the PQTConfig fields {sorted(fields)} "
            "and Inductor config options"
        )
    return (base.replace(**pqt) if pqt else base), rest


def _mode_patches(mode: Optional[str]) -> dict:
    if not mode or mode == "default":
        return {}
    from torch._inductor import list_mode_options

    return dict(list_mode_options(mode))


def pqt_backend(gm: torch.fx.GraphModule, example_inputs: Sequence[Any], mode: Optional[str] = None, options: Optional[dict] = None) -> Callable:
    """The Dynamo backend registered as "pqt" (entry point `torch_dynamo_backends`)."""
    config, inductor_patches = split_options(options)
    return compile_graph(gm, list(example_inputs), config, {**_mode_patches(mode), **inductor_patches})


def _copy_dynamo_graph(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """A copy of Dynamo's graph module that we may add inputs to.

    Dynamo reads its own graph again after the backend returns, so it must stay as it was.
    AOTAutograd reads `meta`, `_param_name_to_source` and each placeholder's `_dynamo_source`
    (torch 2.11-2.13), which a plain graph copy does not carry over.
    """
    graph = torch.fx.Graph()
    val_map: dict = {}
    graph.output(graph.graph_copy(gm.graph, val_map))
    for old, new in val_map.items():
        if hasattr(old, "_dynamo_source"):
            new._dynamo_source = old._dynamo_source
    out = torch.fx.GraphModule(gm, graph)
    out.meta = dict(gm.meta)
    if hasattr(gm, "_param_name_to_source"):
        out._param_name_to_source = gm._param_name_to_source
    return out


def compile_graph(gm: torch.fx.GraphModule, example_inputs: list, config: PQTConfig, inductor_patches: dict) -> Callable:
    """Compile one Dynamo graph with PQT. Returns a boxed callable (PQTCompiled)."""
    from torch._inductor.compile_fx import compile_fx

    from . import lowering  # noqa: F401  (registers the Inductor lowering of pqt.sample)

    if any(True for _ in gm.parameters()):  # checked first: such a graph has no Parameter inputs
        raise RuntimeError(
            "pqt: this graph holds its parameters as attributes; pqt needs them as graph inputs, "
            "which is Dynamo's default: set torch._dynamo.config.inline_inbuilt_nn_modules = True"
        )
    names = ParamNames.for_graph(gm, example_inputs)
    if not names.positions:  # no Parameter inputs: nothing to sample
        return compile_fx(gm, example_inputs, config_patches=inductor_patches or None)
    device = example_inputs[names.positions[0]].device
    gm = _copy_dynamo_graph(gm)
    first = next(n for n in gm.graph.nodes if n.op != "placeholder")
    with gm.graph.inserting_before(first):
        for name in ("pqt_seed", "pqt_keys"):
            # AOTAutograd maps every Dynamo placeholder to a source; None marks an input
            # that user code does not hold (as the DDP optimizer's inputs), torch 2.11-2.13.
            gm.graph.placeholder(name)._dynamo_source = None  # type: ignore[attr-defined]
    gm.recompile()
    inputs = with_seed_and_keys(example_inputs, len(names.positions), device)

    def build(weight_names: Optional[list[str]], example: list) -> tuple[Callable, SamplePass]:
        """Compile with the given names of the weight inputs (None: a graph that never samples)."""
        weights = dict(zip(names.positions, weight_names)) if weight_names is not None else {}
        pass_ = SamplePass(config, weights, len(example), names.aliases, names.buffers)
        patches = {**inductor_patches, "joint_custom_pre_pass": PassManager([pass_])}
        return compile_fx(gm, example, config_patches=patches), pass_

    fn, pass_ = build(names.names, inputs)
    # Whether this graph samples, decided here and not from the pass's records: on a cache hit
    # (FX graph / AOTAutograd cache) the pass does not run again, but the cached graph samples.
    # AOTAutograd builds a joint (training) graph when grad is on and an input requires grad.
    training = torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in example_inputs)
    return PQTCompiled(fn, build, names, config, device, pass_, samples=training or config.sample_in_eval)


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
    given, unlike torch.compile's); other kwargs (dynamic, fullgraph) go to torch.compile. Also
    registers the model's parameter names, so keys match `reference.run(model, ...)` even when
    blocks are compiled separately. With `inplace=True` the module itself is compiled
    (`nn.Module.compile`) and returned: for frameworks that expect the original class, such as
    transformers' Trainer.
    """
    register(model)
    cfg = config or PQTConfig()
    if not isinstance(cfg, PQTConfig):
        raise TypeError(f"pqt_compile.compile: config must be a PQTConfig, got {type(cfg).__name__}")
    split_options({"config": cfg, **(options or {})})  # refuse bad options now, not at first call

    def pqt(gm: torch.fx.GraphModule, example_inputs: Sequence[Any]) -> Callable:
        return pqt_backend(gm, example_inputs, mode=mode, options={"config": cfg, **(options or {})})

    if inplace:
        # No no-op guard here: hooks on the module itself would run inside the compiled call.
        model.compile(backend=pqt, **kwargs)
        return model
    compiled = torch.compile(model, backend=pqt, **kwargs)
    _warn_if_nothing_sampled(compiled)
    return compiled


def _warn_if_nothing_sampled(module: torch.nn.Module) -> None:
    """Warn (once) if a training call of `module` ran no PQT-compiled graph at all.

    `module` is torch.compile's wrapper, whose hooks run eagerly around the compiled forward.

    That happens when Dynamo compiles nothing: e.g. `torch.compile(DDP(nn.Sequential(...)))`,
    where DDP's forward graph-breaks and torch's own Sequential.forward is not compiled as a
    top-level frame (torch 2.11-2.13). The model then trains without PQT, which must not be
    silent.
    """
    import warnings

    from .runtime import SAMPLED_CALLS, unwrap

    state = {"before": 0, "warned": False}

    def pre(mod: torch.nn.Module, args: Any) -> None:
        state["before"] = SAMPLED_CALLS[0]

    def post(mod: torch.nn.Module, args: Any, out: Any) -> None:
        if state["warned"] or not torch.is_grad_enabled() or not unwrap(mod).training:
            return
        state["warned"] = True  # checked on the first training call only
        if SAMPLED_CALLS[0] == state["before"]:
            warnings.warn(
                "pqt: this training call ran no PQT-compiled graph, so no weight was sampled "
                "(Dynamo compiled nothing here). Compile the module that holds the weights, "
                "e.g. DDP(pqt_compile.compile(model)) instead of pqt_compile.compile(DDP(model)) "
                "for a torch.nn container; pqt-dump shows what was compiled.",
                stacklevel=2,
            )

    module.register_forward_pre_hook(pre)
    module.register_forward_hook(post)
