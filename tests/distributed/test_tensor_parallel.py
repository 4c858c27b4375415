"""Tensor parallelism on CPU (gloo, 4 processes): the same result as one process with the global batch.

One spawn runs both layouts of examples/tp_train.py (process start-up and compiles dominate):
  * `tp`, in NVFP4: colwise fc1 (rows sharded) and rowwise fc2 (the reduction axis sharded) on a
    4-rank mesh: each rank samples its shards with the full weight's indices and blocks, and NVFP4's
    tensor scale, which needs the whole weight's amax, gets it by all-reducing (max) each shard's
    amax over the tp ranks (NOTE [NVFP4 tensor amax] in insert_sample.py);
  * `fsdp-tp`, in fp4_e2m1: the same plan on the tp axis of a 2 x 2 mesh, FSDP2 on the dp axis.
One format per layout keeps the test at two distributed compiles. The per-shard bits are checked
exactly in one process (tests/compiler/test_sharded_weights.py).
"""

import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from support.gloo import ROOT, free_port, join

pytestmark = pytest.mark.private_api  # compiles DTensor graphs through the backend: CI reruns it on the newest torch

WORLD, STEPS, GLOBAL_BATCH = 4, 5, 8
NVFP4_LAYOUT = "tp"


def _config(layout: str):
    from examples import tp_train

    return tp_train.CONFIG.replace(format="nvfp4", block_size=None) if layout == NVFP4_LAYOUT else tp_train.CONFIG


def _worker(rank: int, world: int, port: int, out: str) -> None:
    torch.set_num_threads(1)  # 4 processes on a 2-core machine
    join(rank, world, port)
    from examples import tp_train

    results = {}
    for layout in tp_train.LAYOUTS:
        torch._dynamo.reset()
        results[layout] = tp_train.train(STEPS, GLOBAL_BATCH, layout, config=_config(layout))
    # per_rank_noise would give each rank of one tensor-parallel model its own draw: refused on
    # every rank at compile time (before any collective runs, so no rank waits on another).
    torch._dynamo.reset()
    try:
        tp_train.train(1, GLOBAL_BATCH, NVFP4_LAYOUT, config=tp_train.CONFIG.replace(per_rank_noise=True))
        results["per_rank_noise"] = None
    except Exception as e:  # noqa: BLE001 - Dynamo wraps the backend's error
        results["per_rank_noise"] = str(e)
    if rank == 0:
        torch.save(results, out)
    dist.destroy_process_group()


def test_tensor_parallel_matches_one_process(tmp_path):
    sys.path.insert(0, ROOT)
    from examples import tp_train
    from examples.fsdp_train import train_steps

    out = str(tmp_path / "tp.pt")
    mp.spawn(_worker, args=(WORLD, free_port(), out), nprocs=WORLD)
    got = torch.load(out, weights_only=False)

    torch._dynamo.reset()
    single = tp_train.train(STEPS, GLOBAL_BATCH, single=True)
    torch._dynamo.reset()
    single_nvfp4 = tp_train.train(STEPS, GLOBAL_BATCH, single=True, config=_config(NVFP4_LAYOUT))
    plain = tp_train.make_model()  # plain eager training: no compile to pay for
    clean = train_steps(plain, plain, STEPS, GLOBAL_BATCH, 0, 1, torch.device("cpu"))
    start = {k: v for k, v in tp_train.make_model().state_dict().items()}
    assert set(tp_train.LAYOUTS) == {NVFP4_LAYOUT, "fsdp-tp"}
    assert "per_rank_noise=True with the tensor-parallel (DTensor) weight" in (got.pop("per_rank_noise") or "")
    for layout in tp_train.LAYOUTS:
        want = single_nvfp4 if layout == NVFP4_LAYOUT else single
        assert set(got[layout]) == set(want), layout
        for k in want:
            # The rowwise all-reduce sums 4 fp32 partial products, and FSDP averages 2 halves: a few ulps.
            assert torch.allclose(got[layout][k], want[k], rtol=1e-5, atol=1e-6), (layout, k)
    # NVFP4 trained on its own grid: another run than fp4_e2m1's (a shard's own amax would differ too,
    # but within a step; tests/compiler/test_sharded_weights.py checks the reduced amax per shard).
    assert not torch.allclose(single_nvfp4["blocks.0.fc1.weight"], single["blocks.0.fc1.weight"], rtol=1e-5, atol=1e-6)
    # The runs trained, and PQT was on for the sharded weights: a run without sampling ends elsewhere.
    for k in ("blocks.0.fc1.weight", "blocks.1.fc2.weight", "stem.weight", "head.weight"):
        assert not torch.allclose(single[k], start[k]), k
        assert not torch.allclose(clean[k], single[k], rtol=1e-5, atol=1e-6), k
