"""Inductor: its entry point (with AOTAutograd's cache switch for one compile), config, cache
directory, lowering API, prologue marking, output code and the 0-d input checks."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib
import threading
from types import SimpleNamespace
from typing import Any, Callable, Iterator, Optional

import torch

from .registry import CompatError, require

__all__ = [
    "inductor_config",
    "inductor_config_options",
    "inductor_option_type",
    "ieee_division",
    "ieee_division_patches",
    "triton_divides_exactly",
    "compile_fx",
    "inductor_cache_dir",
    "decompositions_keeping_matmuls",
    "no_scalar_index_input_asserts",
    "custom_graph_pass_base",
    "inductor_lowering_api",
    "cpu_vector_isa",
    "mark_prologue_candidate",
    "floor_div",
    "has_triton",
    "trace_artifact",
    "mode_options",
    "capture_output_code",
]


# ---- Inductor -------------------------------------------------------------------------------

def inductor_config() -> Any:
    """Inductor's config module (torch._inductor.config, torch 2.13-2.15): read, never set, here;
    a compile's settings are patched per compile (compat.compile_fx's config_patches)."""
    return importlib.import_module("torch._inductor.config")


def inductor_config_options() -> set[str]:
    """The names of Inductor's config options (to refuse an unknown torch.compile option)."""
    return set(require("torch._inductor.config", "_config", "telling Inductor options from unknown ones"))


def inductor_option_type(name: str) -> Any:
    """The declared type of Inductor config option `name` (a class, or a typing form such as
    `Optional[...]`), as torch.compile checks an option's value: `torch._inductor.config.get_type`
    (torch 2.11-2.15)."""
    import torch._inductor.config as inductor_config

    return inductor_config.get_type(name)


# NOTE [division on torch 2.11]: NVFP4's block scale and its round-to-nearest units divide two fp32
# values, and the sample's bits need that division correctly rounded (IEEE; formula_nvfp4.py).
# torch 2.13-2.15 give every Inductor ops handler `div_rn` for it. torch 2.11 (the torch the GPU
# machine had, gpu-first-run.md) has none: there the division lowers to `truediv`, which is exact in
# C++, and in Triton is `div_rn` only under `eager_numerics.division_rounding` (otherwise the
# approximate div.full.f32, which would change sampled bits silently). So on such a torch the
# backend patches that option on for a compile whose format divides (`ieee_division_patches`), and
# the lowering refuses Triton code that would divide approximately (`triton_divides_exactly`).

def _has_div_rn() -> bool:
    """Whether Inductor's ops handlers have `div_rn` (torch 2.13-2.15; not torch 2.11)."""
    handler = require("torch._inductor.ops_handler", "OpsHandler", "IEEE division in the NVFP4 lowering")
    return hasattr(handler, "div_rn")


def ieee_division(a: Any, b: Any) -> Any:
    """a / b for fp32 values of Inductor's `ops`, correctly rounded (NOTE [division on torch 2.11])."""
    ops = require("torch._inductor.virtualized", "ops", "IEEE division in the NVFP4 lowering")
    return ops.div_rn(a, b) if _has_div_rn() else ops.truediv(a, b)


def ieee_division_patches() -> dict:
    """Inductor config patches under which `ieee_division` is IEEE in Triton code too: none where
    the handlers have `div_rn`, else `eager_numerics.division_rounding` on (NOTE [division on torch
    2.11])."""
    return {} if _has_div_rn() else {"eager_numerics.division_rounding": True}


def triton_divides_exactly() -> bool:
    """Whether `ieee_division` in Triton code generated now is correctly rounded."""
    return _has_div_rn() or bool(inductor_config().eager_numerics.division_rounding)


