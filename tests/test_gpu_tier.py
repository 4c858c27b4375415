"""The GPU tier: the equivalence tests on CUDA. `python -m pytest -m gpu` runs these alone.

Skipped without a CUDA device, so CPU-only CI runs none of them (they are collected and
reported as skipped). What runs on one GPU:
1. the sample on CUDA (the Triton kernel behind the eager op) against the CPU op, bit for bit;
2. the compiled sample (Inductor's Triton code from the lowering) against the CPU op, bit for bit;
3. the trace the reference replays holds the ops a real call dispatches on CUDA, under each SDPA
   kernel (the variant of SDPA's efficient and cuDNN kernels depends on grad mode: issue 25);
4. the reference against the independent computation (tests/support/independent.py), HF GPT-2
   and Llama, eager attention, SDPA under each of its kernels, flex attention where present,
   fp32 and bf16 autocast;
5. a compiled training step against the reference, the same models: one compile per model and
   dtype (default SDPA), compared with the reference under each SDPA kernel;
6. the sample inside Inductor's GEMM template (its prologue) under max-autotune, one template
   configuration: the template's sample is the eager op's, bit for bit.

Imports only what the GPU machine has (torch, triton, transformers, numpy, pytest); nothing
here downloads. Tolerances: fp32 FP32_REL_TOL (conftest NOTE [tolerance]); bf16 the bound of
pqt_compile.check (tools/check.py NOTE [check bounds]: 2^-5, 8 bf16 units), gradients judged
with its floor (NOTE [gradient floor]); a draw at another seed must land outside them.

PQT_GPU_TIER_DEVICE=cpu runs the tier's code on the CPU (a dry run of the tests themselves;
items 1, 2 and 6 then compare the CPU with itself or are skipped): how this file was checked
on a machine without a GPU.
"""

from __future__ import annotations

import os
from contextlib import nullcontext

import pytest
import torch

import pqt_compile
from conftest import FP32_REL_TOL, max_rel_err
from pqt_compile import PQTConfig, key_for_name
from pqt_compile.tools.check import BOUNDS, GRAD_FLOOR

DEVICE = os.environ.get("PQT_GPU_TIER_DEVICE", "cuda")
DRY_RUN = DEVICE == "cpu"

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.private_api,
    pytest.mark.skipif(not DRY_RUN and not torch.cuda.is_available(), reason="needs a CUDA device"),
]

BF16_BOUND = BOUNDS[torch.bfloat16]


def _bits(t: torch.Tensor) -> torch.Tensor:
    t = t.detach().cpu().contiguous()
    return t.view(torch.int32 if t.dtype == torch.float32 else torch.int16)


def _assert_same_bits(got: torch.Tensor, want: torch.Tensor) -> None:
    # Bit for bit except a NaN's payload (no NaN bit pattern is canonical across kernels).
    got, want = got.detach().cpu(), want.detach().cpu()
    assert got.dtype == want.dtype and got.shape == want.shape
    assert torch.equal(got.isnan(), want.isnan())
    keep = ~want.isnan()
    assert torch.equal(_bits(got)[keep], _bits(want)[keep])


# ---- 1. the eager sample on CUDA against the CPU op ------------------------------------------

# nvfp4 takes whole blocks of 16 only (its shapes: multiples of 16 on both axes); the others a
# ragged last block too.
SAMPLE_CASES = [(fmt, axis, src, out, shape)
                for fmt in ("fp4_e2m1", "fp6_e3m2", "fp8_e4m3", "int4", "nvfp4")
                for axis in (0, 1)
                for src, out in ((torch.float32, torch.float32), (torch.float32, torch.bfloat16),
                                 (torch.bfloat16, torch.bfloat16))
                for shape in (((1008, 784) if fmt == "nvfp4" else (1000, 777)), (256, 4096))]


