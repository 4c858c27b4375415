"""sharding.py: a shard sampled with the full weight's draw index equals the slice of the full
weight's sample (NOTE [global index]), and shards whose blocks are not the full weight's blocks
are refused with the shard and block sizes named. No process group: layouts are built directly
(tests/compiler/test_sharded_weights.py and tests/distributed/test_tensor_parallel.py go
through DTensor)."""

import pytest
import torch

from pqt_compile import PQTConfig, key_for_name, sample
from pqt_compile.blocks import ROW, TENSOR
from pqt_compile.sharding import ShardLayout, check_blocks

SEED, KEY = 1234, key_for_name("layers.0.mlp.fc1.weight")


def _shards(w: torch.Tensor, dim: int, n: int) -> list[tuple[torch.Tensor, ShardLayout]]:
    """torch.chunk's shards of `w` along `dim` (DTensor's Shard(dim) rule), with their layouts."""
    out, start = [], 0
    for piece in w.chunk(n, dim):
        offsets = [0] * w.dim()
        offsets[dim] = start
        splits = tuple((n,) if d == dim else () for d in range(w.dim()))
        out.append((piece.contiguous(), ShardLayout(tuple(w.shape), tuple(piece.shape), tuple(offsets), splits)))
        start += piece.shape[dim]
    return out


def _sample_shard(piece: torch.Tensor, layout: ShardLayout, axis: int, cfg: PQTConfig) -> torch.Tensor:
    strides, offset = layout.op_args()
    return torch.ops.pqt.sample(piece, torch.tensor(SEED), torch.tensor(KEY), axis, cfg.format, cfg.block_code,
                                cfg.op_noise, cfg.op_noise_std, piece.dtype, strides, offset)


CASES = [
    # (shape, shard dim, shards, reduction axis, config): colwise, rowwise, experts, Conv1D, uneven
    ((48, 128), 0, 4, 1, PQTConfig(format="fp4_e2m1")),
    ((48, 128), 1, 4, 1, PQTConfig(format="fp6_e3m2")),
    ((48, 128), 1, 2, 1, PQTConfig(format="int4", block_size=16, noise="uniform")),
    ((6, 40, 64), 0, 3, 2, PQTConfig(format="fp4_e2m1")),  # MoE experts [E, N, K], expert-parallel
    ((6, 40, 64), 2, 2, 2, PQTConfig(format="fp8_e4m3")),
    ((128, 40), 0, 4, 0, PQTConfig(format="fp4_e2m1")),  # a [K, N] weight (x @ W), sharded along K
    ((50, 96), 0, 4, 1, PQTConfig(format="fp4_e2m1", block_size="row")),  # uneven rows: 13, 13, 13, 11
]


@pytest.mark.parametrize("shape,dim,n,axis,cfg", CASES)
def test_a_shard_samples_as_the_slice_of_the_full_weight(shape, dim, n, axis, cfg):
    torch.manual_seed(0)
    w = torch.randn(shape) * torch.logspace(-3, 2, shape[-1])
    full = sample(w, seed=SEED, key=KEY, axis=axis, config=cfg)
    for piece, layout in _shards(w, dim, n):
        check_blocks("w", layout, axis, cfg.block_code)
        got = _sample_shard(piece, layout, axis, cfg)
        sl = [slice(None)] * w.dim()
        sl[dim] = slice(layout.offsets[dim], layout.offsets[dim] + layout.local_shape[dim])
        assert torch.equal(got.view(torch.int32), full[tuple(sl)].contiguous().view(torch.int32)), layout
    # and the local index would have drawn other noise (the test can fail)
    piece, layout = _shards(w, dim, n)[1]
    assert not torch.equal(sample(piece, seed=SEED, key=KEY, axis=axis, config=cfg), _sample_shard(piece, layout, axis, cfg))


