import subprocess
import sys

import pytest
import torch

from pqt_compile import PQTConfig, key_for_name, sample

pytestmark = pytest.mark.private_api  # exercises private torch/Triton APIs: CI reruns it on the newest torch


def _args(w, **kw):
    cfg = kw.pop("config", PQTConfig())
    return (w, torch.tensor(3), torch.tensor(4), kw.get("axis", 1), cfg.format, cfg.block_code, cfg.noise, cfg.noise_std, kw.get("out", w.dtype))


@pytest.mark.parametrize("dtype,out", [(torch.float32, torch.float32), (torch.float32, torch.bfloat16), (torch.bfloat16, torch.bfloat16)])
def test_opcheck(dtype, out):
    w = torch.randn(8, 40, dtype=dtype, requires_grad=True)
    torch.library.opcheck(torch.ops.pqt.sample.default, _args(w, out=out))


def test_gradient_is_identity_in_the_weight_dtype():
    w = torch.randn(8, 40, requires_grad=True)
    y = sample(w, seed=1, key=2, axis=1, out_dtype=torch.bfloat16)
    g = torch.randn(8, 40, dtype=torch.bfloat16)
    y.backward(g)
    assert w.grad.dtype == torch.float32 and torch.equal(w.grad, g.float())
    wb = torch.randn(4, 32, dtype=torch.bfloat16, requires_grad=True)
    sample(wb, seed=1, key=2).sum().backward()
    assert wb.grad.dtype == torch.bfloat16 and torch.equal(wb.grad, torch.ones_like(wb))


def test_fake_impl_checks_and_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        w = torch.empty(5, 7)
        out = torch.ops.pqt.sample.default(*_args(w, out=torch.float16))
        assert out.shape == (5, 7) and out.dtype == torch.float16
        with pytest.raises(ValueError, match="resolution"):
            torch.ops.pqt.sample.default(*_args(w, out=torch.bfloat16, config=PQTConfig(format="int12")))


def test_seed_and_key_as_tensors_or_ints():
    w = torch.randn(4, 32)
    a = sample(w, seed=7, key=9)
    assert torch.equal(a, sample(w, seed=torch.tensor(7), key=torch.tensor([9])))
    assert not torch.equal(a, sample(w, seed=8, key=9))
    assert not torch.equal(a, sample(w, seed=7, key=10))
    with pytest.raises(ValueError, match="key"):
        sample(w, seed=1, key=torch.tensor([1, 2]))


def test_keys_are_the_documented_hash_of_the_name():
    """method.md: key = blake2b(UTF-8 name, 4 bytes), little-endian. Recomputed here with hashlib
    alone, so a change of the hash (or of its byte order) fails; stable across processes by
    construction (test_same_bits_in_a_second_process runs one)."""
    import hashlib

    names = ["h.0.attn.c_attn.weight", "a", "b", "model.layers.0.mlp.gate_proj.weight", "ünï.weight"]
    for name in names:
        want = int.from_bytes(hashlib.blake2b(name.encode("utf-8"), digest_size=4).digest(), "little")
        assert key_for_name(name) == want and 0 <= want < 2**32
    assert len({key_for_name(n) for n in names}) == len(names)
    for bad in ("", None, 3):
        with pytest.raises(ValueError):
            key_for_name(bad)  # type: ignore[arg-type]


def test_negative_and_out_of_range_keys_are_refused():
    w = torch.randn(4, 32)
    for bad in (-1, 2**32, torch.tensor(-3)):
        with pytest.raises(ValueError, match="key"):
            sample(w, seed=1, key=bad)


SNIPPET = """
import torch, pqt_compile
torch.manual_seed(0)
w = torch.randn(16, 96)
out = pqt_compile.sample(w, seed=42, key=pqt_compile.key_for_name("fc.weight"), axis=1)
print(out.view(torch.int32).sum().item(), out.view(torch.int32)[3, :5].tolist())
"""


def test_same_bits_in_a_second_process():
    torch.manual_seed(0)
    w = torch.randn(16, 96)
    out = sample(w, seed=42, key=key_for_name("fc.weight"), axis=1)
    again = sample(w, seed=42, key=key_for_name("fc.weight"), axis=1)
    assert torch.equal(out.view(torch.int32), again.view(torch.int32))
    res = subprocess.run([sys.executable, "-c", SNIPPET], capture_output=True, text=True, check=True)
    assert res.stdout.split(maxsplit=1)[0] == str(out.view(torch.int32).sum().item())
    assert res.stdout.split(maxsplit=1)[1].strip() == str(out.view(torch.int32)[3, :5].tolist())


def test_sample_t_is_the_transposed_sample_laid_out_for_a_gemm():
    from torch._subclasses.fake_tensor import FakeTensorMode

    for dtype, out in ((torch.float32, torch.float32), (torch.float32, torch.bfloat16), (torch.bfloat16, torch.bfloat16)):
        w = torch.randn(8, 40, dtype=dtype, requires_grad=True)
        args = _args(w, out=out)
        torch.library.opcheck(torch.ops.pqt.sample_t.default, args)
        st = torch.ops.pqt.sample_t.default(*args)
        assert st.shape == (40, 8) and st.is_contiguous()
        assert torch.equal(st, torch.ops.pqt.sample.default(*args).t())
        g = torch.randn(40, 8, dtype=out)
        st.backward(g)
        assert w.grad.dtype == dtype and torch.equal(w.grad, g.t().to(dtype))
    with FakeTensorMode():
        assert torch.ops.pqt.sample_t.default(*_args(torch.empty(5, 7))).shape == (7, 5)
        with pytest.raises(ValueError, match="2-D"):
            torch.ops.pqt.sample_t.default(*_args(torch.empty(2, 5, 7)))


