"""Which code Inductor generates for a device: the one place that decides the backend-specific paths.

- the lowering's NOTE [ragged split] workaround: C++ code only (`cpp_backend`); Triton code
  (a GPU, or CPU with cpu_backend="triton" in the tests' interpreter route) keeps the plain
  block index `x // B`;
- the generator's word type: uint32 in Triton code (`triton_codegen`), int32 bit patterns in
  vectorised C++ code (`cpp_vectorised`, lowering/inductor_ops.py NOTE [int32 words]), int64
  elsewhere (formula.py NOTE [word types]);
- the GEMM-template prologue: the sample written in the layout the template reads and listed
  as a prologue candidate, only where Inductor may pick a Triton GEMM template (`gemm_templates`).
  Elsewhere (the default mode, cuBLAS or a C++ GEMM) nothing about the graph changes;
- the shape of the lowering (`sample_plan`): which levers pay on which target. A GPU pays per
  kernel launch (gpu-first-run.md: 6 extra launches per weight per step cost 30% of a GPT-2
  step), the vectorised C++ loop per instruction; the levers of one are not carried into the other.

Each function reads Inductor's config when it is called. The backend patches that config for
one compile only (compiler/backend.py), and the pass and the lowering run inside that compile,
so they see the patched values (mode="max-autotune", options={...}).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from ..blocks import has_partial_block
from ..compat import inductor_config

__all__ = ["cpp_backend", "cpp_vectorised", "triton_codegen", "gemm_templates", "SamplePlan", "sample_plan",
           "saves_block_values", "CPP_ONE_KERNEL_MAX_NUMEL"]


def cpp_backend(device: torch.device) -> bool:
    """Whether Inductor generates C++ for tensors on `device` (CPU with cpu_backend "cpp", the default)."""
    return device.type == "cpu" and inductor_config().cpu_backend == "cpp"


def triton_codegen(device: torch.device) -> bool:
    """Whether Inductor generates Triton for tensors on `device`: a GPU with the default
    cuda_backend, or CPU with cpu_backend="triton" (what the tests' interpreter route uses)."""
    c = inductor_config()
    if device.type == "cpu":
        return c.cpu_backend == "triton"
    return device.type in ("cuda", "xpu") and getattr(c, f"{device.type}_backend", "triton") == "triton"


def cpp_vectorised(device: torch.device) -> bool:
    """Whether Inductor's C++ code for `device` is vectorised: the C++ backend, a vector ISA on
    this machine, and vectorisation not switched off (cpp.simdlen = 1)."""
    from ..compat import cpu_vector_isa

    return cpp_backend(device) and inductor_config().cpp.simdlen != 1 and cpu_vector_isa()


def gemm_templates(device: torch.device) -> bool:
    """Whether Inductor may compile a matmul on `device` to a Triton GEMM template, whose
    prologue can compute the sample: Triton code, max-autotune for GEMMs, and TRITON among the
    GEMM backends (torch 2.13, torch._inductor.utils.use_triton_template; the device-size test
    there, a GPU with >= 68 SMs, is left to Inductor)."""
    c = inductor_config()
    backends = [b.strip().upper() for b in str(c.max_autotune_gemm_backends).split(",")]
    return triton_codegen(device) and bool(c.max_autotune or c.max_autotune_gemm) and "TRITON" in backends


#: A weight of at most this many elements is sampled by the one-kernel form in C++ too: there the
#: per-call buffers of the levers (block values, stream words, iota) cost more host time (one
#: allocation each, per call) than the per-element work they save (docs/results.md, issue 24).
CPP_ONE_KERNEL_MAX_NUMEL = 4096


@dataclass(frozen=True)
class SamplePlan:
    """How the lowering of pqt.sample is shaped for one weight on one target (lowering/sample.py).

    fused_block_kernel: one kernel per weight (NOTE [one kernel per weight]): block amax, block
        values, stream words and the sample in one reduction loop nest that reads w once, with no
        buffer but the sample (Triton) or the amax and the sample (C++). Triton: whole blocks and no
        GEMM template that could take the sample as its prologue. C++: whole blocks of a small
        weight (CPP_ONE_KERNEL_MAX_NUMEL), where host time per call dominates.
    fused_over_blocks: the one-kernel form iterates [block ranges, B], the amax Reduction's ranges
        and its reduction range (Triton: a persistent reduction needs the two to match), and the
        sample is a view of that buffer as w's shape. Otherwise (C++) it iterates w's own ranges,
        which the C++ scheduler splits at B itself (one C++ kernel; a second loop nest where a row
        has several blocks), and the sample buffer is w's shape: no view per use in the wrapper.
    per_call_word_buffers: otherwise, in C++, the stream words once per call in a 2-word buffer
        (its vectorised loop cannot hoist them); in Triton they are computed from the seed and
        key in each program.
    index_iota: the element index's last-dim part from a realized iota (vectorised C++, NOTE
        [index iota]). Elsewhere an index expression.
    indirect_ragged_block: the block of a ragged last block computed by integer ops (the C++
        backend's NOTE [ragged split] workaround).
    Outside the one-kernel form the block values are realized per block (C++, and a Triton
    prologue candidate, whose template regenerates the sample per tile).
    """

    fused_block_kernel: bool
    fused_over_blocks: bool
    per_call_word_buffers: bool
    index_iota: bool
    indirect_ragged_block: bool


def sample_plan(device: torch.device, *, ragged: bool, transposed: bool, numel: object = None) -> SamplePlan:
    """The lowering's shape for a weight on `device` (ragged: a last block shorter than the others;
    transposed: pqt.sample_t, the layout a GEMM template reads; numel: the weight's number of
    elements, an int or a symbolic size)."""
    triton, cpp = triton_codegen(device), cpp_backend(device)
    small = isinstance(numel, int) and numel <= CPP_ONE_KERNEL_MAX_NUMEL
    fused = not ragged and not transposed and ((triton and not gemm_templates(device)) or (cpp and small))
    return SamplePlan(
        fused_block_kernel=fused,
        fused_over_blocks=triton,
        per_call_word_buffers=cpp and not fused,
        index_iota=cpp_vectorised(device) and not fused,
        indirect_ragged_block=cpp,
    )


def saves_block_values(device: torch.device, shape: Sequence[object], axis: int, block_size: int) -> bool:
    """Whether a training graph splits the sample of a weight of `shape` (on `device`, blocks of
    `block_size` along `axis`) so that its backward reads the forward's block values and stream
    words (compiler/passes/insert_sample.py NOTE [saved block values]): where the lowering takes
    the per-block form on the C++ backend. The one-kernel form (Triton; small weights in C++)
    computes no values apart from the sample, so there is nothing to save."""
    if not cpp_backend(device):
        return False
    k = shape[axis]
    ragged = isinstance(k, int) and has_partial_block(k, block_size)
    numel = math.prod(shape) if all(isinstance(n, int) for n in shape) else None
    return not sample_plan(device, ragged=ragged, transposed=False, numel=numel).fused_block_kernel
