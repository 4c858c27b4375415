"""Route 1: Inductor's Triton code generation for CPU tensors, executed by the Triton interpreter.

Lets a test run, without a GPU, the Triton kernels that Inductor would generate on one: the
lowering of pqt.sample, and GEMM templates with the sample in their prologue. Usage::

    reason = unavailable()                  # None, or why route 1 cannot run here (skip with it)
    with inductor_triton_on_cpu(templates=True):
        out, code = run_and_get_code(torch.compile(f), *cpu_tensors)

What it changes, each only inside the context (versions checked: torch 2.13.0 and 2.15.0, each with triton 3.9.0;
`SYMBOLS` lists every private symbol it touches and `unavailable()` checks each):

1. Precondition, not a change: TRITON_INTERPRET=1 before triton is first imported
   (tests/conftest.py). `triton.jit` decides when a function is decorated whether it builds an
   interpretable function; Inductor then launches its kernels in the interpreter by itself.
   So this route and route 2 (fake_cuda.py, which needs real JIT functions) cannot share a
   process: route-2 tests run in a subprocess.
2. Inductor config `cpu_backend="triton"`: Triton code, not C++, for CPU tensors.
3. `torch.utils._triton.triton_hash_with_backend` returns a constant: Inductor puts the
   active Triton driver's hash in each kernel's metadata (a cache key), and without a GPU
   there is no active driver ("0 active drivers").
4. Two interpreter fixes (`triton.runtime.interpreter.InterpreterBuilder`): its fp32 -> bf16
   conversion truncates instead of rounding to nearest even, and its `dot` multiplies bf16
   operands as their raw 16-bit integers. Replaced by exact conversions (torch's own
   round-to-nearest-even, the one the eager op uses) and a dot on operands widened to fp32
   (a bf16 x bf16 product is exact in fp32, as on a tensor core).
5. templates=True: Triton GEMM templates for CPU tensors (max_autotune_gemm_backends="TRITON")
   with one template configuration (`test_configs.max_mm_configs`), so that nothing is timed
   and the prologue decision is Inductor's legality checks alone.
6. fused_ms=... (several template choices, `benchmark_epilogue_fusion`): Inductor times the
   fused prologue against the separate kernel, which cannot be done on CPU. The scheduler's two
   timing calls return fixed numbers (the separate kernel: 1 ms; each fused template choice:
   `fused_ms`), so a test picks the outcome; `compile_threads=1` (the scheduler waits on a
   compile future the interpreter never completes) and a one-line CPU
   `import_get_raw_stream_as` (its multi-line string breaks the indentation of the benchmark
   module that Inductor writes for a timing).
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import os
import re
from typing import Any, Iterator, Optional

import numpy as np
import torch

from .symbols import resolve as _resolve

__all__ = ["VERSIONS_CHECKED", "SYMBOLS", "unavailable", "inductor_triton_on_cpu", "kernel_sources",
           "kernels_computing_sample", "launches", "host_calls", "fallback_calls"]

VERSIONS_CHECKED = {"torch": ("2.13.0", "2.15.0"), "triton": ("3.9.0",)}

#: (dotted path, what the route does with it, when it is needed)
SYMBOLS: tuple[tuple[str, str, str], ...] = (
    ("torch._inductor.config.cpu_backend", "set to 'triton'", "always"),
    ("torch.utils._triton.triton_hash_with_backend", "returns a constant", "always"),
    ("torch._inductor.runtime.triton_helpers.max2", "must be an interpreter function", "always"),
    ("triton.runtime.interpreter.InterpretedFunction", "what an interpretable kernel is", "always"),
    ("triton.runtime.interpreter.InterpreterBuilder.cast_impl", "exact fp32 <-> bf16 conversions", "bf16"),
    ("triton.runtime.interpreter.InterpreterBuilder.create_dot", "bf16 operands widened to fp32", "bf16 GEMMs"),
    ("triton.runtime.interpreter.TensorHandle", "built by the two replacements", "bf16"),
    ("torch._inductor.config.max_autotune_gemm_backends", "'TRITON'", "templates"),
    ("torch._inductor.config.test_configs.max_mm_configs", "one template configuration", "templates"),
    ("torch._inductor.config.compile_threads", "1", "timed choices"),
    ("torch._inductor.scheduler.Scheduler.benchmark_fused_nodes", "a fixed number", "timed choices"),
    ("torch._inductor.scheduler.Scheduler.benchmark_codegened_module", "a fixed number", "timed choices"),
    ("torch._inductor.codegen.cpu_device_op_overrides.CpuDeviceOpOverrides.import_get_raw_stream_as",
     "a one-line string", "timed choices"),
)
#: (module, text its source must hold): behaviour the route relies on without touching it.
SOURCE_FACTS: tuple[tuple[str, str], ...] = (
    ("torch._inductor.async_compile", '"TRITON_INTERPRET"'),  # kernels launched in the interpreter
    ("torch._inductor.runtime.triton_heuristics", "_interpret_args_grid"),
    ("torch._inductor.codegen.triton", "torch.utils._triton.triton_hash_with_backend()"),  # looked up per call
)




def unavailable() -> Optional[str]:
    """None if route 1 can run in this process, else the reason (for pytest.skip)."""
    try:
        import triton
    except ImportError:
        return "route 1 needs triton"
    if os.environ.get("TRITON_INTERPRET") != "1":
        return "route 1 needs TRITON_INTERPRET=1 before triton is imported (tests/conftest.py sets it without CUDA)"
    versions = f"torch {torch.__version__}, triton {triton.__version__}; checked on {VERSIONS_CHECKED}"
    for path, _, _ in SYMBOLS:
        try:
            _resolve(path)
        except Exception as e:  # noqa: BLE001 - any failure means "moved"
            return f"route 1 needs {path} ({type(e).__name__}: {e}); {versions}"
    if type(_resolve(SYMBOLS[2][0])) is not _resolve(SYMBOLS[3][0]):
        return "Inductor's triton_helpers were imported before TRITON_INTERPRET=1: they cannot run in the interpreter"
    for module, text in SOURCE_FACTS:
        if text not in inspect.getsource(importlib.import_module(module)):
            return f"route 1 relies on {text!r} in {module}, which is gone; {versions}"
    return None


# ---- the interpreter fixes ------------------------------------------------------------------

def _bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    """bf16 held as raw 16-bit words -> fp32 (exact: the high half of an fp32)."""
    return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)


def _f32_to_bf16(x: np.ndarray) -> np.ndarray:
    """fp32 -> bf16 raw words, rounded to nearest even by torch (NaN stays NaN)."""
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(torch.bfloat16)
    return t.view(torch.int16).numpy().view(np.uint16).reshape(np.shape(x))


def _interpreter_fixes() -> list[tuple[Any, str, Any]]:
    import triton.language as tl
    from triton.runtime import interpreter

    builder, handle = interpreter.InterpreterBuilder, interpreter.TensorHandle
    cast, dot = builder.cast_impl, builder.create_dot

    def cast_impl(self, src, dst_type):
        s, d = src.dtype.scalar, dst_type.scalar
        if s == tl.bfloat16 and d != tl.bfloat16:
            wide = handle(_bf16_to_f32(src.data), tl.float32)  # exact
            return wide if d == tl.float32 else cast(self, wide, dst_type)
        if d == tl.bfloat16 and s != tl.bfloat16:
            # through fp32: exact from fp16 and from integers below 2^24 (all this route meets)
            return handle(_f32_to_bf16(src.data.astype(np.float32)), d)
        return cast(self, src, dst_type)

    def create_dot(self, a, b, acc, input_precision, max_num_imprecise_acc):
        if tl.bfloat16 in (a.dtype.scalar, b.dtype.scalar):
            wide = [handle(_bf16_to_f32(x.data) if x.dtype.scalar == tl.bfloat16 else x.data.astype(np.float32),
                           tl.float32) for x in (a, b)]
            a, b = wide
        return dot(self, a, b, acc, input_precision, max_num_imprecise_acc)

    # create_fp_ext / create_fp_trunc / the int<->float casts call self.cast_impl: one attribute covers them.
    return [(builder, "cast_impl", cast_impl), (builder, "create_dot", create_dot)]


def _fixed_timings(fused_ms: float) -> list[tuple[Any, str, Any]]:
    from torch._inductor.codegen.cpu_device_op_overrides import CpuDeviceOpOverrides
    from torch._inductor.scheduler import Scheduler

    # Inductor fuses the prologue when a fused choice times below (template + separate kernel):
    # fused_ms=1 always fuses, fused_ms=1e6 never does.
    return [
        (Scheduler, "benchmark_fused_nodes", lambda self, nodes, *a, **k: (1.0, "")),
        (Scheduler, "benchmark_codegened_module", lambda self, module, *a, **k: (fused_ms, "")),
        (CpuDeviceOpOverrides, "import_get_raw_stream_as", lambda self, name: f"{name} = lambda _: 0"),
    ]


@contextlib.contextmanager
def _replaced(items: list[tuple[Any, str, Any]]) -> Iterator[None]:
    saved = [(owner, name, owner.__dict__.get(name), name in owner.__dict__) for owner, name, _ in items]
    try:
        for owner, name, value in items:
            setattr(owner, name, value)
        yield
    finally:
        for owner, name, old, had in reversed(saved):
            if had:
                setattr(owner, name, old)
            else:
                delattr(owner, name)


@contextlib.contextmanager
def inductor_triton_on_cpu(*, templates: bool = False, mm_configs: int = 1,
                           fused_ms: Optional[float] = None) -> Iterator[None]:
    """Inside: Inductor compiles CPU tensors to Triton, run by the interpreter (module docstring).

    templates: allow Triton GEMM templates (`mm_configs` configurations; the caller still asks
    for max-autotune, e.g. `mode="max-autotune"`). fused_ms: fixed timings for the scheduler
    (needed where several template choices make Inductor time the prologue).
    """
    reason = unavailable()
    if reason:
        raise RuntimeError(reason)
    import torch._inductor.config as inductor_config
    import torch.utils._triton as torch_triton

    items = [(torch_triton, "triton_hash_with_backend", lambda: "0" * 64), *_interpreter_fixes()]
    config: dict[str, Any] = {"cpu_backend": "triton", "fx_graph_cache": False}
    if templates:
        config.update({"max_autotune_gemm_backends": "TRITON", "test_configs.max_mm_configs": mm_configs})
    if fused_ms is not None:
        items += _fixed_timings(fused_ms)
        config["compile_threads"] = 1
    with _replaced(items), inductor_config.patch(config):
        yield


# ---- reading the output code ----------------------------------------------------------------

_KERNEL = re.compile(r"^(triton_\w+) = async_compile\.triton\('\w+', '''\n(.*?)''', device_str='\w+'\)", re.M | re.S)


def kernel_sources(code: str) -> dict[str, str]:
    """{Triton kernel name: its source} of one output code."""
    return {m.group(1): m.group(2) for m in _KERNEL.finditer(code)}


def kernels_computing_sample(code: str) -> list[str]:
    """The kernels that run the generator per element (formula.MIX_MUL_1 appears in the code),
    leaving out the one-element kernel of the per-call stream words (lowering/sample.py)."""
    from pqt_compile.formula import MIX_MUL_1

    return sorted(name for name, src in kernel_sources(code).items()
                  if str(MIX_MUL_1) in src and not re.search(r"\bxnumel = 1\b", src))


def launches(code: str) -> list[str]:
    """The kernel launches of one output code (its `.run(` lines, comments left out), in order."""
    return [line.strip() for line in code.splitlines() if ".run(" in line and not line.strip().startswith("#")]


def _lines_matching(pattern: str):
    regex = re.compile(pattern)
    return lambda body: sum(len(regex.findall(line.split("#", 1)[0])) for line in body.splitlines())


# What one call of a generated wrapper does on the host, by the wrapper lines that do it.
_HOST_CALLS = {
    "input checks": _lines_matching(r"\bassert_size_stride\(|\bassert_alignment\("),
    "allocations": _lines_matching(r"\bempty_strided_\w+\("),
    "views": _lines_matching(r"\breinterpret_tensor\("),
    "launches": lambda body: len(launches(body)),
    "library calls": _lines_matching(r"\bextern_kernels\.\w+\("),
}


def host_calls(code: str) -> dict[str, int]:
    """The host work of one call of an output code's wrapper (`call(args)`), counted from its
    lines (comments left out): inputs, input checks, allocations, tensor views, kernel launches
    and library (extern) calls. Each costs the host about a microsecond, whatever the device."""
    body = code.split("def call(", 1)[1]
    unpacked = next((line for line in body.splitlines() if line.strip().endswith("= args")), "")
    return {"inputs": len([n for n in unpacked.split("=")[0].split(",") if n.strip()]),
            **{name: count(body) for name, count in _HOST_CALLS.items()}}


def fallback_calls(code: str) -> int:
    """Lines of the output code that call the eager pqt op (a fallback). Comments do not count:
    Inductor's provenance comments ("Graph fragment") name the op of every kernel."""
    return sum("torch.ops.pqt.sample" in line.split("#", 1)[0] for line in code.splitlines())
