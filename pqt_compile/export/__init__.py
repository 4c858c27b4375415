"""Deployment: the round-to-nearest model and the files that hold it.

- `quantize_model`, `save`, `load` (packed.py): pqt_compile's own packed file, restored bit
  for bit by `load`.
- `write_gguf` (gguf.py): a GGUF file for llama.cpp and Ollama (HF GPT-2 and Llama).

Every writer stores the values `quantize_model` gives (the codes and block exponents of
`pqt_compile.quantize.pack`, regrouped by codes.py; MXFP4 through the one packer in mx.py),
for the weights the compiler samples (`pqt_compile.reference.sampled_axes`), in a type of
the target that holds them exactly, and refuses (ExportError) what it cannot hold exactly.
The engine packages (gguf) are imported only when a writer runs.
"""

from __future__ import annotations

from .common import ExportError
from .gguf import GGUFSummary, read_gguf, write_gguf
from .packed import FILE_VERSION, load, quantize_model, save

__all__ = ["quantize_model", "save", "load", "FILE_VERSION", "ExportError", "write_gguf", "read_gguf", "GGUFSummary"]
