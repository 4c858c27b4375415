"""The Triton sample kernel against the eager formula, bit for bit (TRITON_INTERPRET=1 on CPU)."""

import os

import pytest
import torch

triton = pytest.importorskip("triton")

from pqt_compile import PQTConfig  # noqa: E402
from pqt_compile.op import sample_eager  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("Triton kernels run on CPU only under TRITON_INTERPRET=1 (set by conftest.py)", allow_module_level=True)

from pqt_compile.kernels.sample import sample_triton  # noqa: E402

pytestmark = pytest.mark.private_api  # exercises private torch/Triton APIs: CI reruns it on the newest torch

CASES = [
    ((20, 70), 1, PQTConfig(), torch.float32, torch.float32),
    ((20, 70), 0, PQTConfig(format="int4", block_size=16), torch.float32, torch.float32),
    ((24, 64), 1, PQTConfig(format="fp8_e4m3", noise="uniform", noise_std=0.5), torch.float32, torch.bfloat16),
    ((9, 40), 1, PQTConfig(format="fp4_e2m1", block_size="row"), torch.bfloat16, torch.bfloat16),
    ((9, 40), 0, PQTConfig(format="fp6_e2m3", block_size="tensor"), torch.float16, torch.float16),
    ((1, 1), 1, PQTConfig(format="int8"), torch.float32, torch.float32),
]


@pytest.mark.parametrize("shape,axis,cfg,dtype,out", CASES)
def test_kernel_is_bit_exact(shape, axis, cfg, dtype, out):
    torch.manual_seed(sum(shape))
    w = (torch.randn(shape) * torch.logspace(-3, 1, shape[-1])).to(dtype).to(DEVICE)
    flat = w.view(-1)
    if w.numel() > 40:
        flat[:5] = 0.0
        flat[37] = float("nan")
        flat[w.numel() - 3] = float("inf")
    args = (torch.tensor(-(2**40) + 17), torch.tensor(2**31 + 9), axis, cfg.format, cfg.block_code, cfg.noise, cfg.noise_std, out)
    got = sample_triton(w, args[0].to(DEVICE), args[1].to(DEVICE), *args[2:])
    want = sample_eager(w, *args)
    got, want = got.cpu(), want.cpu()
    bits = torch.int32 if out == torch.float32 else torch.int16
    # Bit for bit, except the payload of a NaN: torch's own fp32 -> bf16 conversion writes NaN
    # as 0x7FC0 in scalar code and 0xFFFF in vectorised code, so no NaN bit pattern is canonical.
    assert torch.equal(got.isnan(), want.isnan())
    keep = ~want.isnan()
    assert torch.equal(got.view(bits)[keep], want.view(bits)[keep])


def test_kernel_reads_strided_weights():
    w = torch.randn(40, 30).t().to(DEVICE)  # non-contiguous [30, 40]
    cfg = PQTConfig()
    args = (torch.tensor(3), torch.tensor(4), 1, cfg.format, cfg.block_code, cfg.noise, cfg.noise_std, torch.float32)
    assert torch.equal(sample_triton(w, *args).cpu(), sample_eager(w.contiguous(), *args).cpu())


NV = PQTConfig(format="nvfp4")


@pytest.mark.parametrize(
    "shape,axis,dtype,out,case",
    [
        ((20, 64), 1, torch.float32, torch.float32, "blocks"),  # blocks across 40 binades: subnormal E4M3 scales
        ((48, 20), 0, torch.bfloat16, torch.bfloat16, "blocks"),
        ((9, 32), 1, torch.float16, torch.float32, "zeros"),
        ((9, 32), 1, torch.float32, torch.float32, "nan"),  # a NaN: the tensor gets no scales
        ((24, 48), 1, torch.float32, torch.bfloat16, "given"),  # a larger whole-weight amax given
    ],
)
def test_nvfp4_kernel_is_bit_exact(shape, axis, dtype, out, case):
    g = torch.Generator().manual_seed(shape[0])
    w = torch.randn(shape, generator=g)
    blocks = torch.pow(2.0, -torch.randint(0, 40, (shape[0], shape[1] // 16 if axis == 1 else 1), generator=g).float())
    w = (w * (blocks.repeat_interleave(16, dim=1) if axis == 1 else blocks)).to(dtype)
    if case == "zeros":
        w[2] = 0.0
        w[3, :16] = -0.0
    if case == "nan":
        w[4, 7] = float("nan")
    amax = w.float().abs().amax() * 1000 if case == "given" else None
    args = (torch.tensor(-(2**40) + 17), torch.tensor(2**31 + 9), axis, NV.format, NV.block_code, NV.noise, NV.noise_std, out)
    got = sample_triton(w.to(DEVICE), args[0].to(DEVICE), args[1].to(DEVICE), *args[2:],
                        tensor_amax=None if amax is None else amax.to(DEVICE)).cpu()
    want = sample_eager(w, *args, None, 0, amax)
    bits = torch.int32 if out == torch.float32 else torch.int16
    assert torch.equal(got.isnan(), want.isnan())
    keep = ~want.isnan()
    assert torch.equal(got.view(bits)[keep], want.view(bits)[keep])
    assert (want.float().nan_to_num() != w.float().nan_to_num()).any() == (case != "nan")  # samples were compared (none for a NaN tensor)
