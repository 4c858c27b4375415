"""check: does the compiled PQT step compute what the eager reference computes, on your model?

    report = pqt_compile.check(model, input_ids, use_cache=False)            # fp32
    report = pqt_compile.check(model, x, config=cfg, autocast=torch.bfloat16)
    print(report); assert report.passed

One forward and backward of `model` compiled with the pqt backend (`torch.compile(model,
backend=...)`, the headline entry point) and the same through `reference.run`, at one fixed
seed, against the same random cotangent per output. The report gives, per output and per
parameter gradient, the maximum relative error against the bound for the dtype in use; which
weights were sampled, which were not and why; whether each sampled weight was keyed by the name
the reference uses; and a verdict: "pass", "fail", or "inconclusive" (the noise moves the
outputs too little, at this dtype, to tell a wrong sample from rounding).

The model runs in eval mode with `sample_in_eval=True` (restored afterwards): dropout would draw
other masks in the compiled and the eager run. Also restored: the seed stream and the
parameters' `.grad`. Nothing is written.

Refused with a `CheckError` (one line naming the problem and the fix): a model that samples no
weight, a model the reference cannot trace (`reference.ReferenceTraceError`: data-dependent
control flow, an op fake tensors cannot run).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from tabulate import tabulate

from ..compat import pytree
from ..config import PQTConfig, config_or_default
from .cli import UsageError, eager_outputs
from .restore import model_state_restored

__all__ = ["check", "CheckReport", "Comparison", "CheckError", "BOUNDS", "GRAD_FLOOR", "MARGIN"]

# NOTE [check bounds]: the compiled step and the reference use bit-identical samples, so what
# separates them is the order of floating-point sums (Inductor fuses and reorders reductions)
# and, under autocast, where intermediates are rounded (Inductor keeps fused intermediates in
# fp32; eager rounds each op's output). Bounds relative to each tensor's scale:
# - fp32: 2^-12 (4096 ulps). The test suite holds tiny models to 2^-16; sum-order errors grow
#   with the reduction length (about sqrt(K)) and the depth, and an H200 run of GPT-2 (d 256)
#   measured 3.5e-7 on logits and 6.9e-7 on gradients; 2^-12 leaves room for K = 16384 and tens
#   of layers.
# - bf16: 2^-5, 8 units of bf16 rounding (2^-8): plain torch.compile against eager spread by
#   8.2e-3 on that H200 run, pqt against the reference by 7.6e-3.
# - fp16: 2^-8, 8 units of fp16 rounding (2^-11).
# A wrong sample moves outputs by the noise itself: the report measures it (the reference
# against the clean model) and calls the check inconclusive where it is under MARGIN x the bound.
BOUNDS: dict[torch.dtype, float] = {torch.float32: 2.0**-12, torch.bfloat16: 2.0**-5, torch.float16: 2.0**-8}
#: the noise's effect on the outputs must exceed the bound by this factor for a verdict
MARGIN = 2.0
#: NOTE [gradient floor]: a gradient is judged relative to max(its own scale, GRAD_FLOOR x the
#: largest gradient of the model): a gradient that is zero in exact arithmetic (the key bias of
#: attention: softmax ignores a constant added to every score) is rounding noise in both runs,
#: and its own scale would turn that noise into an error of order 1.
GRAD_FLOOR = 2.0**-4


class CheckError(ValueError):
    """A model or input that cannot be checked: one line naming the problem and the fix."""


@dataclass(frozen=True)
class Comparison:
    """One tensor of the compiled step against the reference's: max relative error and bound."""

    name: str
    error: float
    bound: float
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.error <= self.bound


