"""The Inductor lowering of pqt.sample: bit-exact against the eager op, and fused on CPU.

The op is compiled directly with the inductor backend here. NOTE: Inductor's FX graph cache
keys that compile on the graph, not on our lowering's source, so these tests turn the cache
off (through the pqt backend the pass's uuid covers the lowering's source instead).
"""

import math
import re

import pytest
import torch
import torch._inductor.config as inductor_config
from torch._inductor.utils import run_and_get_code

import pqt_compile
import pqt_compile.compiler.lowering  # noqa: F401  (registers the lowering)
from pqt_compile import PQTConfig
from pqt_compile.formula import MIX_MUL_1
from pqt_compile.sharding import ShardLayout

pytestmark = pytest.mark.private_api  # exercises private torch/Triton APIs: CI reruns it on the newest torch


def _compiled(cfg: PQTConfig, axis: int, out_dtype: torch.dtype):
    def f(w, seed, key):
        return torch.ops.pqt.sample.default(w, seed, key, axis, cfg.format, cfg.block_code, cfg.op_noise, cfg.op_noise_std,
                                            out_dtype)

    return f, torch.compile(f, dynamic=False)


CASES = [
    # (shape, axis, config, w dtype, out dtype)
    ((16, 70), 1, PQTConfig(), torch.float32, torch.float32),  # ragged last block
    ((16, 64), 1, PQTConfig(format="fp8_e4m3"), torch.float32, torch.bfloat16),
    ((70, 24), 0, PQTConfig(format="int4", block_size=16), torch.float32, torch.float32),
    ((9, 40), 1, PQTConfig(format="fp4_e2m1", block_size="row"), torch.bfloat16, torch.bfloat16),
    ((9, 40), 0, PQTConfig(format="fp6_e2m3", block_size="tensor", noise="uniform"), torch.float16, torch.float16),
    ((3, 20, 33), 1, PQTConfig(format="fp8_e5m2", block_size=8), torch.float32, torch.float32),
    ((4, 24, 64), 2, PQTConfig(format="fp4_e2m1"), torch.float32, torch.float32),  # MoE experts [E, N, K]
    ((1, 1), 1, PQTConfig(format="int8"), torch.float32, torch.float32),
    ((16, 70), 1, PQTConfig(format="fp4_e2m1", noise="rounded_gaussian"), torch.float32, torch.bfloat16),
    # mode "ste": round to nearest (rounding.py), float and int grids, ragged and per-tensor blocks
    ((16, 70), 1, PQTConfig(format="fp4_e2m1", mode="ste"), torch.float32, torch.float32),
    ((70, 24), 0, PQTConfig(format="int4", block_size=16, mode="ste"), torch.bfloat16, torch.bfloat16),
    ((9, 40), 1, PQTConfig(format="fp8_e5m2", block_size="tensor", mode="ste"), torch.float32, torch.bfloat16),
]


@pytest.mark.parametrize("shape,axis,cfg,dtype,out", CASES)
def test_lowering_is_bit_exact(shape, axis, cfg, dtype, out):
    torch.manual_seed(sum(shape))
    w = (torch.randn(shape) * torch.logspace(-4, 1, shape[-1])).to(dtype)
    if w.numel() > 40:
        w.view(-1)[:7] = 0.0
        w.view(-1)[40] = float("nan")  # one NaN block stays put
    seed, key = torch.tensor(-(2**40) + 3), torch.tensor(2**31 + 5)
    f, cf = _compiled(cfg, axis, out)
    with inductor_config.patch(fx_graph_cache=False):
        got = cf(w, seed, key)
    want = f(w, seed, key)
    assert got.dtype == want.dtype
    bits = torch.int32 if out == torch.float32 else torch.int16
    assert torch.equal(got.view(bits), want.view(bits))  # bit for bit, NaN payloads included


def test_a_negative_key_is_bit_exact_too():
    w = torch.randn(16, 70)
    f, cf = _compiled(PQTConfig(format="fp4_e2m1"), 1, torch.bfloat16)
    seed, key = torch.tensor(5), torch.tensor(-1)
    with inductor_config.patch(fx_graph_cache=False):
        got = cf(w, seed, key)
    assert torch.equal(got.view(torch.int16), f(w, seed, key).view(torch.int16))
    assert torch.equal(got, w.to(torch.bfloat16))


