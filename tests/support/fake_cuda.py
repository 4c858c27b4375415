"""Route 2: sm_90 Triton code from Inductor with no GPU, compiled offline by triton's ptxas (ported from the issue-13 research prototype).

Test/analysis support (not package code). Usage::

    from fake_cuda import fake_h100, capture_inductor, compile_kernels
    with fake_h100():
        srcs = capture_inductor(fn, [FakeTensor inputs on "cuda"], max_autotune=True)
        for k in compile_kernels(srcs, outdir):      # ptxas -> cubin -> cuobjdump
            print(k.name, k.registers, k.spill_stores, k.local_bytes)

What it fakes (checked on torch 2.13.0 and 2.15.0, each with triton 3.9.0; each one checked by missing_symbols()):

- torch.cuda.{is_available, device_count, current_device, set_device, get_device_properties,
  get_device_capability, is_bf16_supported, synchronize, get_rng_state, set_rng_state,
  _exchange_device, _maybe_exchange_device} and the same names cached on
  torch._dynamo.device_interface.CudaInterface (it binds them at class creation): an H100 SXM
  (132 SMs, cc 9.0, 65536 registers / SM, 2048 threads / SM, 227 KiB opt-in shared memory).
  torch._dynamo.device_interface.caching_worker_device_properties is cleared around it.
- triton.runtime.driver.driver.set_active(FakeCudaDriver()): reports GPUTarget("cuda", 90, 32)
  and device 0; triton.compile then takes the real NVIDIA backend (triton/backends/nvidia/
  compiler.py: TTIR -> TTGIR -> LLIR -> PTX -> ptxas -> cubin), which needs no GPU.
- torch._inductor.graph.GraphLowering._compile_to_module: runs codegen, keeps the wrapper
  source, and stops the compile (raises _Captured) before anything is loaded or launched.
- torch._inductor.config.use_static_cuda_launcher = False (the static launcher reads
  the cubin through the CUDA driver), compile_threads = 1 (no subprocess pool: the fakes live
  in this process), fx_graph_cache = False.
- torch._inductor.utils.is_big_gpu is lru-cached: cleared so that it sees 132 SMs.

Pattern initialisation (torch._inductor.fx_passes.joint_graph.lazy_init(input_device)) builds
real sample tensors on the input's device: it runs once on CPU (`warm_patterns()`), and the
module-level name is replaced while faking so that the call for "cuda" reuses the CPU run
(the registered patterns are device-agnostic).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import os
import re
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Iterator, Optional

import torch

from symbols import resolve as _resolve  # imported top-level: route 2 runs as a script

__all__ = ["H100", "FakeCudaDriver", "fake_h100", "capture_inductor", "compile_kernels", "missing_symbols",
           "warm_patterns", "CompiledKernel", "kernel_sources", "SYMBOLS"]

# NVIDIA H100 SXM5 80GB (H100 datasheet / Hopper tuning guide): 132 SMs, cc 9.0.
H100 = SimpleNamespace(
    name="NVIDIA H100 80GB HBM3", major=9, minor=0, multi_processor_count=132,
    total_memory=80 * 2**30, regs_per_multiprocessor=65536, max_threads_per_multi_processor=2048,
    max_threads_per_block=1024, warp_size=32, L2_cache_size=50 * 2**20,
    shared_memory_per_block=48 * 1024, shared_memory_per_block_optin=227 * 1024,
    shared_memory_per_multiprocessor=228 * 1024, gcnArchName="NVIDIA H100 80GB HBM3", is_integrated=False,
    uuid="00000000-0000-0000-0000-000000000000", clock_rate=1980000, memory_clock_rate=2619000,
    memory_bus_width=5120, is_multi_gpu_board=False, pci_bus_id=0, pci_device_id=0, pci_domain_id=0,
)

SYMBOLS: list[tuple[str, str]] = [
    ("torch._dynamo.device_interface.CudaInterface", "cached torch.cuda functions replaced"),
    ("torch._dynamo.device_interface.caching_worker_device_properties", "cleared"),
    ("torch._dynamo.device_interface.caching_worker_current_devices", "cleared"),
    ("torch._inductor.graph.GraphLowering._compile_to_module", "replaced: keep the source, stop"),
    ("torch._inductor.graph.GraphLowering.codegen", "called by the replacement"),
    ("torch._inductor.utils.is_big_gpu", "lru cache cleared (132 SMs >= 68)"),
    ("torch._inductor.config.use_static_cuda_launcher", "False"),
    ("torch._inductor.config.test_configs.max_mm_configs", "1: one template choice, nothing timed"),
    ("torch._inductor.fx_passes.joint_graph.lazy_init", "run on CPU before faking"),
    ("torch._inductor.runtime.triton_heuristics.CachingAutotuner.precompile", "warm_cache_only=True: compile each config, no launcher"),
    ("torch._inductor.runtime.triton_heuristics.CachingAutotuner._precompile_config", "fills .compile_results (an instance attribute: .kernel, .config)"),
    ("torch._inductor.runtime.triton_helpers.set_driver_to_gpu",
     "run by each kernel module: keeps a driver that is an instance of CudaDriver"),
    ("torch._inductor.template_heuristics.triton.BaseConfigHeuristic.preprocess_mm_configs",
     "wrapped to impose one chosen template config (mm_config=...)"),
    ("torch._inductor.template_heuristics.triton.GemmConfig", "the imposed config"),
    ("triton.runtime.driver.driver.set_active", "the fake driver"),
    ("triton.backends.nvidia.driver.CudaDriver", "base of the fake driver (isinstance checks)"),
    ("triton.backends.compiler.GPUTarget", "cuda, 90, warp 32"),
    ("triton.backends.nvidia.compiler.CUDABackend", "the real sm_90 compiler (ptxas)"),
    ("triton.backends.nvidia.compiler.get_ptxas", "which ptxas triton uses (for ptxas -v)"),
]




def missing_symbols() -> Optional[str]:
    try:
        import triton  # noqa: F401
    except ImportError:
        return "triton is not installed"
    for path, _ in SYMBOLS:
        try:
            _resolve(path)
        except Exception as e:  # noqa: BLE001
            return f"route 2 needs {path}: {type(e).__name__}: {e}"
    bindir = Path(importlib.import_module("triton").__file__).parent / "backends" / "nvidia" / "bin"
    for tool in ("ptxas-blackwell", "cuobjdump"):
        if not (bindir / tool).exists():
            return f"route 2 needs triton's bundled {tool} ({bindir})"
    if os.environ.get("TRITON_INTERPRET") == "1":
        return "route 2 cannot run with TRITON_INTERPRET=1 (triton.jit would build interpreter functions)"
    return None


def ptxas_path() -> str:
    """The ptxas triton itself runs for sm_90 (triton 3.9: `ptxas-blackwell`, CUDA 13.4, for
    every arch: triton/backends/nvidia/compiler.py get_ptxas); the plain `ptxas` (12.9) rejects
    triton's PTX .version 9.4."""
    from triton.backends.nvidia.compiler import get_ptxas

    return get_ptxas(90).path


