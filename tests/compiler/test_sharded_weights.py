"""DTensor weights through the compile path, one process holding rank r of N (tests/support/fake_mesh.py).

The compiled graph of a colwise / rowwise nn.Linear reads the rank's shard; its sample, read
through an identity input, must equal the slice of the full weight's eager sample bit for bit.
No collective is added for the sample, and shards whose blocks would cross a shard boundary are
refused at compile, naming the weight and the sizes.
"""

import pytest
import torch
from torch._inductor.utils import run_and_get_code

import pqt_compile
from pqt_compile import PQTConfig, key_for_name, sample
from support.fake_mesh import fake_mesh, fill_shards

pytestmark = pytest.mark.private_api  # compiles DTensor graphs through the backend: CI reruns it on the newest torch

CFG = PQTConfig(format="fp4_e2m1")
SEED = 7


def _linear(mesh, style: str, k: int = 128, n: int = 96) -> tuple[torch.nn.Module, torch.Tensor]:
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    torch.manual_seed(0)
    m = torch.nn.Linear(k, n, bias=False)
    full = m.weight.detach().clone()
    parallelize_module(m, mesh, ColwiseParallel() if style == "colwise" else RowwiseParallel())
    fill_shards(m, {"weight": full})
    return m, full


@pytest.mark.parametrize("style,rank,world", [("colwise", 1, 4), ("rowwise", 2, 4)])
def test_a_shards_sample_is_the_slice_of_the_full_sample(style, rank, world):
    torch._dynamo.reset()
    with fake_mesh(rank, world) as mesh:
        m, full = _linear(mesh, style)
        k_local = full.shape[1] // world if style == "rowwise" else full.shape[1]
        with pqt_compile.fixed_seed(SEED):
            # colwise: out = I @ W_local^T; rowwise: I_local @ W_local^T (the fake all-reduce keeps it)
            got, code = run_and_get_code(pqt_compile.compile(m, CFG), torch.eye(k_local))
        want = sample(full, seed=SEED, key=key_for_name("weight"), axis=1, config=CFG)
        piece = want.chunk(world, dim=0 if style == "colwise" else 1)[rank]
        assert torch.equal(got.t().contiguous().view(torch.int32), piece.contiguous().view(torch.int32))
        # the local index would draw other noise: the check can fail
        local = full.chunk(world, dim=0 if style == "colwise" else 1)[rank].contiguous()
        assert not torch.equal(got.t(), sample(local, seed=SEED, key=key_for_name("weight"), axis=1, config=CFG))
        if style == "rowwise":  # no communication for the sample: the collectives of stock Inductor
            torch._dynamo.reset()
            _, plain = run_and_get_code(torch.compile(m), torch.eye(k_local))
            count = lambda c: "\n".join(c).count("torch.ops._c10d_functional.")  # noqa: E731
            assert count(code) == count(plain) > 0


@pytest.mark.parametrize("cfg,match", [
    (PQTConfig(format="fp4_e2m1"), r"weight 'weight' \(96, 128\) is sharded .*reduction axis 1 into shards of 16 "
                                   r"elements.*blocks of 32 would span two shards"),
    (PQTConfig(format="fp4_e2m1", block_size="row"), r"block_size='row' needs the whole row"),
])
def test_a_block_across_shards_is_refused_at_compile(cfg, match):
    torch._dynamo.reset()
    with fake_mesh(3, 8) as mesh:  # 128 columns over 8 ranks: 16 each
        m, _ = _linear(mesh, "rowwise")
        with pytest.raises(Exception, match=match):
            pqt_compile.compile(m, cfg)(torch.eye(16))
    torch._dynamo.reset()


def test_a_partial_weight_is_refused():
    from torch.distributed.tensor import DTensor, Partial

    from pqt_compile.sharding import shard_layout

    with fake_mesh(0, 2) as mesh:
        t = DTensor.from_local(torch.randn(4, 8), mesh, [Partial()])
        with pytest.raises(NotImplementedError, match=r"'w' is a DTensor with placements .*Partial.*Redistribute"):
            shard_layout("w", t)


def test_an_nvfp4_shard_reduces_its_amax_over_the_ranks_that_split_the_weight():
    """NOTE [NVFP4 tensor amax]: the tensor scale needs the whole weight's amax, so an nvfp4 shard's
    graph holds one all-reduce (max) more than stock Inductor's, and fp4_e2m1's (MX: block scales
    only) none. With the fake group the all-reduce returns the rank's own amax, so the sample is
    the eager op's with that amax (the 4-process test checks the real reduction)."""
    nv = PQTConfig(format="nvfp4")
    count = lambda c: "\n".join(c).count("torch.ops._c10d_functional.all_reduce")  # noqa: E731
    torch._dynamo.reset()
    with fake_mesh(1, 4) as mesh:
        m, full = _linear(mesh, "colwise")
        with pqt_compile.fixed_seed(SEED):
            got, nv_code = run_and_get_code(pqt_compile.compile(m, nv), torch.eye(full.shape[1]))
        torch._dynamo.reset()
        _, mx_code = run_and_get_code(pqt_compile.compile(m, CFG), torch.eye(full.shape[1]))
        torch._dynamo.reset()
        _, plain = run_and_get_code(torch.compile(m), torch.eye(full.shape[1]))
    assert count(nv_code) == count(plain) + 1 and count(mx_code) == count(plain)
    local = full.chunk(4, dim=0)[1].contiguous()
    strides, offset = [full.shape[1], 1], full.shape[1] * local.shape[0]
    want = torch.ops.pqt.sample.default(local, torch.tensor(SEED),
                                        torch.tensor(key_for_name("weight")), 1, nv.format, nv.block_code, nv.op_noise,
                                        nv.op_noise_std, torch.float32, strides, offset, local.abs().amax().reshape(1))
    assert torch.equal(got.t().contiguous().view(torch.int32), want.view(torch.int32))
