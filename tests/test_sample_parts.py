"""The sample split in three ops (sample_parts.py): the same bits as pqt.sample, eagerly; checked
inputs; no gradient through the block values or the words, the identity to the weight."""

import pytest
import torch

from pqt_compile import PQTConfig
from pqt_compile.blocks import block_shape
from pqt_compile.sample_parts import num_block_values

pytestmark = pytest.mark.private_api  # opcheck exercises private torch APIs: CI reruns it on the newest torch

SEED, KEY = torch.tensor(-(2**40) + 3), torch.tensor(2**31 + 5)

CASES = [
    # (shape, axis, config, w dtype, out dtype, shard (index_strides, index_offset) or None)
    ((16, 70), 1, PQTConfig(), torch.float32, torch.bfloat16, None),  # ragged last block
    ((70, 24), 0, PQTConfig(format="int4", block_size=16), torch.bfloat16, torch.bfloat16, None),
    ((9, 40), 0, PQTConfig(format="fp6_e2m3", block_size="tensor", noise="uniform"), torch.float16, torch.float16,
     None),
    ((9, 40), 1, PQTConfig(format="fp4_e2m1", block_size="row"), torch.float32, torch.float32, None),
    ((3, 20, 33), 1, PQTConfig(format="fp8_e5m2", block_size=8), torch.float32, torch.float32, None),
    ((16, 70), 1, PQTConfig(format="fp4_e2m1", noise="rounded_gaussian"), torch.float32, torch.bfloat16, None),
    ((16, 70), 1, PQTConfig(format="fp4_e2m1", mode="ste"), torch.float32, torch.float32, None),
    ((8, 64), 1, PQTConfig(format="nvfp4"), torch.float32, torch.bfloat16, None),
    ((8, 64), 1, PQTConfig(format="nvfp4", mode="ste"), torch.bfloat16, torch.bfloat16, None),
    ((8, 64), 1, PQTConfig(format="fp4_e2m1"), torch.float32, torch.float32, ([128, 1], 64)),  # a column shard
]


def _weight(shape, dtype):
    torch.manual_seed(sum(shape))
    w = torch.randn(shape) * torch.logspace(-30, 2, shape[-1])  # tiny blocks too (NOTE [per-block step])
    w.view(-1)[:7] = 0.0
    w.view(-1)[40] = float("nan")  # a NaN block stays put
    return w.to(dtype)


def _parts(w, seed, key, axis, cfg, out, shard):
    values = torch.ops.pqt.block_values(w, key, axis, cfg.format, cfg.block_code, cfg.op_noise)
    words = None if cfg.op_noise == "rtn" else torch.ops.pqt.stream_words(seed, [key])[0]
    return torch.ops.pqt.sample_from_values(w, values, words, axis, cfg.format, cfg.block_code, cfg.op_noise,
                                            cfg.op_noise_std, out, *(shard or ()))


@pytest.mark.parametrize("shape,axis,cfg,dtype,out,shard", CASES)
@pytest.mark.parametrize("key", [KEY, torch.tensor(-1)], ids=["key", "switched-off"])
def test_the_parts_compose_to_the_sample_bit_for_bit(shape, axis, cfg, dtype, out, shard, key):
    w = _weight(shape, dtype)
    want = torch.ops.pqt.sample(w, SEED, key, axis, cfg.format, cfg.block_code, cfg.op_noise, cfg.op_noise_std, out,
                                *(shard or ()))
    got = _parts(w, SEED, key, axis, cfg, out, shard)
    bits = torch.int32 if out == torch.float32 else torch.int16
    assert torch.equal(got.view(bits), want.view(bits))  # NaN payloads included
    if key.item() < 0:
        assert torch.equal(got.view(bits), w.to(out).view(bits))