def triton_bin(tool: str) -> str:
    import triton

    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / tool)


def _cuda_driver_class():
    from triton.backends.nvidia.driver import CudaDriver

    return CudaDriver


class FakeCudaDriver(_cuda_driver_class()):  # type: ignore[misc]
    """triton's CudaDriver for a device that is not there: enough to compile, never to launch.

    A subclass, so that Inductor's kernel modules (`triton_helpers.set_driver_to_gpu()`, run
    when a kernel module is imported) see an active CUDA driver and keep it. Its __init__ skips
    CudaUtils (which builds a C extension against libcuda.so).
    """

    def __init__(self) -> None:  # noqa: D107 - no super().__init__: no libcuda
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", 90, 32)
        self.launcher_cls = None
        self.utils = SimpleNamespace(get_device_properties=lambda device: {
            "max_shared_mem": H100.shared_memory_per_block_optin, "multiprocessor_count": 132,
            "max_num_regs": 65536, "warpSize": 32, "sm_clock_rate": 1980000, "mem_clock_rate": 2619000,
            "mem_bus_width": 5120,
        })
        self.get_device_capability = lambda device=None: (9, 0)
        self.get_current_stream = lambda device=None: 0
        self.get_current_device = lambda: 0
        self.set_current_device = lambda device: None

    def get_current_target(self):
        return self.target

    def get_benchmarker(self):
        raise RuntimeError("fake CUDA device: nothing can be timed")

    def get_empty_cache_for_benchmark(self):
        raise RuntimeError("fake CUDA device: nothing can be timed")


_LAZY_INIT = None


def warm_patterns() -> None:
    """Initialise Inductor's pattern matchers on CPU (they trace real sample tensors on the
    input's device, which fails for a device that is not there)."""
    global _LAZY_INIT
    from torch._inductor.fx_passes import joint_graph

    if _LAZY_INIT is None:
        _LAZY_INIT = joint_graph.lazy_init
    _LAZY_INIT(torch.device("cpu"))


@contextlib.contextmanager
def _patched(items) -> Iterator[None]:
    saved = [(o, n, o.__dict__[n] if n in o.__dict__ else getattr(o, n, None), n in o.__dict__) for o, n, _ in items]
    try:
        for o, n, v in items:
            setattr(o, n, v)
        yield
    finally:
        for o, n, old, had in reversed(saved):
            if had:
                setattr(o, n, old)
            else:
                try:
                    delattr(o, n)
                except AttributeError:
                    setattr(o, n, old)


