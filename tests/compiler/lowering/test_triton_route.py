"""Route 1: the Triton kernels Inductor generates for pqt.sample, run by the Triton interpreter.

Every case of test_sample_lowering.py (ragged K, blocks 8/16/32/row/tensor, axis 0 and 1,
fp32/fp16/bf16 weights and out dtypes), a negative key, a non-contiguous weight and one more
ragged case on axis 0, compiled together in ONE graph (one compile: the CI budget) with
cpu_backend="triton" (tests/support/triton_cpu.py). Each output is compared with the eager op
bit for bit (a bf16 NaN by NaN-ness: torch itself writes 0x7FC0 or 0xFFFF depending on
vectorisation). The generated code runs the GPU's code paths: Triton kernels only, no
fallback to the eager op, the generator in uint32 words, and the GPU's block index (the C++
backend's NOTE [ragged split] workaround, an indirect load, is keyed on the C++ backend).
"""

from __future__ import annotations

import re

import pytest
import torch
from torch._inductor.utils import run_and_get_code

import pqt_compile.compiler.lowering  # noqa: F401  (registers the lowering)
from pqt_compile import PQTConfig
from support.triton_cpu import fallback_calls, inductor_triton_on_cpu, kernel_sources, kernels_computing_sample, unavailable
from test_sample_lowering import CASES

pytestmark = [
    pytest.mark.private_api,  # exercises private torch/Triton APIs: CI reruns it on the newest torch
    pytest.mark.skipif(unavailable() is not None, reason=str(unavailable())),
]

# Beyond test_sample_lowering's cases: a ragged last block on axis 0, fp16 weight to bf16.
EXTRA = [((70, 24), 0, PQTConfig(format="fp6_e3m2", block_size=32), torch.float16, torch.bfloat16)]
ALL = CASES + EXTRA
SEED, KEY = torch.tensor(-(2**40) + 3), torch.tensor(2**31 + 5)


def _weight(shape, dtype):
    torch.manual_seed(sum(shape))
    w = (torch.randn(shape) * torch.logspace(-4, 1, shape[-1])).to(dtype)
    if w.numel() > 40:
        w.view(-1)[:7] = 0.0
        w.view(-1)[40] = float("nan")  # one NaN block stays put
    return w


def _sample(w, key, axis, cfg, out):
    return torch.ops.pqt.sample.default(w, SEED, key, axis, cfg.format, cfg.block_code, cfg.op_noise, cfg.op_noise_std, out)


FP4, DEFAULT = PQTConfig(format="fp4_e2m1"), PQTConfig()


#: A rowwise shard: columns 64..127 of a [12, 128] weight (sharding.py NOTE [global index]).
SHARD_STRIDES, SHARD_OFFSET = [128, 1], 64


#: NVFP4 on the Triton route: the one-kernel form (whole blocks) with the tensor amax as the op's
#: input, as the pass gives it, and round to nearest.
NVFP4 = PQTConfig(format="nvfp4")


def _all_samples(ws, neg_w, strided_w, shard_w, nv_w, nv_amax, seed, key, neg_key):
    outs = [torch.ops.pqt.sample.default(w, seed, key, axis, cfg.format, cfg.block_code, cfg.op_noise, cfg.op_noise_std, out)
            for w, (_, axis, cfg, _, out) in zip(ws, ALL)]
    outs.append(torch.ops.pqt.sample.default(neg_w, seed, neg_key, 1, FP4.format, FP4.block_code, FP4.op_noise,
                                             FP4.op_noise_std, torch.bfloat16))
    outs.append(torch.ops.pqt.sample.default(strided_w, seed, key, 1, DEFAULT.format, DEFAULT.block_code,
                                             DEFAULT.op_noise, DEFAULT.op_noise_std, torch.float32))
    outs.append(torch.ops.pqt.sample.default(shard_w, seed, key, 1, FP4.format, FP4.block_code, FP4.op_noise,
                                             FP4.op_noise_std, torch.float32, SHARD_STRIDES, SHARD_OFFSET))
    for noise, axis in (("gaussian", 1), ("rtn", 0)):
        outs.append(torch.ops.pqt.sample.default(nv_w, seed, key, axis, NVFP4.format, NVFP4.block_code, noise,
                                                 NVFP4.op_noise_std, torch.bfloat16, None, 0, nv_amax))
    return outs


@pytest.fixture(scope="module")
def compiled():
    """All cases in one compiled graph: (outputs, output code, inputs)."""
    ws = [_weight(shape, dtype) for shape, _, _, dtype, _ in ALL]
    neg_w = torch.randn(16, 70)
    strided_w = torch.randn(40, 48).t()  # [48, 40], column-major
    shard_w = torch.randn(12, 128)[:, 64:].contiguous()
    nv_w = torch.randn(32, 48) * torch.logspace(-3, 1, 48)
    nv_amax = nv_w.abs().amax().reshape(1)
    args = (ws, neg_w, strided_w, shard_w, nv_w, nv_amax, SEED, KEY, torch.tensor(-1))
    torch._dynamo.reset()
    with inductor_triton_on_cpu():
        outs, codes = run_and_get_code(torch.compile(_all_samples, dynamic=False), *args)
    return outs, "\n".join(codes), args


def _same_bits(got: torch.Tensor, want: torch.Tensor) -> bool:
    assert got.dtype == want.dtype and got.shape == want.shape
    nan = torch.isnan(want)
    assert torch.equal(torch.isnan(got), nan)
    bits = torch.int32 if want.dtype == torch.float32 else torch.int16
    return torch.equal(got[~nan].view(bits), want[~nan].view(bits))


