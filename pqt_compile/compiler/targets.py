"""Which code Inductor generates for a device: the one place that decides the backend-specific paths.

- the lowering's NOTE [ragged split] workaround: C++ code only (`cpp_backend`); Triton code
  (a GPU, or CPU with cpu_backend="triton" in the tests' interpreter route) keeps the plain
  block index `x // B`;
- the generator's word type: uint32 in Triton code (`triton_codegen`), int32 bit patterns in
  vectorised C++ code (`cpp_vectorised`, lowering/inductor_ops.py NOTE [int32 words]), int64
  elsewhere (formula.py NOTE [word types]);
- the GEMM-template prologue: the sample written in the layout the template reads and listed
  as a prologue candidate, only where Inductor may pick a Triton GEMM template (`gemm_templates`).
  Elsewhere (the default mode, cuBLAS or a C++ GEMM) nothing about the graph changes.

Each function reads Inductor's config when it is called. The backend patches that config for
one compile only (compiler/backend.py), and the pass and the lowering run inside that compile,
so they see the patched values (mode="max-autotune", options={...}).
"""

from __future__ import annotations

import torch

__all__ = ["cpp_backend", "cpp_vectorised", "triton_codegen", "gemm_templates"]


def _config():
    import torch._inductor.config as inductor_config  # not on bare `import pqt_compile`

    return inductor_config


def cpp_backend(device: torch.device) -> bool:
    """Whether Inductor generates C++ for tensors on `device` (CPU with cpu_backend "cpp", the default)."""
    return device.type == "cpu" and _config().cpu_backend == "cpp"


def triton_codegen(device: torch.device) -> bool:
    """Whether Inductor generates Triton for tensors on `device`: a GPU with the default
    cuda_backend, or CPU with cpu_backend="triton" (what the tests' interpreter route uses)."""
    c = _config()
    if device.type == "cpu":
        return c.cpu_backend == "triton"
    return device.type in ("cuda", "xpu") and getattr(c, f"{device.type}_backend", "triton") == "triton"


def cpp_vectorised(device: torch.device) -> bool:
    """Whether Inductor's C++ code for `device` is vectorised: the C++ backend, a vector ISA on
    this machine, and vectorisation not switched off (cpp.simdlen = 1)."""
    from ..compat import cpu_vector_isa

    return cpp_backend(device) and _config().cpp.simdlen != 1 and cpu_vector_isa()
def gemm_templates(device: torch.device) -> bool:
    """Whether Inductor may compile a matmul on `device` to a Triton GEMM template, whose
    prologue can compute the sample: Triton code, max-autotune for GEMMs, and TRITON among the
    GEMM backends (torch 2.13, torch._inductor.utils.use_triton_template; the device-size test
    there, a GPU with >= 68 SMs, is left to Inductor)."""
    c = _config()
    backends = [b.strip().upper() for b in str(c.max_autotune_gemm_backends).split(",")]
    return triton_codegen(device) and bool(c.max_autotune or c.max_autotune_gemm) and "TRITON" in backends
