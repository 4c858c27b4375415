"""Deployment: the round-to-nearest model and the files that hold it.

- `quantize_model`, `save`, `load` (packed.py): pqt_compile's own packed file, restored bit
  for bit by `load`.
- mx.py: the MXFP4 packer the inference-engine writers share; codes.py: pack's codes grouped
  as engines store them; common.py: ExportError and writing without partial outputs.

Every writer stores the values `quantize_model` gives (the codes and block exponents of
`pqt_compile.quantize.pack`), for the weights the compiler samples
(`pqt_compile.reference.sampled_axes`), and refuses (ExportError) what it cannot hold exactly.
"""

from __future__ import annotations

from .common import ExportError
from .packed import FILE_VERSION, load, quantize_model, save

__all__ = ["quantize_model", "save", "load", "FILE_VERSION", "ExportError"]