@dataclass
class CheckReport:
    """What `check` measured (see the module docstring)."""

    model: str
    device: str
    dtype: str
    seed: int
    config: PQTConfig
    bound: float
    outputs: list[Comparison] = field(default_factory=list)
    gradients: list[Comparison] = field(default_factory=list)
    sampled: list[str] = field(default_factory=list)
    unsampled: list[tuple[str, str]] = field(default_factory=list)
    misnamed: list[tuple[str, str]] = field(default_factory=list)  # (reference name, what keyed it compiled)
    noise_effect: float = 0.0  # max relative change of the outputs by the noise (reference vs clean)

    @property
    def verdict(self) -> str:
        if self.misnamed or not all(c.ok for c in (*self.outputs, *self.gradients)):
            return "fail"
        if self.noise_effect < MARGIN * self.bound:
            return "inconclusive"
        return "pass"

    @property
    def passed(self) -> bool:
        return self.verdict == "pass"

    def reason(self) -> str:
        """The verdict in one sentence."""
        worst = max((*self.outputs, *self.gradients), key=lambda c: c.error / c.bound, default=None)
        at = f"worst {worst.name}: {worst.error:.2e} (bound {worst.bound:.1e})" if worst else "nothing compared"
        if self.misnamed:
            ref, got = self.misnamed[0]
            return (f"{len(self.misnamed)} sampled weight(s) keyed by other names than the reference's "
                    f"(first: {ref} keyed as {got}), so they draw other noise; {at}")
        if self.verdict == "fail":
            return f"the compiled step differs from the reference beyond the {self.dtype} bound: {at}"
        if self.verdict == "inconclusive":
            return (f"within the bounds ({at}), but the noise moves the outputs by only {self.noise_effect:.2e}, "
                    f"under {MARGIN:g} x the {self.dtype} bound: a wrong sample could not be told from rounding here. "
                    "Check in fp32, or with a coarser format")
        return f"the compiled step matches the reference ({at}; the noise moves the outputs by {self.noise_effect:.2e})"

    def __str__(self) -> str:
        c = self.config
        head = (f"pqt check: {self.model} on {self.device}, {self.dtype}, seed {self.seed}, format {c.format}, "
                f"block {c.block_size}, mode {c.mode}\n"
                f"sampled weights: {len(self.sampled)}, not sampled: {len(self.unsampled)}; "
                f"the noise moves the outputs by {self.noise_effect:.2e} (max relative)")
        rows = [[o.name, f"{o.error:.2e}", f"{o.bound:.1e}", "ok" if o.ok else "OVER", o.note]
                for o in (*self.outputs, *self.gradients)]
        parts = [head, "", tabulate(rows, headers=["output / gradient of", "max rel error", "bound", "", "note"])]
        if self.unsampled:
            parts += ["", "Not sampled", tabulate(self.unsampled, headers=["parameter", "why"])]
        if self.misnamed:
            parts += ["", "Keyed by another name than the reference's",
                      tabulate(self.misnamed, headers=["reference name", "compiled key"])]
        parts += ["", f"verdict: {self.verdict.upper()}: {self.reason()}"]
        return "\n".join(parts)


def _rel(a: torch.Tensor, b: torch.Tensor, scale: Optional[float] = None) -> float:
    a, b = a.detach().double(), b.detach().double()
    ref = float(b.abs().max()) if b.numel() else 0.0
    denom = max(ref, scale or 0.0, 1e-30)
    return float((a - b).abs().max()) / denom if a.numel() else 0.0


def _leaves(out: Any) -> list[tuple[str, Any]]:
    """[(path, leaf)] of a model output (an HF ModelOutput: logits, hidden states ...)."""
    tree = pytree()
    flatten = getattr(tree, "tree_flatten_with_path", None)
    if flatten is None:
        return [(f"output[{i}]", x) for i, x in enumerate(tree.tree_leaves(out))]
    pairs, _ = flatten(out)
    return [(tree.keystr(path) or "output", x) for path, x in pairs]


def _floating(x: Any) -> bool:
    return isinstance(x, torch.Tensor) and x.is_floating_point()