@pytest.mark.parametrize("seed_dtype,key_dtype", [(torch.int64, torch.uint8), (torch.uint16, torch.int64)])
def test_a_small_weights_stream_words_are_bit_exact_from_any_integer_seed_and_key(seed_dtype, key_dtype):
    """forms.SampleForm._scalar_words: the one-kernel form (a weight of at most 4096 elements) computed
    the stream words as scalar int32 products that wrap (undefined behaviour); g++ used it on a uint8
    key, whose range it knows, and all 128 samples differed from the eager op's."""
    w = torch.randn(4, 32)
    f, cf = _compiled(PQTConfig(), 1, torch.float32)
    seed, key = torch.tensor(3, dtype=seed_dtype), torch.tensor(200, dtype=key_dtype)
    with inductor_config.patch(fx_graph_cache=False):
        got = cf(w, seed, key)
    assert torch.equal(got.view(torch.int32), f(w, seed, key).view(torch.int32))


def test_ste_lowering_equals_quantize_and_draws_nothing():
    torch.manual_seed(0)
    w = torch.randn(32, 64) * torch.logspace(-30, 30, 64)  # blocks from tiny to huge (2^-64 scaling)
    cfg = PQTConfig(format="fp6_e3m2", mode="ste")
    f, cf = _compiled(cfg, 1, torch.float32)
    with inductor_config.patch(fx_graph_cache=False):
        got, code = run_and_get_code(cf, w, torch.tensor(1), torch.tensor(2))
    want = pqt_compile.quantize(w, axis=1, config=cfg)
    assert torch.equal(got.view(torch.int32), want.view(torch.int32))
    assert str(MIX_MUL_1) not in "".join(code)  # no hash: the rounding alone


#: Shards of a [12, 128] weight and of [6, 40, 64] experts (sharding.py NOTE [global index]):
#: (full shape, shard dim, shard index, shards, reduction axis, config, out dtype)
SHARDS = [
    ((12, 128), 1, 1, 2, 1, PQTConfig(format="fp4_e2m1"), torch.bfloat16),  # rowwise: columns 64..127
    ((12, 128), 0, 2, 3, 1, PQTConfig(format="fp6_e3m2", block_size=16), torch.float32),  # colwise: rows 8..11
    ((6, 40, 64), 0, 1, 3, 2, PQTConfig(format="int4"), torch.float32),  # experts 2, 3
]


def test_a_shard_lowers_bit_exact_to_the_slice_of_the_full_sample():
    """One compile for every shard case: the index map (index_strides, index_offset) in the
    generated code draws what the eager op draws for the full weight."""
    seed, key = torch.tensor(77), torch.tensor(2**31 + 9)
    pieces, fulls, args = [], [], []
    for shape, dim, i, n, axis, cfg, out in SHARDS:
        torch.manual_seed(sum(shape))
        w = torch.randn(shape) * torch.logspace(-3, 2, shape[-1])
        piece = w.chunk(n, dim)[i]
        offsets = [0] * w.dim()
        offsets[dim] = sum(p.shape[dim] for p in w.chunk(n, dim)[:i])
        layout = ShardLayout(tuple(w.shape), tuple(piece.shape), tuple(offsets),
                             tuple((n,) if d == dim else () for d in range(w.dim())))
        pieces.append(piece.contiguous())
        args.append((axis, cfg, out, *layout.op_args()))
        full = torch.ops.pqt.sample(w, seed, key, axis, cfg.format, cfg.block_code, cfg.op_noise, cfg.op_noise_std, out)
        fulls.append(full.narrow(dim, offsets[dim], piece.shape[dim]))

    def f(ws, seed, key):
        return [torch.ops.pqt.sample.default(w, seed, key, axis, cfg.format, cfg.block_code, cfg.op_noise,
                                             cfg.op_noise_std, out, strides, offset)
                for w, (axis, cfg, out, strides, offset) in zip(ws, args)]

    with inductor_config.patch(fx_graph_cache=False):
        got = torch.compile(f, dynamic=False)(pieces, seed, key)
    for g, want, eager in zip(got, fulls, f(pieces, seed, key)):
        bits = torch.int32 if g.dtype == torch.float32 else torch.int16
        assert torch.equal(g.view(bits), eager.view(bits))
        assert torch.equal(g.view(bits), want.contiguous().view(bits))


def test_noncontiguous_input_gives_logical_index_noise():
    w = torch.randn(40, 48).t()  # [48, 40], column-major storage
    f, cf = _compiled(PQTConfig(), 1, torch.float32)
    seed, key = torch.tensor(1), torch.tensor(2)
    with inductor_config.patch(fx_graph_cache=False):
        got = cf(w, seed, key)
    assert torch.equal(got, f(w.contiguous(), seed, key))


def test_cpu_code_fuses_the_sample_into_a_cpp_kernel():
    w = torch.randn(32, 64)
    f, cf = _compiled(PQTConfig(), 1, torch.float32)
    with inductor_config.patch(fx_graph_cache=False):
        _, codes = run_and_get_code(cf, w, torch.tensor(1), torch.tensor(2))
    code = "\n".join(codes)
    assert "cpp_fused" in code
    assert str(MIX_MUL_1) in code  # the generator's multiplier is inside the generated kernel
    assert "torch.ops.pqt.sample" not in code and "pqt.sample.default" not in code  # no extern fallback


