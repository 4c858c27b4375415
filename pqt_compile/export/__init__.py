"""Deployment: the round-to-nearest model and the files that hold it.

- `quantize_model`, `save`, `load` (packed.py): pqt_compile's own packed file, restored bit
  for bit by `load`.
- `write_gguf` (gguf.py): a GGUF file for llama.cpp and Ollama (HF GPT-2 and Llama).
- `write_compressed_tensors` (compressed_tensors.py): an HF checkpoint directory in the
  compressed-tensors format, for transformers and vLLM.
- `write_gpt_oss_mxfp4` (gpt_oss.py): a gpt-oss checkpoint directory with its experts in
  gpt-oss's own MXFP4 layout (blocks + scales), for transformers.
- `write(model, path, config, to=...)`: any of these, as `pqt-export` calls them.

A model loaded from a packed file (`load`) holds deployed values; pass `packed=read_packed(path)`
to a writer so that it writes their stored codes (quantize.py NOTE [re-quantizing NVFP4]: NVFP4
cannot always quantize its own deployed values back to them).

Every writer stores the values `quantize_model` gives (the codes and block exponents of
`pqt_compile.quantize.pack`, regrouped by codes.py; MXFP4 through the one packer in mx.py),
for the weights the compiler samples (`pqt_compile.reference.sampled_axes`), in a type of
the target that holds them exactly, and refuses (ExportError) what it cannot hold exactly.
The engine packages (gguf, safetensors) are imported only when a writer runs.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Union

import torch

from ..config import PQTConfig
from ..quantize import PackedTensor
from .common import ExportError
from .compressed_tensors import CTSummary, write_compressed_tensors
from .gguf import GGUFSummary, read_gguf, write_gguf
from .gpt_oss import GptOssSummary, write_gpt_oss_mxfp4
from .packed import FILE_VERSION, load, quantize_model, read_packed, save, saved_config

__all__ = ["quantize_model", "save", "load", "read_packed", "saved_config", "FILE_VERSION", "ExportError", "TARGETS", "write", "write_gguf",
           "read_gguf", "GGUFSummary", "write_compressed_tensors", "CTSummary", "write_gpt_oss_mxfp4", "GptOssSummary"]

#: The targets of `write` (and `pqt-export --to`).
TARGETS = ("gguf", "compressed-tensors", "gpt-oss-mxfp4")


def write(model: torch.nn.Module, path: str, config: Optional[PQTConfig] = None, *, to: str, tokenizer: Any = None,
          example_args: Optional[tuple] = None, force: bool = False,
          gguf_type: Optional[str] = None,
          packed: Optional[Mapping[str, PackedTensor]] = None,
          per_weight_global_scales: bool = False) -> Union[GGUFSummary, CTSummary, GptOssSummary]:
    """Write `model` for an inference engine: `to="gguf"` (a file, `write_gguf`) or
    `to="compressed-tensors"` (a directory, `write_compressed_tensors`) or `to="gpt-oss-mxfp4"` (a
    directory, `write_gpt_oss_mxfp4`; tokenizer and example_args do not apply). `gguf_type`
    applies to GGUF only, `per_weight_global_scales` to compressed-tensors only; the other arguments mean the same for every target (`packed`: the sampled
    weights' packings as read back with the model, `read_packed`; `write_gguf` says how)."""
    if to not in TARGETS:
        raise ExportError(f"unknown export target {to!r}; choose one of {', '.join(TARGETS)}")
    if to != "gguf" and gguf_type is not None:
        raise ExportError("gguf_type applies to GGUF files only")
    if to != "compressed-tensors" and per_weight_global_scales:
        raise ExportError("per_weight_global_scales applies to compressed-tensors NVFP4 checkpoints only")
    if to == "gguf":
        return write_gguf(model, path, config, tokenizer=tokenizer, gguf_type=gguf_type, example_args=example_args,
                          force=force, packed=packed)
    if to == "compressed-tensors":
        return write_compressed_tensors(model, path, config, tokenizer=tokenizer, example_args=example_args, force=force,
                                        packed=packed, per_weight_global_scales=per_weight_global_scales)
    return write_gpt_oss_mxfp4(model, path, config, force=force, packed=packed)  # "gpt-oss-mxfp4"