@contextlib.contextmanager
def fake_h100() -> Iterator[None]:
    reason = missing_symbols()
    if reason:
        raise RuntimeError(reason)
    from torch._dynamo import device_interface as di
    from torch._inductor import utils as iu
    from triton.runtime.driver import driver

    from torch._inductor.fx_passes import joint_graph

    warm_patterns()
    cpu_init = _LAZY_INIT
    cuda = torch.cuda
    props = lambda device=None: H100  # noqa: E731
    cap = lambda device=None: (9, 0)  # noqa: E731
    items = [
        (cuda, "is_available", lambda: True),
        (cuda, "device_count", lambda: 1),
        (cuda, "current_device", lambda: 0),
        (cuda, "set_device", lambda d: None),
        (cuda, "get_device_properties", props),
        (cuda, "get_device_capability", cap),
        (cuda, "get_device_name", lambda device=None: H100.name),
        (cuda, "is_bf16_supported", lambda including_emulation=True: True),
        (cuda, "synchronize", lambda device=None: None),
        # Dynamo/AOTAutograd save and restore the CUDA RNG around tracing (preserve_rng_state)
        (cuda, "_exchange_device", lambda device: 0),  # torch.cuda.device(...) contexts
        (cuda, "_maybe_exchange_device", lambda device: 0),
        (cuda, "get_rng_state", lambda device="cuda": torch.zeros(16, dtype=torch.uint8)),
        (cuda, "set_rng_state", lambda state, device="cuda": None),
        (di.CudaInterface, "current_device", staticmethod(lambda: 0)),
        (di.CudaInterface, "device_count", staticmethod(lambda: 1)),
        (di.CudaInterface, "set_device", staticmethod(lambda d: None)),
        (di.CudaInterface, "get_device_properties", staticmethod(props)),
        (di.CudaInterface, "is_available", staticmethod(lambda: True)),
        (di.CudaInterface, "is_bf16_supported", staticmethod(lambda including_emulation=False: True)),
        (di.CudaInterface, "get_compute_capability", staticmethod(lambda device=None: 90)),
        (di.CudaInterface, "synchronize", staticmethod(lambda device=None: None)),
        (di.CudaInterface, "get_raw_stream", staticmethod(lambda idx: 0)),
        (di.CudaInterface, "exchange_device", staticmethod(lambda device: 0)),
        (di.CudaInterface, "maybe_exchange_device", staticmethod(lambda device: 0)),
        # joint_graph_passes calls lazy_init(input_device): the patterns registered on CPU serve
        (joint_graph, "lazy_init", lambda input_device=None, *a, **k: cpu_init(torch.device("cpu"))),
    ]
    old_props = dict(di.caching_worker_device_properties)
    old_devs = dict(di.caching_worker_current_devices)
    di.caching_worker_device_properties["cuda"] = [H100]
    di.caching_worker_current_devices["cuda"] = 0
    old_driver = driver._active
    driver.set_active(FakeCudaDriver())
    iu.is_big_gpu.cache_clear()
    try:
        with _patched(items):
            yield
    finally:
        driver._active = old_driver
        di.caching_worker_device_properties.clear()
        di.caching_worker_device_properties.update(old_props)
        di.caching_worker_current_devices.clear()
        di.caching_worker_current_devices.update(old_devs)
        iu.is_big_gpu.cache_clear()


class _Captured(Exception):
    def __init__(self, code: str) -> None:
        super().__init__("captured")
        self.code = code


def capture_inductor(fn: Callable, inputs: list, *, max_autotune: bool = False,
                     extra_config: Optional[dict] = None, mm_config: Optional[tuple] = None) -> list[str]:
    """Trace fn(*inputs) (FakeTensors on "cuda") with make_fx, compile with Inductor, and return
    the output code of every graph it generated (kernels are not compiled or loaded).

    mm_config: (BLOCK_M, BLOCK_N, BLOCK_K, num_stages, num_warps) to use as the only GEMM
    template config (replaces the list handed to BaseConfigHeuristic.preprocess_mm_configs);
    default: the first of Inductor's list (test_configs.max_mm_configs = 1)."""
    from torch._inductor import config as ic
    from torch._inductor.graph import GraphLowering
    from torch.fx.experimental.proxy_tensor import make_fx

    captured: list[str] = []

    def keep(self):
        wrapper, _ = self.codegen()
        captured.append(wrapper.value if hasattr(wrapper, "value") else str(wrapper))
        raise _Captured(captured[-1])

    cfg = {"fx_graph_cache": False, "compile_threads": 1, "use_static_cuda_launcher": False,
           "triton.autotune_at_compile_time": False, **(extra_config or {})}
    if max_autotune:
        cfg.update({"max_autotune": True, "max_autotune_gemm_backends": "TRITON",
                    "test_configs.max_mm_configs": 1})
    patches = [(GraphLowering, "_compile_to_module", keep)]
    if mm_config is not None:
        from torch._inductor.template_heuristics import triton as th

        orig = th.BaseConfigHeuristic.preprocess_mm_configs
        one = [th.GemmConfig(*mm_config)]

        def preprocess(self, m, n, k, configs, *a, **kw):
            return orig(self, m, n, k, one, *a, **kw)

        patches.append((th.BaseConfigHeuristic, "preprocess_mm_configs", preprocess))
    gm = make_fx(fn, tracing_mode="fake", _allow_non_fake_inputs=True)(*inputs)
    with ic.patch(cfg), _patched(patches):
        try:
            torch._inductor.compile(gm, inputs)
        except _Captured:
            pass
        except Exception as e:  # Inductor wraps errors raised inside lowering / codegen
            if not any(isinstance(x, _Captured) for x in _chain(e)):
                raise
    return captured