def check(model: torch.nn.Module, *args: Any, config: Optional[PQTConfig] = None, seed: int = 0,
          autocast: Optional[torch.dtype] = None, **kwargs: Any) -> CheckReport:
    """Compile `model` with PQT, run one forward and backward compiled and by the reference at
    `seed` (under autocast to `autocast` if given) and compare them (module docstring).

    Preconditions: `args` / `kwargs` are the model's inputs, on the model's device; an HF model
    that returns a KV cache should get use_cache=False (only tensor outputs are compared).
    Raises CheckError (one line) for a model that samples nothing or that the reference cannot
    trace.
    """
    from .. import guards, reference, seeds
    from ..compiler.backend import pqt_backend
    from ..naming import named_parameters, unwrap

    if not isinstance(model, torch.nn.Module):
        raise CheckError(f"pqt check: expected an nn.Module, got {type(model).__name__}")
    try:
        seeds.check_seed(seed)
    except ValueError as e:
        raise CheckError(f"pqt check: {e}") from None
    model = unwrap(model)  # a torch.compile / DDP wrapper: check the model inside
    config = config_or_default(config, "pqt_compile.check").replace(sample_in_eval=True)
    params = named_parameters(model)
    device = next(iter(params.values())).device if params else torch.device("cpu")
    dtype = autocast or next((p.dtype for p in params.values() if p.is_floating_point()), torch.float32)
    if dtype not in BOUNDS:
        raise CheckError(f"pqt check: no bound for {dtype}; use fp32, bf16 or fp16 (autocast=torch.bfloat16)")
    bound = BOUNDS[dtype]
    amp = (lambda: torch.autocast(device.type, dtype=autocast)) if autocast is not None else nullcontext

    try:  # first, before anything is compiled (cli.eager_outputs says why)
        clean = _leaves(eager_outputs(model, args, kwargs, amp))
    except UsageError as e:
        raise CheckError(f"pqt check: {e}") from None
    if not any(_floating(x) for _, x in clean):
        raise CheckError(f"pqt check: {type(model).__name__} returns no floating-point output (only "
                         f"{', '.join(sorted({type(x).__name__ if not isinstance(x, torch.Tensor) else str(x.dtype) for _, x in clean}))}), "
                         "so nothing can be compared; check a model that returns its logits or activations")
    with model_state_restored(model):
        model.eval()
        with torch.enable_grad():
            try:
                with amp():
                    edges, skipped = reference.trace_weight_edges(model, *args, config=config, **kwargs)
            except reference.ReferenceTraceError as e:
                raise CheckError(str(e)) from None
            if not edges:
                why = "; ".join(f"{s.name}: {s.reason}" for s in skipped[:3]) or "it has no parameters"
                raise CheckError(f"pqt check: no weight of {type(model).__name__} would be sampled ({why}); pqt samples "
                                 "Parameters read by a matmul (nn.Linear, x @ W, ...): check include/exclude, or give a "
                                 "model that has such weights")
            report = CheckReport(model=type(model).__name__, device=str(device), dtype=str(dtype).replace("torch.", ""),
                                 seed=seed, config=config, bound=bound, sampled=[e.name for e in edges],
                                 unsampled=[(s.name, s.reason) for s in skipped])

            def backend(gm: torch.fx.GraphModule, example_inputs: list) -> Any:
                return pqt_backend(gm, example_inputs, options={"config": config})

            compiled = torch.compile(model, backend=backend)
            got, got_grads = _step(lambda: compiled(*args, **kwargs), params, seed, amp)
            want, want_grads = _step(lambda: reference.run(model, *args, seed=seed, config=config, **kwargs),
                                     params, seed, amp)
            detached = [n for (n, a), (_, b) in zip(got, want) if _floating(a) and _floating(b)
                        and not a.requires_grad and b.requires_grad]
            if detached:  # reference.py NOTE [grad mode inside forward]
                raise CheckError(f"pqt check: output {detached[0]!r} of {type(model).__name__} does not require grad, but "
                                 "the eager reference's does: the forward turns grad off inside (torch.no_grad), which "
                                 "the reference's trace does not replay; check the module that trains")

    for (name, a), (_, b), (_, c) in zip(got, want, clean):
        if _floating(a) and _floating(b):
            report.outputs.append(Comparison(name, _rel(a, b), bound))
            if _floating(c):
                report.noise_effect = max(report.noise_effect, _rel(c, b))
    largest = max((float(g.abs().max()) for g in want_grads.values() if g.numel()), default=0.0)
    for name in want_grads:
        a, b = got_grads.get(name), want_grads[name]
        if a is None:
            report.gradients.append(Comparison(name, float("inf"), bound, "no gradient in the compiled step"))
            continue
        small = float(b.abs().max()) < GRAD_FLOOR * largest
        report.gradients.append(Comparison(name, _rel(a, b, GRAD_FLOOR * largest), bound,
                                           "judged at the floor (NOTE [gradient floor])" if small else ""))
    for name in report.sampled:
        keyed = guards.keyed_name(params[name])
        if keyed != name:
            report.misnamed.append((name, keyed or "(no compiled graph received it: it ran eagerly)"))
    return report


def _step(call, params: dict[str, torch.nn.Parameter], seed: int, amp) -> tuple[list[tuple[str, Any]], dict[str, torch.Tensor]]:
    """One forward (at `seed`) and a backward against seeded random cotangents: (output leaves, grads)."""
    from .. import seeds

    for p in params.values():
        p.grad = None
    with seeds.fixed_seed(seed), amp():
        leaves = _leaves(call())
    outs = [x for _, x in leaves if _floating(x) and x.requires_grad]
    gen = torch.Generator().manual_seed(seed + 1)
    cots = [torch.randn(x.shape, generator=gen).to(device=x.device, dtype=x.dtype) for x in outs]
    if outs:
        torch.autograd.backward(outs, cots)
    grads = {name: p.grad.detach().clone() for name, p in params.items() if p.grad is not None}
    # Detached (no graph kept), with the flag kept for the grad-mode comparison (check's caller).
    return [(n, x.detach().requires_grad_(x.requires_grad) if isinstance(x, torch.Tensor) and x.is_floating_point() else x)
            for n, x in leaves], grads