@pytest.mark.parametrize("fmt,axis,src,out,shape", SAMPLE_CASES)
def test_the_sample_on_the_device_is_the_cpu_op(fmt, axis, src, out, shape):
    g = torch.Generator().manual_seed(sum(shape) + axis)
    w = (torch.randn(shape, generator=g) * torch.logspace(-3, 1, shape[-1])).to(src)
    w.view(-1)[:40] = 0.0  # an all-zero block
    cfg = PQTConfig(format=fmt)
    want = pqt_compile.sample(w, seed=2**40 + 3, key=key_for_name("w"), axis=axis, config=cfg, out_dtype=out)
    got = pqt_compile.sample(w.to(DEVICE), seed=2**40 + 3, key=key_for_name("w"), axis=axis, config=cfg, out_dtype=out)
    _assert_same_bits(got, want)


# ---- 2. the compiled sample on CUDA against the CPU op ---------------------------------------

class _XW(torch.nn.Module):
    def __init__(self, k: int, n: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(k, n) / k**0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight


# nvfp4 divides (its block scale): on torch 2.11 the backend makes Triton's division IEEE (compat NOTE
# [division on torch 2.11]).
@pytest.mark.parametrize("fmt,kind,mode", [("fp4_e2m1", "linear", "fp32"), ("int4", "x@W", "fp32"),
                                           ("fp6_e3m2", "linear", "autocast"), ("fp8_e4m3", "x@W", "bf16"),
                                           ("nvfp4", "linear", "autocast")])
def test_the_compiled_sample_on_the_device_is_the_cpu_op(fmt, kind, mode):
    """x = I: the output is the sample itself (a product with 1 and sums of zeros are exact)."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    k, n = 96, 40
    m = torch.nn.Linear(k, n, bias=False) if kind == "linear" else _XW(k, n)
    axis = 1 if kind == "linear" else 0
    dtype = torch.bfloat16 if mode == "bf16" else torch.float32
    gemm = torch.float32 if mode == "fp32" else torch.bfloat16
    m = m.to(dtype).to(DEVICE)
    cfg = PQTConfig(format=fmt)
    cm = pqt_compile.compile(m, cfg)
    x = torch.eye(k, dtype=dtype, device=DEVICE)
    amp = torch.autocast(DEVICE, dtype=torch.bfloat16) if mode == "autocast" else nullcontext()
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # TF32 would round the fp32 sample
    try:
        with pqt_compile.fixed_seed(11), amp:
            y = cm(x)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
    w = m.weight.detach().cpu()
    want = pqt_compile.sample(w, seed=11, key=key_for_name("weight"), axis=axis, config=cfg, out_dtype=gemm)
    _assert_same_bits(y.t() if kind == "linear" else y, want)
    torch._dynamo.reset()


# ---- 3-5. the reference and the compiled step, HF models, every attention ---------------------

def _sdpa_backends() -> dict:
    from torch.nn.attention import SDPBackend

    names = ("MATH", "FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION")
    return {"default": None, **{n.lower(): getattr(SDPBackend, n) for n in names if hasattr(SDPBackend, n)}}


def _kernel(backend):
    from torch.nn.attention import sdpa_kernel

    return sdpa_kernel(backend) if backend is not None else nullcontext()


def _no_kernel(e: BaseException) -> bool:
    """SDPA refusing the forced kernel for these inputs (fp32 flash or cuDNN, or an old GPU)."""
    return isinstance(e, RuntimeError) and ("No available kernel" in str(e) or "No viable backend" in str(e))


@pytest.mark.parametrize("backend", list(_sdpa_backends()))
@pytest.mark.parametrize("amp", ["fp32", "bf16"])
def test_the_trace_holds_the_ops_the_real_call_runs_on_the_device(backend, amp):
    """Under each SDPA kernel, op for op with every non-tensor argument (compute_log_sumexp
    included) the traced graph is what a real call dispatches."""
    from models import TinyGPT
    from support.independent import dispatched_ops, graph_ops

    torch.manual_seed(0)
    m = TinyGPT().to(DEVICE)
    idx = torch.randint(0, 64, (2, 16), device=DEVICE)
    ctx = torch.autocast(DEVICE, dtype=torch.bfloat16) if amp == "bf16" else nullcontext()
    with _kernel(_sdpa_backends()[backend]), ctx:
        try:
            real = dispatched_ops(m, idx)
        except RuntimeError as e:
            if _no_kernel(e):
                pytest.skip(f"SDPA has no {backend} kernel for these inputs here")
            raise
        traced = graph_ops(pqt_compile.reference.trace(m, idx))
    assert traced == real


def _attention_impls() -> list[str]:
    impls = ["eager", *(f"sdpa-{b}" for b in _sdpa_backends())]
    try:
        import torch.nn.attention.flex_attention  # noqa: F401

        impls.append("flex_attention")
    except ImportError:
        pass
    return impls


def _model(name: str, impl: str) -> torch.nn.Module:
    from support.hf_zoo import ZOO

    return ZOO[name](impl.split("-")[0]).to(DEVICE).train()


def _step(fn, m, args, kwargs, amp: str, backend=None):
    """(output, grads) of one forward and backward against a seeded random cotangent."""
    ctx = torch.autocast(DEVICE, dtype=torch.bfloat16) if amp == "bf16" else nullcontext()
    with _kernel(backend), ctx:
        out = fn(m, *args, **kwargs)
        out = out.logits if hasattr(out, "logits") else out
        cot = torch.randn(out.shape, generator=torch.Generator().manual_seed(0)).to(out)
        out.backward(cot)
    grads = {n: p.grad.detach().clone() for n, p in m.named_parameters() if p.grad is not None}
    m.zero_grad(set_to_none=True)
    return out.detach(), grads


def _worst(got: dict, want: dict) -> float:
    """Max relative gradient error, each judged against max(its scale, GRAD_FLOOR x the largest)."""
    largest = max(float(g.abs().max()) for g in want.values())
    floor = GRAD_FLOOR * largest
    return max(float((got[n].double() - want[n].double()).abs().max()) / max(float(want[n].abs().max()), floor)
               for n in want)


def _tol(amp: str) -> float:
    return FP32_REL_TOL if amp == "fp32" else BF16_BOUND


def _ref(seed):
    return lambda m, *a, **k: pqt_compile.reference.run(m, *a, seed=seed, **k)


@pytest.mark.third_party
@pytest.mark.parametrize("amp", ["fp32", "bf16"])
@pytest.mark.parametrize("impl", _attention_impls())
@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_the_reference_is_the_eager_autograd_with_sampled_weights_on_the_device(name, impl, amp):
    from support import independent
    from support.hf_zoo import KWARGS, inputs

    if DRY_RUN and impl == "flex_attention":
        pytest.skip("flex attention has no backward on the CPU")
    try:
        m = _model(name, impl)
    except ValueError as e:  # an architecture without flex attention in this transformers
        pytest.skip(str(e).splitlines()[0])
    args = tuple(x.to(DEVICE) for x in inputs(name))
    backend = _sdpa_backends().get(impl.split("-", 1)[1]) if impl.startswith("sdpa-") else None
    try:
        ref, g_ref = _step(_ref(5), m, args, KWARGS[name], amp, backend)
    except RuntimeError as e:
        if _no_kernel(e):
            pytest.skip(f"SDPA has no {impl} kernel for these inputs here")
        raise
    ind, g_ind = _step(lambda m, *a, **k: independent.run(m, *a, seed=5, **k), m, args, KWARGS[name], amp, backend)
    other, g_other = _step(_ref(6), m, args, KWARGS[name], amp, backend)
    assert max_rel_err(ind, ref) <= _tol(amp)
    assert g_ref.keys() == g_ind.keys()
    assert _worst(g_ind, g_ref) <= _tol(amp)  # gradient bugs of the replay show here (issue 25: 10^4x)
    assert max_rel_err(other, ref) > 3 * _tol(amp) and _worst(g_other, g_ref) > 3 * _tol(amp)


@pytest.fixture(scope="module", params=[(n, a) for n in ("gpt2", "llama") for a in ("fp32", "bf16")],
                ids=lambda p: f"{p[0]}-{p[1]}")
def compiled_step(request):
    """One compiled training step per model and dtype (default SDPA)."""
    from support.hf_zoo import KWARGS, inputs

    name, amp = request.param
    torch._dynamo.reset()
    m = _model(name, "sdpa")
    args = tuple(x.to(DEVICE) for x in inputs(name))
    cm = torch.compile(m, backend="pqt")

    def compiled(mod, *a, **k):
        with pqt_compile.fixed_seed(5):
            return cm(*a, **k)

    out, grads = _step(compiled, m, args, KWARGS[name], amp)
    yield name, amp, m, args, out, grads
    torch._dynamo.reset()


@pytest.mark.third_party
@pytest.mark.parametrize("backend", list(_sdpa_backends()))
def test_the_compiled_step_matches_the_reference_under_every_sdpa_kernel(compiled_step, backend):
    from support.hf_zoo import KWARGS

    name, amp, m, args, out, grads = compiled_step
    try:
        ref, g_ref = _step(_ref(5), m, args, KWARGS[name], amp, _sdpa_backends()[backend])
    except RuntimeError as e:
        if _no_kernel(e):
            pytest.skip(f"SDPA has no {backend} kernel for these inputs here")
        raise
    assert max_rel_err(out, ref) <= _tol(amp)
    assert grads.keys() == g_ref.keys()
    assert _worst(grads, g_ref) <= _tol(amp)


# ---- 6. the sample inside the GEMM template --------------------------------------------------

@pytest.mark.parametrize("kind,mode", [("linear", "bf16"), ("x@W", "fp32")])
def test_the_sample_runs_in_the_gemm_template_on_the_device(kind, mode):
    """mode="max-autotune", Triton templates only, one configuration (nothing timed: the prologue
    is Inductor's legality checks alone). Identity rows of x give w_hat^T exactly; one-hot rows of
    the output gradient give rows of w_hat in x.grad; only the template computes the sample."""
    if DRY_RUN:
        pytest.skip("the CPU route of this test is tests/compiler/test_prologue_route1.py")
    from support.triton_cpu import fallback_calls, kernels_computing_sample

    torch._dynamo.reset()
    torch.manual_seed(0)
    k, n, extra = 64, 48, 8
    m = torch.nn.Linear(k, n, bias=False) if kind == "linear" else _XW(k, n)
    axis = 1 if kind == "linear" else 0
    dtype = torch.bfloat16 if mode == "bf16" else torch.float32
    m = m.to(dtype).to(DEVICE)
    cfg = PQTConfig()
    g = torch.Generator().manual_seed(1)
    x = torch.cat([torch.eye(k), torch.randn(extra, k, generator=g)]).to(dtype).to(DEVICE).requires_grad_(True)
    grad = torch.zeros(k + extra, n, dtype=dtype)
    grad[torch.arange(k), torch.arange(k) % n] = 1
    grad[k:] = torch.randn(extra, n, generator=g).to(dtype)
    grad = grad.to(DEVICE)
    options = {"max_autotune_gemm_backends": "TRITON", "test_configs.max_mm_configs": 1}
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with pqt_compile.compat.capture_output_code() as codes:
            cm = pqt_compile.compile(m, cfg, mode="max-autotune", options=options)
            with pqt_compile.fixed_seed(7):
                y = cm(x)
            y.backward(grad)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
    for code in codes:
        assert fallback_calls(code) == 0
        holders = kernels_computing_sample(code)
        assert len(holders) == 1 and holders[0].startswith("triton_tem"), holders
    w_hat = pqt_compile.sample(m.weight.detach().cpu(), seed=7, key=key_for_name("weight"), axis=axis, config=cfg)
    w_eff = w_hat.t() if axis == 1 else w_hat  # [K, N]
    _assert_same_bits(y[:k], w_eff)
    _assert_same_bits(x.grad[:k], w_eff.t()[torch.arange(k) % n])
    torch._dynamo.reset()
