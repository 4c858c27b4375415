"""pqt_compile: pseudo-quantization training with Gaussian weight sampling, as a torch.compile backend.

    model = torch.compile(model, backend="pqt")   # every matmul weight sampled at each step

Importing this package registers the `pqt::sample` op and nothing else; the compiler parts
load on first use.
"""

from . import op as _op  # registers torch.ops.pqt.sample
from . import reference
from .config import PQTConfig
from .formats import FormatSpec, parse_format
from .op import sample
from .quantize import PackedTensor, pack, quantize, unpack
from .seeds import fixed_seed, key_for_name, manual_seed, seed_state, set_seed_state

__version__ = "0.1.0"

__all__ = [
    "PQTConfig",
    "FormatSpec",
    "parse_format",
    "sample",
    "quantize",
    "pack",
    "unpack",
    "PackedTensor",
    "key_for_name",
    "manual_seed",
    "fixed_seed",
    "seed_state",
    "set_seed_state",
    "reference",
]