# ---- pqt-check: the command line ---------------------------------------------------------------

_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

_USAGE = """pqt-check: compile your model with PQT, run one forward and backward compiled and by the
eager reference at a fixed seed, and compare them (pqt_compile.check).

    pqt-check --preset gpt2-tiny
    pqt-check --model mypkg.models:make_model --format fp4_e2m1 --dtype bf16 --device cuda
    pqt-check --checkpoint path/to/hf_model --batch 2 --seq 64

The model comes from a preset, a factory (`module:function`, called with no arguments,
returning a model, whose input is a batch of token ids, or (model, example_args)), or a local
Hugging Face model directory. Prints the max relative error of every output and parameter
gradient against the bound for the dtype, the weights sampled and not, and a verdict.
Exit status: 0 pass; 1 fail or inconclusive; 2 a bad input (one line naming the problem and
the fix), with nothing written.
"""


def _parser():
    import argparse

    from .cli import add_config_arguments, add_model_arguments

    p = argparse.ArgumentParser(prog="pqt-check", description=_USAGE, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(p)
    p.add_argument("--checkpoint", metavar="DIR", help="a local Hugging Face model directory (instead of --preset / --model)")
    add_config_arguments(p)
    run = p.add_argument_group("run")
    run.add_argument("--device", default="cpu", help="where to run: cpu, cuda, cuda:1 ... (default cpu)")
    run.add_argument("--dtype", choices=sorted(_DTYPES), default="fp32",
                     help="fp32, or autocast to bf16 / fp16 (the weights stay as they are; default fp32)")
    run.add_argument("--seed", type=int, default=0, help="the PQT seed of the step (default 0)")
    return p


def _model_and_inputs(a) -> tuple[torch.nn.Module, tuple, dict]:
    import inspect

    from .cli import UsageError, build, load_hf_directory

    if a.checkpoint:
        if a.preset or a.factory:
            raise UsageError(f"--checkpoint {a.checkpoint}: give it without --preset / --model")
        model = load_hf_directory(a.checkpoint)
        vocab = a.vocab or getattr(getattr(model, "config", None), "vocab_size", None)
        if not vocab:
            raise UsageError(f"--checkpoint {a.checkpoint}: its config has no vocab_size; give --vocab")
        args: tuple = (torch.randint(0, vocab, (a.batch, a.seq)),)
    else:
        model, args = build(a.preset, a.factory, a.batch, a.seq, a.vocab)
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        params = {}
    kwargs = {"use_cache": False} if "use_cache" in params else {}  # HF: compare tensors, not a KV cache
    return model, args, kwargs


def _device(name: str) -> torch.device:
    from .cli import UsageError, first_line

    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name!r}: not a device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available here; use --device cpu")
    if device.type == "meta":
        raise UsageError(f"--device {name}: meta tensors hold no values to compare; use cpu, cuda or cuda:N")
    try:
        torch.zeros(1, device=device)
    except (RuntimeError, AssertionError) as e:  # a device torch knows but this build or machine cannot use (mps)
        raise UsageError(f"--device {name}: not usable here ({first_line(e)}); use --device cpu") from None
    return device


def main(argv: Optional[list[str]] = None) -> int:
    """Run pqt-check on `argv` (sys.argv[1:] if None): 0 pass, 1 fail or inconclusive, 2 bad input."""
    import sys

    from .cli import UsageError, config_from_arguments, pqt_refusal

    a = _parser().parse_args(argv)
    try:
        config = config_from_arguments(a)
        device = _device(a.device)
        model, args, kwargs = _model_and_inputs(a)
        model = model.to(device)
        args = tuple(x.to(device) if isinstance(x, torch.Tensor) else x for x in args)
        report = check(model, *args, config=config, seed=a.seed, autocast=_DTYPES[a.dtype], **kwargs)
    except (UsageError, CheckError) as e:
        print(f"pqt-check: error: {str(e).removeprefix('pqt check: ')}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - pqt's refusals (a weight the format cannot block) as one line
        if (refusal := pqt_refusal(e)) is None:
            raise
        print(f"pqt-check: error: {refusal}", file=sys.stderr)
        return 2
    print(report)
    return 0 if report.passed else 1


if __name__ == "__main__":
    import sys

    sys.exit(main())
