"""The GEMM with the sample in its prologue (Triton; TRITON_INTERPRET=1 on CPU)."""

import os

import pytest
import torch

pytest.importorskip("triton")

import pqt_compile  # noqa: E402
from pqt_compile import PQTConfig, sample  # noqa: E402

pytestmark = pytest.mark.private_api  # exercises private torch/Triton APIs: CI reruns it on the newest torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("Triton kernels run on CPU only under TRITON_INTERPRET=1 (set by conftest.py)", allow_module_level=True)


@pytest.mark.parametrize("cfg", [PQTConfig(), PQTConfig(format="int4", block_size=16), PQTConfig(format="fp4_e2m1", block_size="row"),
                                 PQTConfig(format="fp8_e4m3", block_size="tensor", noise="uniform")])
def test_prologue_sample_is_bit_exact(cfg):
    """With x = I, y = w_hat^T exactly: the prologue's sample is the eager formula's."""
    torch.manual_seed(0)
    w = (torch.randn(24, 70) * torch.logspace(-2, 1, 70)).to(DEVICE)  # K = 70: ragged last block
    x = torch.eye(70, device=DEVICE)
    y = pqt_compile.linear(x, w, seed=11, key=5, config=cfg)
    want = sample(w, seed=11, key=5, axis=1, config=cfg)
    assert torch.equal(y.t().cpu(), want.cpu())


def test_bf16_prologue_sample_is_bit_exact():
    torch.manual_seed(3)
    w = (torch.randn(24, 64) * 0.1).to(DEVICE)
    x = torch.eye(64, device=DEVICE, dtype=torch.bfloat16)  # an identity: y^T is the bf16 sample, exactly
    y = pqt_compile.linear(x, w, seed=6, key=7, config=PQTConfig(format="fp4_e2m1"))
    want = sample(w, seed=6, key=7, axis=1, config=PQTConfig(format="fp4_e2m1"), out_dtype=torch.bfloat16)
    assert torch.equal(y.t().cpu().view(torch.int16), want.cpu().view(torch.int16))


def test_bias_batch_dims_and_bf16():
    torch.manual_seed(1)
    w = (torch.randn(40, 64) * 0.1).to(DEVICE)
    b = torch.randn(40, device=DEVICE)
    x = torch.randn(2, 3, 64, device=DEVICE)
    cfg = PQTConfig(format="fp6_e3m2")
    y = pqt_compile.linear(x, w, b, seed=2, key=3, config=cfg)
    ref = torch.nn.functional.linear(x, sample(w, seed=2, key=3, axis=1, config=cfg), b)
    assert y.shape == (2, 3, 40) and torch.allclose(y, ref, rtol=1e-5, atol=1e-5)  # fp32 GEMM, K = 64
    xb = x.to(torch.bfloat16)
    yb = pqt_compile.linear(xb, w, b, seed=2, key=3, config=cfg)
    refb = torch.nn.functional.linear(xb.float(), sample(w, seed=2, key=3, axis=1, config=cfg, out_dtype=torch.bfloat16).float(), b)
    # bf16 output: one bf16 rounding of an fp32-accumulated result (2^-8 relative), plus order.
    assert yb.dtype == torch.bfloat16 and torch.allclose(yb.float(), refb, rtol=2**-7, atol=2**-7 * float(refb.abs().max()))


def test_gradients():
    torch.manual_seed(2)
    w = (torch.randn(16, 32) * 0.1).to(DEVICE).requires_grad_()
    x = torch.randn(5, 32, device=DEVICE, requires_grad=True)
    cfg = PQTConfig()
    pqt_compile.linear(x, w, seed=4, key=4, config=cfg).square().sum().backward()
    gx, gw = x.grad.clone(), w.grad.clone()
    x.grad = w.grad = None
    torch.nn.functional.linear(x, sample(w, seed=4, key=4, axis=1, config=cfg)).square().sum().backward()
    assert torch.allclose(gx, x.grad, rtol=1e-5, atol=1e-6) and torch.allclose(gw, w.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("key", [5, -1])
def test_nvfp4_prologue_sample_is_bit_exact(key):
    cfg = PQTConfig(format="nvfp4")
    torch.manual_seed(4)
    w = (torch.randn(24, 64) * torch.logspace(-9, 1, 64)).to(DEVICE)  # blocks 10 decades apart: subnormal E4M3 scales
    x = torch.eye(64, device=DEVICE)
    y = pqt_compile.linear(x, w, seed=11, key=key, config=cfg)
    want = torch.ops.pqt.sample(w, torch.tensor(11), torch.tensor(key), 1, "nvfp4", 16, "gaussian", cfg.noise_std,
                                torch.float32)
    assert torch.equal(y.t().cpu().view(torch.int32), want.cpu().view(torch.int32))
    assert torch.equal(want, w) == (key < 0)