def _chain(e: BaseException):
    while e is not None:
        yield e
        e = e.__cause__ or e.__context__


def kernel_sources(code: str) -> dict[str, str]:
    """{kernel name: its module source} from an output code (async_compile.triton calls)."""
    out = {}
    for m in re.finditer(r"^(triton_\w+) = async_compile\.triton\('(\w+)', '''\n(.*?)''', device_str='cuda'\)",
                         code, re.M | re.S):
        out[m.group(1)] = m.group(3)
    return out


@dataclasses.dataclass
class CompiledKernel:
    name: str
    config: str
    ptx: str
    cubin_path: str
    registers: int
    spill_stores: int  # bytes, from ptxas -v
    spill_loads: int
    local_bytes: int  # LOCAL from cuobjdump -res-usage (0: no spills)
    stack: int
    shared: int
    num_warps: int
    res_usage: str


def _res_usage(cubin: str) -> dict[str, int]:
    out = subprocess.run([triton_bin("cuobjdump"), "-res-usage", cubin], capture_output=True, text=True, check=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", out)
    if not m:
        raise RuntimeError(f"cuobjdump -res-usage: unexpected output\n{out}")
    return {"registers": int(m.group(1)), "stack": int(m.group(2)), "shared": int(m.group(3)),
            "local": int(m.group(4)), "text": out}


def _ptxas_spills(ptx: str, workdir: Path, name: str) -> tuple[int, int]:
    """Run triton's ptxas with -v on the PTX (sm_90a, as triton does) for its spill report."""
    p = workdir / f"{name}.ptx"
    p.write_text(ptx)
    r = subprocess.run([ptxas_path(), "-v", "--gpu-name", "sm_90a", str(p), "-o", str(workdir / f"{name}.v.cubin")],
                       capture_output=True, text=True, check=True)
    m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", r.stderr)
    return (int(m.group(1)), int(m.group(2))) if m else (-1, -1)


def compile_kernels(code: str, outdir: str | os.PathLike) -> list[CompiledKernel]:
    """Compile every Triton kernel of an output code for sm_90a, offline; one entry per config."""
    import triton  # noqa: F401

    out: list[CompiledKernel] = []
    workdir = Path(outdir)
    workdir.mkdir(parents=True, exist_ok=True)
    for name, src in kernel_sources(code).items():
        (workdir / f"{name}.py").write_text(src)
        spec = importlib.util.spec_from_file_location(f"_pqt_r2_{name}", workdir / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        autotuner = getattr(mod, name)
        # warm_cache_only: compile every config (triton.compile -> ptxas), make no launcher
        # (a launcher loads the cubin through the CUDA driver).
        from torch._inductor import config as ic

        with ic.patch({"use_static_cuda_launcher": False}):
            autotuner.precompile(warm_cache_only=True)
        for i, res in enumerate(autotuner.compile_results):
            kernel = res.kernel
            ptx = kernel.asm["ptx"]
            cubin = workdir / f"{name}.{i}.cubin"
            cubin.write_bytes(kernel.asm["cubin"])
            ru = _res_usage(str(cubin))
            ss, sl = _ptxas_spills(ptx, workdir, f"{name}.{i}")
            (workdir / f"{name}.{i}.ptx").write_text(ptx)
            out.append(CompiledKernel(
                name=name, config=str(res.config), ptx=ptx, cubin_path=str(cubin), registers=ru["registers"],
                spill_stores=ss, spill_loads=sl, local_bytes=ru["local"], stack=ru["stack"], shared=ru["shared"],
                num_warps=res.config.num_warps, res_usage=ru["text"]))
    return out
