"""pqt_compile: pseudo-quantization training with Gaussian weight sampling, as a torch.compile backend.

    model = torch.compile(model, backend="pqt")   # every matmul weight sampled at each step

Importing this package registers the `pqt::sample` op (and its split, sample_parts.py) and
nothing else; the compiler parts (pqt_compile.compiler) load on first use.

The package follows the data path of a training step:
config, formats, blocks, formula -> op, sample_parts (the sample) -> naming, selection (which weights, keyed
how) -> compiler/ (backend, graph_abi, passes, lowering, wrapper) -> seeds, steps (the seed of
each step and micro-batch) -> guards (what must not pass silently); beside it reference (the
eager twin), quantize and export (deployment), kernels (Triton), tools (explain, pqt-dump, check),
compat (every private torch API).
"""

from . import op as _op  # registers torch.ops.pqt.sample
from . import sample_parts as _sample_parts  # registers its split (pqt.block_values, ...)
from . import export, reference
from .config import PQTConfig
from .export import quantize_model
from .formats import FormatSpec, parse_format
from .naming import register
from .op import sample
from .quantize import PackedTensor, pack, quantize, unpack
from .seeds import (PQTState, current_seed, fixed_seed, key_for_name, manual_seed, rank_seed, seed_state,
                    set_seed_state, step_seed)

__version__ = "0.2.0"


def compile(model, config=None, **kwargs):  # noqa: A001 - mirrors torch.compile
    """`torch.compile(model, backend="pqt")` with a PQTConfig; see `pqt_compile.compiler.backend.compile`."""
    from .compiler.backend import compile as _compile

    return _compile(model, config, **kwargs)


def explain(model, *example_args, config=None, **example_kwargs):
    """Compile, run one training step, and report what PQT did (see `pqt_compile.tools.explain`)."""
    from .tools.explain import explain as _explain

    return _explain(model, *example_args, config=config, **example_kwargs)


def check(model, *args, config=None, seed=0, autocast=None, **kwargs):
    """Compile, run one forward and backward compiled and by the reference at a fixed seed, and
    compare them per output and gradient (see `pqt_compile.tools.check`). Returns a CheckReport."""
    from .tools.check import check as _check

    return _check(model, *args, config=config, seed=seed, autocast=autocast, **kwargs)


def linear(x, weight, bias=None, *, seed, key=0, config=None):
    """F.linear with the weight sampled inside a Triton GEMM (see `pqt_compile.kernels.linear`)."""
    from .kernels.linear import linear as _linear

    return _linear(x, weight, bias, seed=seed, key=key, config=config)


__all__ = [
    "compile",
    "register",
    "explain",
    "check",
    "linear",
    "PQTConfig",
    "FormatSpec",
    "parse_format",
    "sample",
    "quantize",
    "quantize_model",
    "export",
    "pack",
    "unpack",
    "PackedTensor",
    "key_for_name",
    "manual_seed",
    "step_seed",
    "current_seed",
    "fixed_seed",
    "rank_seed",
    "seed_state",
    "set_seed_state",
    "PQTState",
    "reference",
]