@pytest.mark.parametrize("i", range(len(ALL)), ids=[f"{s}-ax{a}-{c.format}-{c.block_size}-{d}-{o}".replace("torch.", "")
                                                    for s, a, c, d, o in ALL])
def test_triton_kernel_is_bit_exact(compiled, i):
    outs, _, (ws, *_rest) = compiled
    shape, axis, cfg, dtype, out = ALL[i]
    assert _same_bits(outs[i], _sample(ws[i], KEY, axis, cfg, out))


def test_a_negative_key_passes_the_weight_through(compiled):
    outs, _, (_, neg_w, *_rest) = compiled
    assert torch.equal(outs[len(ALL)], neg_w.to(torch.bfloat16))


def test_a_noncontiguous_weight_draws_by_logical_index(compiled):
    outs, _, (_, _, strided_w, *_rest) = compiled
    assert torch.equal(outs[len(ALL) + 1], _sample(strided_w.contiguous(), KEY, 1, DEFAULT, torch.float32))


def test_a_shard_draws_the_full_weights_indices(compiled):
    outs, _, (_, _, _, shard_w, *_rest) = compiled
    full = torch.cat([torch.randn(12, 64), shard_w], dim=1)  # any left half: blocks never cross column 64
    want = _sample(full, KEY, 1, FP4, torch.float32)[:, 64:]
    assert torch.equal(outs[len(ALL) + 2].view(torch.int32), want.contiguous().view(torch.int32))


def test_nvfp4_is_bit_exact(compiled):
    outs, _, (_, _, _, _, nv_w, nv_amax, *_rest) = compiled
    for out, (noise, axis) in zip(outs[len(ALL) + 3:], (("gaussian", 1), ("rtn", 0))):
        want = torch.ops.pqt.sample.default(nv_w, SEED, KEY, axis, NVFP4.format, NVFP4.block_code, noise,
                                            NVFP4.op_noise_std, torch.bfloat16, None, 0, nv_amax)
        assert torch.equal(out.view(torch.int16), want.view(torch.int16)), noise


def test_nvfp4_on_a_torch_without_div_rn_divides_exactly_or_is_refused(monkeypatch):
    """torch 2.11 (the GPU machine's) has no ops.div_rn (compat NOTE [division on torch 2.11]),
    emulated here: the lowering refuses Triton code that would divide approximately, and under the
    patch the backend applies the kernel divides with div_rn and gives the eager op's bits."""
    import pqt_compile.compat.inductor as compat_inductor

    monkeypatch.setattr(compat_inductor, "_has_div_rn", lambda: False)
    assert compat_inductor.ieee_division_patches() == {"eager_numerics.division_rounding": True}
    w = torch.randn(8, 32) * torch.logspace(-3, 1, 32)
    amax = w.abs().amax().reshape(1)

    def f(w, seed, key, amax):
        return torch.ops.pqt.sample.default(w, seed, key, 1, NVFP4.format, NVFP4.block_code, "gaussian",
                                            NVFP4.op_noise_std, torch.float32, None, 0, amax)

    torch._dynamo.reset()
    with inductor_triton_on_cpu(), torch._inductor.config.patch({"eager_numerics.division_rounding": False}):
        with pytest.raises(Exception, match="div_rn.*division_rounding"):
            torch.compile(f, dynamic=False)(w, SEED, KEY, amax)
    torch._dynamo.reset()
    with inductor_triton_on_cpu(), torch._inductor.config.patch(compat_inductor.ieee_division_patches()):
        out, codes = run_and_get_code(torch.compile(f, dynamic=False), w, SEED, KEY, amax)
    assert "div_rn" in "\n".join(kernel_sources("\n".join(codes)).values())
    assert torch.equal(out.view(torch.int32), f(w, SEED, KEY, amax).view(torch.int32))


def test_the_code_is_the_gpu_code(compiled):
    _, code, _ = compiled
    kernels = kernel_sources(code)
    assert fallback_calls(code) == 0, "a sample fell back to the eager op"
    assert "cpp_fused" not in code and kernels
    # every sample's Pointwise runs the generator in a Triton kernel
    assert len(kernels_computing_sample(code)) >= 1
    # the generator's words are uint32 (formula.py NOTE [word types]), in every sample kernel
    body = "\n".join(kernels.values())
    for name in kernels_computing_sample(code):
        assert re.search(r"tl\.full\(\[[\d, ]*\], 2146121005, tl\.uint32\)", kernels[name])  # MIX_MUL_1, a uint32
    # the GPU's block index: a FloorDiv in the load's index, never a load through a computed value
    assert re.search(r"tl\.load\(in_ptr\d+ \+ \([^,)\n]*tmp\d+", body) is None


def test_bad_input_keeps_its_error_on_the_triton_route():
    def f(w, seed, key):  # int12 has 10 significant bits, more than bf16's 7
        return torch.ops.pqt.sample.default(w, seed, key, 1, "int12", 32, "gaussian", 0.1, torch.bfloat16)

    torch._dynamo.reset()
    with inductor_triton_on_cpu(), pytest.raises(Exception, match="int12.*resolution|resolution.*int12"):
        torch.compile(f, dynamic=False)(torch.randn(4, 32), torch.tensor(1), torch.tensor(2))
