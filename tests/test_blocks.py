"""blocks.py: the block math, once."""

import pytest
import sympy
import torch

from pqt_compile.blocks import (ROW, TENSOR, block_amax, block_code, block_length, block_starts, expand_blocks,
                                num_blocks)


@pytest.mark.parametrize("k,code,length,count", [(70, 32, 32, 3), (20, 32, 20, 1), (64, 16, 16, 4), (9, ROW, 9, 1), (9, TENSOR, 9, 1)])
def test_length_and_count(k, code, length, count):
    assert block_length(k, code) == length and num_blocks(k, code) == count
    assert block_length(sympy.Integer(k), code) == length and num_blocks(sympy.Integer(k), code) == count


def test_symbolic_axis_keeps_the_block_size():
    s = sympy.Symbol("s0", positive=True, integer=True)
    assert block_length(s, 32) == 32 and block_length(s, ROW) == s


def test_amax_and_block_views_agree():
    w = torch.randn(5, 70)
    w[2, 65] = float("nan")
    amax = block_amax(w, 1, 32)
    first = block_starts(amax, 1, 32)
    assert first.shape == (5, 3)
    assert torch.equal(expand_blocks(first, tuple(w.shape), 1, 32).nan_to_num(), amax.nan_to_num())
    assert torch.equal(amax[0, :32], w[0, :32].abs().max().expand(32))
    assert amax[2, 64:].isnan().all() and not amax[2, :64].isnan().any()
    assert block_code("row") == ROW and block_code("tensor") == TENSOR and block_code(16) == 16


@pytest.mark.parametrize("shape,axis,code", [((6, 70), 1, 32), ((70, 6), 0, 16), ((3, 20, 33), 1, 8), ((5, 9), 1, 0),
                                             ((5, 9), 0, -1), ((4, 20), 1, 32)])
def test_per_block_amax_is_one_value_per_block_in_the_block_shape(shape, axis, code):
    """per_block_amax lies in block_shape, and repeated over each block it is block_amax; the
    block count and the partial last block agree with block_length."""
    from pqt_compile.blocks import block_shape, has_partial_block, num_blocks, per_block_amax

    torch.manual_seed(0)
    w = torch.randn(shape)
    per_block = per_block_amax(w, axis, code)
    assert list(per_block.shape) == block_shape(w.shape, axis, code)
    assert torch.equal(expand_blocks(per_block, shape, axis, code), block_amax(w, axis, code))
    k = shape[axis]
    b = block_length(k, code)
    assert num_blocks(k, code) == -(-k // b) and has_partial_block(k, code) == (k % b != 0)