@pytest.mark.parametrize("noise,noise_std,match", [
    ("rounded_gaussian", -0.5, "noise_std must be a finite number > 0"),  # hung: its thresholds never grow
    ("rounded_gaussian", 0.0, "noise_std must be a finite number > 0"),   # ZeroDivisionError
    ("gaussian", float("nan"), "noise_std must be a finite number > 0"),  # every element NaN, silently
    ("gaussian", -1.0, "noise_std must be a finite number > 0"),
    ("laplace", 0.3, "noise must be"),
    # Finite and > 0, yet not drawable: all-NaN/Inf weights, or weights left clean (every r = 0), silently.
    ("gaussian", 1e300, "too large for fp32: a draw would be Inf"),
    ("uniform", 1e-50, "too small for fp32: the noise would round to 0"),
    ("rounded_gaussian", 0.1, "rounds every draw to 0"),
    ("rounded_gaussian", 1e6, "more than 64 rounding thresholds"),
])
def test_the_raw_op_refuses_a_noise_the_formula_does_not_define(noise, noise_std, match):
    """PQTConfig validates its noise; the op (torch.ops.pqt.sample) does too, eager and at trace time."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    w, seed, key = torch.randn(8, 32), torch.tensor(1), torch.tensor(2)
    # The trace-time check first: without the checks this fails here instead of hanging below.
    with FakeTensorMode() as mode, pytest.raises(ValueError, match=match):
        fw, fs, fk = (mode.from_tensor(t) for t in (w, seed, key))
        torch.ops.pqt.sample(fw, fs, fk, 1, "fp6_e3m2", 32, noise, noise_std, torch.float32)
    with pytest.raises(ValueError, match=match):
        torch.ops.pqt.sample(w, seed, key, 1, "fp6_e3m2", 32, noise, noise_std, torch.float32)


@pytest.mark.parametrize("seed, key, match", [
    (torch.tensor(1.0), torch.tensor(2), "seed must be an integer tensor"),  # truncated: another stream
    (torch.tensor([1, 2]), torch.tensor(2), "seed must be an integer tensor with one element"),
    (torch.tensor(1), torch.tensor(2.5), "key must be an integer tensor"),
    (torch.tensor(1), torch.tensor(True), "key must be an integer tensor"),
])
def test_the_raw_op_refuses_a_seed_or_key_that_is_not_one_integer(seed, key, match):
    """The public sample() converts ints; the raw op (torch.ops.pqt.sample, sample_t) checks its
    tensors itself, eager and at trace time, instead of truncating a float to another stream."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    w = torch.randn(8, 32)
    for op in (torch.ops.pqt.sample, torch.ops.pqt.sample_t):
        with FakeTensorMode() as mode, pytest.raises(ValueError, match=match):
            op(*(mode.from_tensor(t) for t in (w, seed, key)), 1, "fp6_e3m2", 32, "gaussian", 1.0, torch.float32)
        with pytest.raises(ValueError, match=match):
            op(w, seed, key, 1, "fp6_e3m2", 32, "gaussian", 1.0, torch.float32)
    with pytest.raises(ValueError, match=match):  # the public function, by the same rule
        sample(w, seed=seed, key=key)


def test_a_tensor_seed_stays_a_run_time_value_under_fullgraph_compile():
    """op._as_int64_tensor read an int64 seed tensor's value to check its range, which it always
    holds: under torch.compile(fullgraph=True) that was a data-dependent guard, and it failed."""
    import pqt_compile.compiler.lowering  # noqa: F401  (the Inductor lowering of pqt.sample)

    w = torch.randn(8, 64)
    torch._dynamo.reset()
    f = torch.compile(lambda w, s: pqt_compile.sample(w, seed=s, key=5), fullgraph=True)
    for s in (7, -(2**62)):
        assert torch.equal(f(w, torch.tensor(s)), pqt_compile.sample(w, seed=s, key=5))


def test_index_strides_that_put_two_elements_at_one_index_are_refused():
    """[0, 0] gave every element the same draw r, silently."""
    w = torch.randn(4, 8)
    with pytest.raises(ValueError, match="positive where the dim has more than one element"):
        torch.ops.pqt.sample(w, torch.tensor(1), torch.tensor(2), 1, "fp4_e2m1", 32, "gaussian", 0.3, torch.float32, [0, 0], 0)
    one_row = torch.randn(1, 8)  # a stride of 0 on a dim of one element places nothing twice
    torch.ops.pqt.sample(one_row, torch.tensor(1), torch.tensor(2), 1, "fp4_e2m1", 32, "gaussian", 0.3, torch.float32, [0, 1], 0)


def test_an_axis_or_block_size_that_changes_between_compiled_calls_recompiles():
    """The schema said SymInt: Dynamo made an int argument that changed between calls a SymInt, and
    the lowering crashed on it (a sympy Mod as a list index). Declared int: another graph."""
    import pqt_compile.compiler.lowering  # noqa: F401  (the Inductor lowering of pqt.sample)

    torch._dynamo.reset()
    w = torch.randn(32, 32)
    f = torch.compile(lambda w, axis, block: pqt_compile.sample(w, seed=torch.tensor(5), key=torch.tensor(9), axis=axis,
                                                                config=PQTConfig(block_size=block)), fullgraph=True)
    for axis, block in ((1, 32), (0, 16), (1, 8)):
        want = pqt_compile.sample(w, seed=5, key=9, axis=axis, config=PQTConfig(block_size=block))
        assert torch.equal(f(w, axis, block).view(torch.int32), want.view(torch.int32)), (axis, block)