def compile_fx(gm: torch.fx.GraphModule, example_inputs: list, config_patches: Optional[dict],
               scalar_index_asserts: bool = True, keep_matmuls: bool = False, autograd_cache: bool = True) -> Callable:
    """Inductor's `compile_fx` (torch 2.13), with config patches applied to this compile only.

    scalar_index_asserts=False: the generated wrappers check no 0-d int64 input (NOTE [0-d input
    asserts]), in the forward graph and in the backward graph, which AOTAutograd compiles at the
    first backward pass (through the same inner compile function, as the config patches).
    keep_matmuls=True: AOTAutograd traces with `decompositions_keeping_matmuls()`, built under the
    config patches (Inductor's table depends on its config, e.g. fallback_random).
    autograd_cache=False: AOTAutograd's cache is neither read nor written for this compile, so the
    joint-graph passes run (Inductor's FX graph cache still serves the compiled graphs)."""
    if not autograd_cache:
        # torch._functorch.config (torch 2.11-2.15): patched for this compile only.
        require("torch._functorch.config", "enable_autograd_cache", "the pass's warnings on a cache hit")
        with importlib.import_module("torch._functorch.config").patch(enable_autograd_cache=False):
            return compile_fx(gm, example_inputs, config_patches, scalar_index_asserts, keep_matmuls)
    fn = require("torch._inductor.compile_fx", "compile_fx", "the pqt backend")
    decompositions = None
    if keep_matmuls:
        with inductor_config().patch(config_patches or {}):
            decompositions = decompositions_keeping_matmuls()
    if scalar_index_asserts:
        return fn(gm, example_inputs, config_patches=config_patches or None, decompositions=decompositions)
    inner = require("torch._inductor.compile_fx", "compile_fx_inner", "the pqt backend")

    @functools.wraps(inner)
    def inner_compile(*args: Any, **kwargs: Any) -> Any:
        with no_scalar_index_input_asserts():
            return inner(*args, **kwargs)

    return fn(gm, example_inputs, inner_compile=inner_compile, config_patches=config_patches or None,
              decompositions=decompositions)


def inductor_cache_dir() -> str:
    """The directory of Inductor's on-disk caches (TORCHINDUCTOR_CACHE_DIR or its default; read at
    each call, as Inductor does; torch 2.11-2.15)."""
    return require("torch._inductor.runtime.cache_dir_utils", "cache_dir", "the pass's warnings on a cache hit")()


def decompositions_keeping_matmuls() -> dict:
    """Inductor's decomposition table (`select_decomp_table`, torch 2.13-2.15) without its own
    rewrites of aten.mm and addmm into multiplies and sums (one-row or one-column shapes, tiny
    ones on the CPU, K = 1; on a GPU under coordinate-descent tuning every one-row or one-column
    matmul) and of aten.mv and addmv (W @ v with a 1-D v: always a multiply and a sum), and with
    bmm's kept for the outer product only ([B, M, 1] x [B, 1, N]: a rotary
    position table; no weight is contracted over one element): compiler/backend.py NOTE [matmuls
    stay matmuls]. Reads Inductor's config: call it under the compile's patches."""
    table = _MatmulKeepingTable(require("torch._inductor.decomposition", "select_decomp_table",
                                        "keeping small matmuls sampled")())
    aten = torch.ops.aten
    for op in (aten.mm.default, aten.addmm.default, aten.mv.default, aten.addmv.default):
        table.pop(op, None)
    bmm = table.pop(aten.bmm.default, None)
    if bmm is not None:
        table[aten.bmm.default] = functools.partial(_bmm_outer_product_only, bmm)
    return table