def test_values_layout_and_words_are_the_streams_low_bits():
    from pqt_compile.formula import TorchOps, stream_words
    from pqt_compile.formats import parse_format

    w = _weight((3, 20, 33), torch.float32)
    values = torch.ops.pqt.block_values(w, KEY, 1, "fp8_e5m2", 8, "gaussian")
    assert values.shape == (num_block_values(parse_format("fp8_e5m2"), "gaussian"), 3, 3, 33) == (3, 3, 3, 33)
    assert block_shape(w.shape, 1, -1) == [] and block_shape(w.shape, 2, 0) == [3, 20, 1]
    keys = [KEY, torch.tensor(-1), torch.tensor([[7]])]  # any one-element tensors, one row each
    words = torch.ops.pqt.stream_words(SEED, keys)
    assert words.shape == (3, 2) and words.dtype == torch.int32
    for row, key in zip(words, keys):
        want = [int(v) for v in stream_words(TorchOps(torch.device("cpu")), SEED, key.reshape(()))]
        assert [int(v) & 0xFFFFFFFF for v in row] == want
    with pytest.raises(ValueError, match="one or more one-element integer tensors, got none"):
        torch.ops.pqt.stream_words(SEED, [])
    with pytest.raises(ValueError, match=r"keys\[1\] must be an integer tensor with one element"):
        torch.ops.pqt.stream_words(SEED, [KEY, torch.tensor([1, 2])])
    with pytest.raises(ValueError, match=r"keys\[0\] must be an integer tensor.*torch.float32"):
        torch.ops.pqt.stream_words(SEED, [torch.tensor(3.7)])  # would draw key 3's stream
    with pytest.raises(ValueError, match="seed must be an integer tensor with one element"):
        torch.ops.pqt.stream_words(torch.tensor([1, 2]), [KEY])
    with pytest.raises(ValueError, match="key must be an integer tensor"):
        torch.ops.pqt.block_values(w, torch.tensor(True), 1, "fp8_e5m2", 8, "gaussian")


def test_opcheck_of_the_three_ops():
    w = torch.randn(8, 40, requires_grad=True)
    cfg = PQTConfig()
    values = torch.ops.pqt.block_values(w, KEY, 1, cfg.format, cfg.block_code, cfg.op_noise)
    words = torch.ops.pqt.stream_words(SEED, [KEY])[0]
    torch.library.opcheck(torch.ops.pqt.block_values.default, (w, KEY, 1, cfg.format, cfg.block_code, cfg.op_noise))
    torch.library.opcheck(torch.ops.pqt.stream_words.default, (SEED, [KEY, torch.tensor(3)]))
    torch.library.opcheck(torch.ops.pqt.sample_from_values.default,
                          (w, values, words, 1, cfg.format, cfg.block_code, cfg.op_noise, cfg.op_noise_std,
                           torch.bfloat16))


def test_gradient_is_the_identity_to_w_and_none_through_values_or_words():
    w = torch.randn(8, 40, requires_grad=True)
    cfg = PQTConfig()
    values = torch.ops.pqt.block_values(w, KEY, 1, cfg.format, cfg.block_code, cfg.op_noise)
    words = torch.ops.pqt.stream_words(SEED, [KEY])[0]
    assert not values.requires_grad and not words.requires_grad
    y = torch.ops.pqt.sample_from_values(w, values, words, 1, cfg.format, cfg.block_code, cfg.op_noise,
                                         cfg.op_noise_std, torch.bfloat16)
    g = torch.randn(8, 40, dtype=torch.bfloat16)
    y.backward(g)
    assert w.grad.dtype == torch.float32 and torch.equal(w.grad, g.float())


def test_values_or_words_that_do_not_fit_are_refused():
    w = torch.randn(8, 40)
    cfg = PQTConfig()
    values = torch.ops.pqt.block_values(w, KEY, 1, cfg.format, cfg.block_code, cfg.op_noise)
    words = torch.ops.pqt.stream_words(SEED, [KEY])[0]
    args = (1, cfg.format, cfg.block_code, cfg.op_noise, cfg.op_noise_std, torch.float32)
    with pytest.raises(ValueError, match=r"values must be float32 of shape \[3, 8, 2\]"):
        torch.ops.pqt.sample_from_values(w, values[:, :4], words, *args)
    with pytest.raises(ValueError, match="values must be float32"):
        torch.ops.pqt.sample_from_values(w, values.double(), words, *args)
    with pytest.raises(ValueError, match=r"needs words, int32 of shape \[2\].*got None"):
        torch.ops.pqt.sample_from_values(w, values, None, *args)
    with pytest.raises(ValueError, match="needs words"):
        torch.ops.pqt.sample_from_values(w, values, words.long(), *args)