@pytest.mark.parametrize("shape,axis", [((64, 256), 1), ((256, 64), 0)])
def test_cpu_sample_loop_holds_int32_words_and_reads_the_index_from_a_buffer(shape, axis):
    """The levers of docs/results.md (issue 14) stay in the generated C++: the per-element words
    and the block values are int32 vectors (NOTE [int32 words], [32-bit block values]), the index comes from the iota buffer (NOTE [index
    iota]: no per-element arange), and the result stays bit-exact with the eager op."""
    from pqt_compile.compiler.targets import cpp_vectorised

    if not cpp_vectorised(torch.device("cpu")):
        pytest.skip("Inductor's C++ backend does not vectorise on this machine: int64 words by design")
    w = torch.randn(shape)
    w[0] *= 1e-39  # a row of tiny blocks
    f, cf = _compiled(PQTConfig(), axis, torch.float32)
    with inductor_config.patch(fx_graph_cache=False):
        got, codes = run_and_get_code(cf, w, torch.tensor(3), torch.tensor(4))
    assert torch.equal(got.view(torch.int32), f(w, torch.tensor(3), torch.tensor(4)).view(torch.int32))
    code = "\n".join(codes)
    assert "Vectorized<int32_t>" in code
    # No 64-bit integer vectors: the block values' exponent code too is int32 (NOTE [32-bit block
    # values]; it was VectorizedN<int64_t,2>, which g++ compiles slowly).
    assert "VectorizedN<int64_t" not in code
    # Twice at most: the loop that fills the iota buffer and the two-element loop of the stream
    # words (one buffer for both); the per-element loop reads the iota instead.
    assert code.count("::arange(") <= 2
    assert str(MIX_MUL_1) in code


#: NVFP4 (formula_nvfp4.py), one compile for all: (shape, axis, noise, out dtype, tensor_amax given).
#: 24 x 80 takes the one-kernel form in C++ (<= CPP_ONE_KERNEL_MAX_NUMEL elements), 96 x 64 the
#: levers; a given tensor_amax (a shard's all-reduced one) above the weight's own moves every scale.
NVFP4_CASES = [
    ((24, 80), 1, "gaussian", torch.bfloat16, False),
    ((96, 64), 0, "gaussian", torch.float32, False),
    ((96, 64), 1, "uniform", torch.float32, True),
    ((24, 80), 1, "rtn", torch.float32, False),
    ((96, 64), 0, "rtn", torch.bfloat16, True),
]


def test_nvfp4_lowers_bit_exact():
    """The tensor amax (the op's input, or a Reduction of the lowering's own), the E4M3 block
    scales and the per-element sample or round to nearest: the eager op's bits, in C++."""
    cfg = PQTConfig(format="nvfp4")
    seed, key = torch.tensor(91), torch.tensor(2**31 + 3)
    ws, amaxes = [], []
    for shape, axis, *_ in NVFP4_CASES:
        torch.manual_seed(sum(shape))
        w = torch.randn(shape) * torch.logspace(-3, 1, shape[-1])
        w.view(-1)[:16] = 0.0  # a zero block: no noise there
        ws.append(w)
        amaxes.append(w.abs().amax().reshape(1) * 3.0)

    def f(ws, amaxes, seed, key):
        return [torch.ops.pqt.sample.default(w, seed, key, axis, cfg.format, cfg.block_code, noise, cfg.op_noise_std,
                                             out, None, 0, a if given else None)
                for w, a, (_, axis, noise, out, given) in zip(ws, amaxes, NVFP4_CASES)]

    with inductor_config.patch(fx_graph_cache=False):
        got = torch.compile(f, dynamic=False)(ws, amaxes, seed, key)
    for g, want, case in zip(got, f(ws, amaxes, seed, key), NVFP4_CASES):
        bits = torch.int32 if g.dtype == torch.float32 else torch.int16
        assert torch.equal(g.view(bits), want.view(bits)), case
    # the check can fail: a given amax moves the tensor scale, hence the sample
    moved = f(ws, [a / 3.0 for a in amaxes], seed, key)[2]
    assert not torch.equal(moved, got[2])