def _bmm_outer_product_only(decomposition: Callable, a: torch.Tensor, b: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
    """Inductor's bmm decomposition where the product is an outer product (K = 1), else none."""
    from torch.fx.experimental.symbolic_shapes import statically_known_true

    if statically_known_true(a.shape[2] == 1) and statically_known_true(b.shape[1] == 1):
        return decomposition(a, b, *args, **kwargs)
    return NotImplemented


class _MatmulKeepingTable(dict):
    """The table of `decompositions_keeping_matmuls`, pickled as a call of that function: Inductor's
    cache keys pickle the table a compile is given, and the table's C++ functions do not pickle
    (the FX graph cache would be bypassed at every pqt compile). The table is a pure function of
    the torch release and Inductor's config, both in those keys already."""

    def __reduce__(self) -> tuple:
        return decompositions_keeping_matmuls, ()


@contextlib.contextmanager
def no_scalar_index_input_asserts() -> Iterator[None]:
    """Inside the block (this thread only), Inductor's generated wrappers check no 0-d int64
    input's size and stride.

    NOTE [0-d input asserts]: Inductor (torch 2.13-2.15) checks each tensor input of a compiled
    graph at every call with `assert_size_stride(x, (), ())` (`size_asserts`). For a 0-d tensor
    that check holds for every 0-d tensor, and pqt adds one such input per keyed weight and one for
    the seed (graph_abi.py), made by pqt itself, to the forward graph and again to the backward
    graph (saved there). Each check costs host time at every call (about 0.5-1 us; wrapper.py NOTE
    [host time per call]). A user's own 0-d int64 input of a pqt graph loses the check too; Dynamo's
    guards check it before the call. Every other input keeps its check, and a compile in another
    thread keeps all of its own. Used through `compile_fx(..., scalar_index_asserts=False)`, which
    holds the block around each of its inner compiles (AOTAutograd compiles a backward graph at
    its first backward pass, outside any block around the compile_fx call, maybe in another thread).

    How: while any thread is inside such a block, `PythonWrapperCodegen.codegen_input_size_asserts`
    (which queues the checks in `_pending_input_asserts`, torch 2.13-2.15) is wrapped; the wrapper
    runs the original, then, in a thread inside the block, drops the queued checks of the 0-d int64
    inputs. Blocks nest and overlap across threads: the first entry installs the wrapper, the last
    exit restores the original. Where this torch has neither the method nor the queue the block
    changes nothing (the checks stay: slower, same values).
    """
    token = _skip_scalar_index_asserts.set(True)
    try:
        installed = _scalar_assert_filter.acquire()
        try:
            yield
        finally:
            if installed:
                _scalar_assert_filter.release()
    finally:
        _skip_scalar_index_asserts.reset(token)


_skip_scalar_index_asserts: contextvars.ContextVar[bool] = contextvars.ContextVar("pqt_skip_scalar_index_asserts",
                                                                                  default=False)


class _ScalarAssertFilter:
    """The wrapper of `codegen_input_size_asserts`, installed while at least one block is open."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._codegen: Optional[type] = None  # PythonWrapperCodegen, while wrapped
        self._original: Optional[Callable[[Any], None]] = None

    def acquire(self) -> bool:
        """Count one more open block, installing the wrapper for the first; False where this torch
        has nothing to wrap (nothing is counted then)."""
        with self._lock:
            if self._users == 0:
                try:
                    codegen = require("torch._inductor.codegen.wrapper", "PythonWrapperCodegen",
                                      "fewer input checks per call (NOTE [0-d input asserts])")
                except CompatError:
                    return False
                original = codegen.__dict__.get("codegen_input_size_asserts")
                if original is None:
                    return False
                self._codegen, self._original = codegen, original
                codegen.codegen_input_size_asserts = _filtered_input_size_asserts(original)
            self._users += 1
            return True

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0:
                self._codegen.codegen_input_size_asserts = self._original
                self._codegen = self._original = None


_scalar_assert_filter = _ScalarAssertFilter()


def _filtered_input_size_asserts(original: Callable[[Any], None]) -> Callable[[Any], None]:
    def codegen_input_size_asserts(self: Any) -> None:
        original(self)
        if not _skip_scalar_index_asserts.get():  # a thread outside every block: Inductor's own checks
            return
        pending = getattr(self, "_pending_input_asserts", None)
        if not isinstance(pending, dict):
            return
        for name, buf in self.get_graph_inputs().items():
            if name in pending and _is_0d_int64(buf):
                del pending[name]

    return codegen_input_size_asserts


def _is_0d_int64(buf: Any) -> bool:
    """Whether an Inductor graph input is a 0-d int64 tensor (a symbol or an opaque object is not)."""
    try:
        return buf.get_dtype() == torch.int64 and len(buf.get_size()) == 0
    except (AttributeError, NotImplementedError):
        return False


def custom_graph_pass_base() -> type:
    """Inductor's CustomGraphPass (a pass with a uuid() for its caches; torch 2.13)."""
    return require("torch._inductor.custom_graph_pass", "CustomGraphPass", "the cache-safe joint-graph pass")


def inductor_lowering_api() -> SimpleNamespace:
    """What the lowering of pqt.sample uses: register_lowering, ir (Reduction.create,
    Pointwise.create, make_loader, realize), the virtualized `ops` handler and FloorDiv
    (signatures as in torch 2.13)."""
    need = "the Inductor lowering of pqt.sample"
    return SimpleNamespace(
        register_lowering=require("torch._inductor.lowering", "register_lowering", need),
        ir=importlib.import_module("torch._inductor.ir"),
        Reduction=require("torch._inductor.ir", "Reduction", need),
        Pointwise=require("torch._inductor.ir", "Pointwise", need),
        ops=require("torch._inductor.virtualized", "ops", need),
        FloorDiv=floor_div(),
        # ComputedBuffer.force_realize(): a context in which a buffer that reads nothing (an
        # iota) stays realized instead of being inlined back into its readers (torch 2.13-2.15).
        force_realize=require("torch._inductor.ir", "ComputedBuffer", need).force_realize,
    )


def cpu_vector_isa() -> bool:
    """Whether Inductor's C++ backend has a vector ISA on this machine (pick_vec_isa, torch 2.13)."""
    return bool(require("torch._inductor.cpu_vec_isa", "pick_vec_isa", "int32 words where the C++ backend vectorises")())


def mark_prologue_candidate(value: Any) -> bool:
    """Realise an Inductor IR value and list its operation as Inductor's own `invoke_quant`
    lowering does for its outputs (torch 2.13: lowering.py `invoke_quant_tracer` adds to
    `V.graph.invoke_quant_ops`). The scheduler then skips, for that operation only, its
    heuristics that refuse a GEMM-template prologue before timing it
    (`Scheduler.check_prologue_fusion_heuristics_fusable`: bytes read <= 1.1 x bytes written,
    no fp32 math inside a bf16 template); a block-scaled sample fails both. Inductor's legality
    checks still apply, and with several template choices it still times the fused kernel
    against the separate one (`benchmark_epilogue_fusion`).

    Returns False, having only realised the value, where this torch has no such set: the
    sample then stays a separate kernel (same values, no prologue).
    """
    value.realize()
    graph = getattr(require("torch._inductor.virtualized", "V", "the sample as a GEMM-template prologue"), "graph", None)
    listed = getattr(graph, "invoke_quant_ops", None)
    if listed is None:
        return False
    listed.add(value.get_operation_name())
    return True


def floor_div() -> Any:
    """torch's sympy FloorDiv (block indices of dynamic shapes; torch 2.13)."""
    return require("torch.utils._sympy.functions", "FloorDiv", "block indices in the Inductor lowering")


def mode_options(mode: str) -> dict:
    """The Inductor options of torch.compile's `mode` (torch 2.13: torch._inductor.list_mode_options)."""
    return dict(require("torch._inductor", "list_mode_options", "mode= with pqt_compile.compile")(mode))


def trace_artifact(name: str, payload: Callable[[], str]) -> None:
    """A structured-trace artifact (free unless TORCH_TRACE is set; tlparse shows it)."""
    require("torch._logging", "trace_structured", "pass graphs in TORCH_TRACE")(
        "artifact", metadata_fn=lambda: {"name": name, "encoding": "string"}, payload_fn=payload
    )


def has_triton() -> bool:
    """Whether Triton can run here (torch.utils._triton.has_triton, torch 2.13)."""
    try:
        return bool(require("torch.utils._triton", "has_triton", "the Triton kernel of the eager op")())
    except CompatError:
        return False


@contextlib.contextmanager
def capture_output_code() -> Iterator[list[str]]:
    """Collect the source of every module Inductor writes inside the block.

    Replaces `GraphLowering.save_output_code` (a hook Inductor calls with each module's source,
    torch 2.13) for the block. Not `torch._inductor.utils.run_and_get_code`: that one calls
    `torch._dynamo.reset()` first, which would drop every other compiled model's code.
    """
    lowering = require("torch._inductor.graph", "GraphLowering", "explain (the output code)")
    codes: list[str] = []
    had = "save_output_code" in lowering.__dict__
    previous = lowering.__dict__.get("save_output_code")
    lowering.save_output_code = staticmethod(codes.append)
    try:
        yield codes
    finally:
        if had:
            lowering.save_output_code = previous
        else:
            del lowering.save_output_code
