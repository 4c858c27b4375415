"""Run a GGUF file in llama.cpp itself (through llama-cpp-python), to check an export with the
engine that will serve it; and imitate llama.cpp's CPU arithmetic in PyTorch, to tell its
rounding apart from a wrong export.

llama-cpp-python is optional (`pip install llama-cpp-python`, the `engines` extra; it compiles
llama.cpp). The settings used keep llama.cpp close to PyTorch's fp32: an F32 KV cache (the
default F16 cache would round K and V) and all logits kept. What remains is llama.cpp's own
arithmetic, which `llamacpp_cpu_numerics` imitates:

1. A matmul whose weight is MXFP4 / Q4_0 / Q5_0 / Q8_0 / NVFP4 first quantizes its activations to Q8_0
   (ggml-cpu's vec_dot_type for those types): per 32 elements along K, d = amax / 127 stored
   in fp16, q = round-half-even(x * 127 / amax) (the x86 SIMD path), and the product uses q * d.
   This moves logits by about 1e-2 against PyTorch's fp32 forward (docs/results.md).
2. GPT-2's tanh GELU is a table lookup by the fp16 value of x (GGML_GELU_FP16):
   fp16(gelu(fp16(x))) for -10 < x < 10, 0 below, x above.
"""

from __future__ import annotations

import contextlib
import importlib.util
from typing import Any, Iterator, Optional, Sequence

import torch
import torch.nn.functional as F

from ..config import PQTConfig
from ..naming import named_parameters
from ..reference import sampled_axes

__all__ = ["llamacpp_available", "llamacpp_logits", "llamacpp_loss", "llamacpp_cpu_numerics", "q8_0_activations"]


def llamacpp_available() -> bool:
    """Whether llama-cpp-python is installed."""
    return importlib.util.find_spec("llama_cpp") is not None


def _open(path: str, n_ctx: int, n_threads: Optional[int]) -> Any:
    try:
        from llama_cpp import GGML_TYPE_F32, Llama
    except ImportError:
        raise RuntimeError("llama-cpp-python is not installed: pip install llama-cpp-python "
                           "(or pip install -e '.[engines]'; it compiles llama.cpp, a few minutes)") from None
    kwargs: dict[str, Any] = {"n_threads": n_threads} if n_threads else {}
    return Llama(model_path=path, n_ctx=n_ctx, n_batch=n_ctx, logits_all=True, verbose=False,
                 type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32, **kwargs)


def llamacpp_logits(path: str, sequences: Sequence[Sequence[int]], *, n_threads: Optional[int] = None) -> list[torch.Tensor]:
    """llama.cpp's logits (float32 [len, vocab]) for each token sequence, each evaluated from an
    empty context. A sequence must not be longer than the model's context length."""
    seqs = [[int(t) for t in s] for s in sequences]
    if not seqs or not all(seqs):
        raise ValueError("llamacpp_logits: give at least one non-empty token sequence")
    llm = _open(path, max(len(s) for s in seqs), n_threads)
    try:
        out = []
        for s in seqs:
            llm.reset()
            llm.eval(s)
            out.append(torch.tensor(llm.scores[: len(s)], dtype=torch.float32))
        return out
    finally:
        llm.close()


def llamacpp_loss(path: str, inputs: torch.Tensor, targets: torch.Tensor, *, n_threads: Optional[int] = None) -> float:
    """Mean cross-entropy of llama.cpp's next-token logits for `inputs` [B, T] against `targets`
    [B, T] (each row evaluated on its own): what a PyTorch evaluation loop computes."""
    if inputs.shape != targets.shape or inputs.dim() != 2:
        raise ValueError(f"llamacpp_loss: inputs and targets must both be [batch, seq], got {tuple(inputs.shape)} "
                         f"and {tuple(targets.shape)}")
    logits = torch.stack(llamacpp_logits(path, inputs.tolist(), n_threads=n_threads))
    return float(F.cross_entropy(logits.flatten(0, 1), targets.flatten().cpu()))


def q8_0_activations(x: torch.Tensor) -> torch.Tensor:
    """`x` with its last dim (a multiple of 32) rounded as llama.cpp's Q8_0 activations (point 1)."""
    blocks = x.float().reshape(*x.shape[:-1], x.shape[-1] // 32, 32)
    amax = blocks.abs().amax(-1, keepdim=True)
    inv = torch.where(amax > 0, 127.0 / amax, torch.zeros_like(amax))
    d = (amax / 127.0).half().float()
    return (torch.round(blocks * inv) * d).reshape(x.shape).to(x.dtype)


def _gelu_fp16_table(x: torch.Tensor) -> torch.Tensor:
    y = F.gelu(x.half().float(), approximate="tanh").half().float()
    return torch.where(x <= -10, torch.zeros_like(x), torch.where(x >= 10, x, y)).to(x.dtype)


@contextlib.contextmanager
def llamacpp_cpu_numerics(model: torch.nn.Module, config: PQTConfig,
                          example_args: Optional[tuple] = None) -> Iterator[torch.nn.Module]:
    """Within the block, `model` (quantized, as exported by write_gguf with `config`) computes as
    llama.cpp's CPU backend does: Q8_0 activations into every module whose weight the GGUF file
    holds quantized (an embedding lookup stays exact), and GPT-2's fp16-table GELU."""
    params = named_parameters(model)
    quantized = {id(params[name]) for name in sampled_axes(model, config, example_args)}
    if config.spec.two_level:  # NVFP4: write_gguf stores a sampled token embedding (a tied head) dense
        emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        quantized.discard(id(getattr(emb, "weight", None)))
    handles = []
    for module in model.modules():
        if id(getattr(module, "weight", None)) in quantized and not isinstance(module, torch.nn.Embedding):
            handles.append(module.register_forward_pre_hook(lambda m, args: (q8_0_activations(args[0]), *args[1:])))
        if type(module).__name__ == "NewGELUActivation":  # transformers' gelu_new, what GPT-2 uses
            handles.append(module.register_forward_hook(lambda m, args, out: _gelu_fp16_table(args[0])))
    try:
        yield model
    finally:
        for h in handles:
            h.remove()