@pytest.mark.parametrize("shape,axis,cfg", [
    ((8, 8), 1, PQTConfig()), ((64, 64), 1, PQTConfig()), ((64, 32), 0, PQTConfig()), ((4, 16, 32), 2, PQTConfig()),
    ((32, 64), 1, PQTConfig(format="fp4_e2m1", mode="ste")),  # round to nearest, whole blocks
    ((32, 32), 1, PQTConfig(format="nvfp4")),  # its tensor amax reduced in the op's own kernel
])
def test_a_small_cpu_sample_is_one_kernel_written_in_the_weights_shape(shape, axis, cfg):
    """NOTE [one kernel per weight in C++]: a weight of at most CPP_ONE_KERNEL_MAX_NUMEL elements
    with whole blocks is sampled by one C++ kernel (block amax and sample) into a buffer of w's own
    shape, so the wrapper hands it on without a view (a reinterpret_tensor per use costs host
    time), and the values are the eager op's bits."""
    w = torch.randn(shape)
    f, cf = _compiled(cfg, axis, torch.float32)
    with inductor_config.patch(fx_graph_cache=False):
        got, codes = run_and_get_code(cf, w, torch.tensor(5), torch.tensor(6))
    assert torch.equal(got.view(torch.int32), f(w, torch.tensor(5), torch.tensor(6)).view(torch.int32))
    call = codes[0][codes[0].index("def call("):]
    assert len(re.findall(r"^\s+cpp_fused\w*\(", call, re.M)) == 1, call
    assert "reinterpret_tensor" not in call, call


#: The split of NOTE [saved block values] (sample_parts.py), one compile per word type: (shape, axis,
#: config, out dtype). All in the per-block form; float, int, NVFP4 (tensor amax given), "rtn".
SPLIT_CASES = [
    ((96, 70), 1, PQTConfig(), torch.bfloat16),  # ragged last block
    ((80, 64), 0, PQTConfig(format="int4", block_size=16), torch.float32),
    ((3, 40, 48), 2, PQTConfig(format="fp8_e5m2", block_size=8, noise="uniform"), torch.float32),
    ((96, 64), 1, PQTConfig(format="nvfp4"), torch.bfloat16),
    ((96, 70), 1, PQTConfig(format="fp4_e2m1", mode="ste"), torch.float32),
]


@pytest.mark.parametrize("simdlen", [None, 1], ids=["vectorised-int32-words", "scalar-int64-words"])
def test_the_split_sample_lowers_bit_exact(simdlen):
    """block_values, stream_words (one op, a row per key) and sample_from_values compiled give
    pqt.sample's bits, where the
    element loop holds int32 words (read from the int32 words buffer as they are) and where it holds
    int64 ones (each word's low 32 bits widened: lowering/forms.py `words_of`)."""
    torch._dynamo.reset()

    def f(*ws):
        # One words op for all cases, a key each (NOTE [one words op per graph]): row i, key i.
        seed, keys = ws[len(SPLIT_CASES)], ws[len(SPLIT_CASES) + 1:]
        words = torch.ops.pqt.stream_words(seed, list(keys))
        outs = []
        for i, (w, (shape, axis, cfg, out)) in enumerate(zip(ws, SPLIT_CASES)):
            amax_t = (w.float().abs().amax() * 2,) if cfg.format == "nvfp4" else ()  # a shard's larger amax
            values = torch.ops.pqt.block_values(w, keys[i], axis, cfg.format, cfg.block_code, cfg.op_noise, *amax_t)
            row = None if cfg.op_noise == "rtn" else words[i]
            outs.append(torch.ops.pqt.sample_from_values(w, values, row, axis, cfg.format, cfg.block_code,
                                                         cfg.op_noise, cfg.op_noise_std, out))
        return outs

    torch.manual_seed(1)
    ws = [torch.randn(shape) * torch.logspace(-30, 2, shape[-1]) for shape, *_ in SPLIT_CASES]
    keys = [torch.tensor(2**31 + 5 + 7 * i) for i in range(len(SPLIT_CASES))]
    args = (*ws, torch.tensor(-(2**40) + 3), *keys)
    with inductor_config.patch(fx_graph_cache=False, **({"cpp.simdlen": simdlen} if simdlen else {})):
        got, codes = run_and_get_code(torch.compile(f, dynamic=False), *args)
    code = "\n".join(codes)
    assert "pqt.sample_from_values" not in code and "pqt.block_values" not in code  # lowered, no extern fallback
    from pqt_compile.compiler.targets import cpp_vectorised

    assert ("Vectorized<int32_t>" in code) == (simdlen is None and cpp_vectorised(torch.device("cpu")))
    for g, w, key, (shape, axis, cfg, out) in zip(got, ws, keys, SPLIT_CASES):
        amax_t = (w.float().abs().amax() * 2,) if cfg.format == "nvfp4" else ()
        want = torch.ops.pqt.sample(w, args[len(SPLIT_CASES)], key, axis, cfg.format, cfg.block_code, cfg.op_noise,
                                    cfg.op_noise_std, out, None, 0, *amax_t)
        bits = torch.int32 if out == torch.float32 else torch.int16
        assert torch.equal(g.view(bits), want.view(bits)), (shape, cfg.format)
