"""pqt_compile: pseudo-quantization training with Gaussian weight sampling, as a torch.compile backend.

    model = torch.compile(model, backend="pqt")   # every matmul weight sampled at each step

Importing this package registers the `pqt::sample` op and nothing else; the compiler parts
load on first use.
"""

from . import op as _op  # registers torch.ops.pqt.sample
from . import export, reference
from .config import PQTConfig
from .formats import FormatSpec, parse_format
from .op import sample
from .export import quantize_model
from .quantize import PackedTensor, pack, quantize, unpack
from .seeds import PQTState, fixed_seed, key_for_name, manual_seed, rank_seed, seed_state, set_seed_state

__version__ = "0.1.0"


def compile(model, config=None, **kwargs):  # noqa: A001 - mirrors torch.compile
    """`torch.compile(model, backend="pqt")` with a PQTConfig; see `pqt_compile.backend.compile`."""
    from .backend import compile as _compile

    return _compile(model, config, **kwargs)


def explain(model, *example_args, config=None, **example_kwargs):
    """Compile, run one training step, and report what PQT did (see `pqt_compile.explainer`)."""
    from .explainer import explain as _explain

    return _explain(model, *example_args, config=config, **example_kwargs)


def linear(x, weight, bias=None, *, seed, key=0, config=None):
    """F.linear with the weight sampled inside a Triton GEMM (see `pqt_compile.kernels.linear`)."""
    from .kernels.linear import linear as _linear

    return _linear(x, weight, bias, seed=seed, key=key, config=config)


def register(model, prefix: str = "") -> None:
    """Record `model`'s parameter names for keys (see `pqt_compile.runtime.register`)."""
    from .runtime import register as _register

    _register(model, prefix)


__all__ = [
    "compile",
    "register",
    "explain",
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
    "fixed_seed",
    "rank_seed",
    "seed_state",
    "set_seed_state",
    "PQTState",
    "reference",
]
