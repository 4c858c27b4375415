"""The sample inside Inductor's GEMM template (its prologue), on route 1 (Triton interpreter).

Under mode="max-autotune", with one template configuration (so that no timing decides,
tests/support/triton_cpu.py), every GEMM that reads a weight computes the weight's sample in
the `triton_tem_*` kernel itself: nn.Linear, F.linear, x @ W and HF Conv1D, the forward GEMM
and the backward's grad-input GEMM, in fp32, under bf16 autocast and with bf16 weights. The
block amax stays a separate reduction kernel, and no other kernel runs the generator.

One training step per case, M = K + 8 rows: the first K rows of x are the identity, so those
output rows are w_hat^T (+ bias) exactly, and the first rows of the gradient are one-hot, so
those rows of x.grad are rows of w_hat exactly: both compared bit for bit with
pqt_compile.sample (the sample computed inside the template is the eager op's, in either
dtype). The other 8 rows are random and compared with reference.run (eager GEMMs):
- fp32: within FP32_REL_TOL (conftest NOTE [tolerance]: summation order only, 1000x below
  the noise);
- bf16 outputs: each element within one bf16 ulp of the reference's. Both round an fp32 sum
  to bf16 once; the template and the eager GEMM add the K products in different orders, so
  where a sum lies next to a bf16 rounding boundary the two roundings may differ by one ulp.
  A wrong sample moves outputs by the format's step (~2^-3 relative for fp6_e3m2), 30x more.

Each case costs a max-autotune compile of a forward and a backward graph and an interpreted
run: the default run keeps two cases that between them cover both layouts (pqt.sample_t and
the plain sample) in both graphs, both GEMM dtypes and addmm and mm; the rest are marked
`slow` (run them with `pytest --run-slow`, README "Tests").
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import pqt_compile
from conftest import FP32_REL_TOL, max_rel_err
from pqt_compile import PQTConfig, key_for_name
from support.triton_cpu import fallback_calls, inductor_triton_on_cpu, kernels_computing_sample, unavailable

pytestmark = [
    pytest.mark.private_api,  # exercises private torch/Triton APIs: CI reruns it on the newest torch
    pytest.mark.skipif(unavailable() is not None, reason=str(unavailable())),
]

K, N, EXTRA = 40, 24, 8  # K ragged for B = 32
CFG = PQTConfig()  # fp6_e3m2, B = 32
SEED = 7
FAST = {("nn.Linear", "bf16"), ("Conv1D", "fp32")}
KINDS = ["nn.Linear", "F.linear", "x@W", "Conv1D"]
MODES = ["fp32", "autocast", "bf16"]


class FLinear(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(N, K) / K**0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


class XW(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(K, N) / K**0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight


def make(kind: str) -> tuple[torch.nn.Module, int]:
    """(module, the sampled axis of its `weight`)."""
    torch.manual_seed(0)
    if kind == "nn.Linear":
        return torch.nn.Linear(K, N), 1
    if kind == "F.linear":
        return FLinear(), 1
    if kind == "x@W":
        return XW(), 0
    from transformers.pytorch_utils import Conv1D

    m = Conv1D(N, K)  # weight [K, N]
    torch.nn.init.normal_(m.weight, std=K**-0.5)
    torch.nn.init.normal_(m.bias, std=0.1)
    return m, 0


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().view(torch.int32 if t.dtype == torch.float32 else torch.int16)


def _within_one_bf16_ulp(got: torch.Tensor, want: torch.Tensor) -> bool:
    _, exp = torch.frexp(want.float())
    ulp = torch.ldexp(torch.ones_like(want.float()), exp - 8)  # bf16 keeps 8 significant bits
    return bool(((got.float() - want.float()).abs() <= ulp).all())


def run_case(kind: str, mode: str) -> dict:
    """Compile one module under max-autotune on route 1, take one training step, and return
    what the checks need."""
    m, axis = make(kind)
    dtype = torch.bfloat16 if mode == "bf16" else torch.float32
    m = m.to(dtype)
    gemm_dtype = torch.float32 if mode == "fp32" else torch.bfloat16
    M = K + EXTRA
    g = torch.Generator().manual_seed(1)
    x = torch.cat([torch.eye(K), torch.randn(EXTRA, K, generator=g)]).to(dtype)
    grad = torch.zeros(M, N, dtype=dtype)
    grad[torch.arange(K), torch.arange(K) % N] = 1  # row m < K: one-hot at m % N
    grad[K:] = torch.randn(EXTRA, N, generator=g).to(dtype)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=(mode == "autocast"))

    torch._dynamo.reset()
    codes: list[str] = []
    with inductor_triton_on_cpu(templates=True), pqt_compile.compat.capture_output_code() as codes:
        cm = pqt_compile.compile(m, CFG, mode="max-autotune")
        xc = x.clone().requires_grad_(True)
        with pqt_compile.fixed_seed(SEED), autocast:
            y = cm(xc)
        y.backward(grad)
    xr = x.clone().requires_grad_(True)
    with autocast:
        y_ref = pqt_compile.reference.run(m, xr, seed=SEED, config=CFG)
    y_ref.backward(grad)
    w = m.weight.detach()
    w_hat = pqt_compile.sample(w, seed=SEED, key=key_for_name("weight"), axis=axis, config=CFG, out_dtype=gemm_dtype)
    w_eff = w_hat.t() if axis == 1 else w_hat  # the GEMM's B operand, [K, N]
    return {"codes": codes, "y": y.detach(), "y_ref": y_ref.detach(), "dx": xc.grad, "dx_ref": xr.grad,
            "w_eff": w_eff, "bias": getattr(m, "bias", None), "gemm_dtype": gemm_dtype, "M": M}


def check_case(r: dict) -> None:
    codes = r["codes"]
    assert len(codes) == 2, "one forward and one backward graph"
    for code in codes:
        assert fallback_calls(code) == 0
        holders = kernels_computing_sample(code)
        assert len(holders) == 1 and holders[0].startswith("triton_tem"), holders  # only the template samples
    w_eff, gd = r["w_eff"], r["gemm_dtype"]
    # identity rows: y[:K] = w_hat^T (+ bias, added once in fp32 and rounded once)
    y_top = r["y"][:K]
    want = w_eff.float() if r["bias"] is None else w_eff.float() + r["bias"].detach().to(gd).float()
    assert torch.equal(_bits(y_top.to(gd)), _bits(want.to(gd))), "forward: the template's sample differs from the eager op"
    # one-hot rows of the gradient: x.grad[m] = row (m % N) of w_hat  (= column of w_eff)
    dx_top = r["dx"][:K]
    want = w_eff.t()[torch.arange(K) % N]
    assert torch.equal(_bits(dx_top.to(gd)), _bits(want.to(gd))), "grad input: the template's sample differs"
    # random rows against the eager reference
    for got, ref in ((r["y"], r["y_ref"]), (r["dx"], r["dx_ref"])):
        if got.dtype == torch.float32 and gd == torch.float32:
            assert max_rel_err(got, ref) < FP32_REL_TOL
        else:
            assert _within_one_bf16_ulp(got, ref)


CASES = [pytest.param(kind, mode, marks=() if (kind, mode) in FAST else pytest.mark.slow)
         for kind in KINDS for mode in MODES]


@pytest.mark.parametrize("kind,mode", CASES)
def test_the_sample_runs_in_the_gemm_template(kind, mode):
    check_case(run_case(kind, mode))