def test_layout_index_math():
    layout = ShardLayout((6, 40, 64), (6, 40, 32), (0, 0, 32), ((), (), (2,)))
    assert layout.index_strides == [2560, 64, 1]
    assert layout.index_offset == 32
    assert ShardLayout((4, 8), (4, 8), (0, 0), ((), ())).op_args() == (None, 0)


@pytest.mark.parametrize("layout,axis,code,match", [
    # 80 columns over 2 ranks: 40 each, blocks of 32 would cross the shard boundary at 40 (on rank 1, the
    # first shard that breaks the rule is named, whichever rank reports it)
    (ShardLayout((16, 80), (16, 40), (0, 40), ((), (2,)), "(Shard(dim=1),)"), 1, 32,
     r"'w' \(16, 80\) is sharded .*reduction axis 1 into shards of 40 elements .*starting at 0.*blocks of 32 would "
     r"span two shards.*divides 40"),
    (ShardLayout((16, 80), (16, 40), (0, 0), ((), (2,))), 1, 32, r"shards of 40 elements.*blocks of 32"),
    (ShardLayout((16, 64), (16, 32), (0, 32), ((), (2,))), 1, ROW, r"block_size='row' needs the whole row"),
    (ShardLayout((16, 64), (8, 64), (8, 0), ((2,), ())), 1, TENSOR, r"block_size='tensor' needs the whole"),
])
def test_a_block_across_shards_is_refused(layout, axis, code, match):
    with pytest.raises(ValueError, match=match):
        check_blocks("w", layout, axis, code)


def test_every_ranks_shard_is_judged_so_that_all_ranks_refuse_together():
    # 48 columns over 3 ranks: 16 each. The last shard alone (offset 32, ending the axis) holds whole
    # 32-blocks, but the others do not: its rank must refuse too, not wait for them in a collective.
    last = ShardLayout((8, 48), (8, 16), (0, 32), ((), (3,)))
    with pytest.raises(ValueError, match=r"shards of 16 elements \(one starting at 0\)"):
        check_blocks("w", last, 1, 32)
    # two mesh dims splitting K: 128 -> 64 -> 32, whole blocks everywhere; 96 -> 48 -> 24 not
    check_blocks("w", ShardLayout((8, 128), (8, 32), (0, 96), ((), (2, 2))), 1, 32)
    with pytest.raises(ValueError, match="shards of 24 elements"):
        check_blocks("w", ShardLayout((8, 96), (8, 24), (0, 72), ((), (2, 2))), 1, 32)


def test_shards_that_hold_whole_blocks_pass():
    # 70 columns over 3 ranks: 24, 24, 22; blocks of 8 are whole, the last one ragged as in the full weight
    check_blocks("w", ShardLayout((16, 70), (16, 22), (0, 48), ((), (3,))), 1, 8)
    check_blocks("w", ShardLayout((16, 64), (8, 64), (8, 0), ((2,), ())), 1, ROW)  # rows held whole
    check_blocks("w", ShardLayout((16, 64), (16, 64), (0, 0), ((), ())), 1, TENSOR)  # replicated


def test_the_op_refuses_an_index_map_that_does_not_fit():
    w = torch.randn(4, 8)
    with pytest.raises(ValueError, match="index_strides"):
        torch.ops.pqt.sample(w, torch.tensor(1), torch.tensor(2), 1, "fp4_e2m1", 32, "gaussian", 0.3, w.dtype, [8], 0)
    with pytest.raises(ValueError, match="at most 2\\^32"):
        torch.ops.pqt.sample(w, torch.tensor(1), torch.tensor(2), 1, "fp4_e2m1", 32, "gaussian", 0.3, w.dtype,
                             [2**31, 1], 2**31)


def test_an_offset_without_strides_is_refused():
    w = torch.randn(4, 8)
    with pytest.raises(ValueError, match="index_offset 8 needs index_strides"):
        torch.ops.pqt.sample(w, torch.tensor(1), torch.tensor(2), 1, "fp4_e2m1", 32, "gaussian", 0.3, w.dtype, None, 8)
