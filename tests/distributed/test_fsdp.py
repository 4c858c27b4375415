"""FSDP2 on CPU (gloo, 2 processes): the same result as one process with the global batch.

One spawn runs every case (process start-up and compiles dominate the cost):
  * `fully_shard(model)` + `pqt_compile.compile(model)` (one graph),
  * per-block `fully_shard` and per-block compilation, in both orders (shard then compile,
    and torchtitan's compile then shard),
  * `per_rank_noise`: each rank's own draw, reproducible from `rank_seed`,
  * the root compiled whole over per-block shards: Dynamo runs the root eagerly (torch
    2.11-2.13), and the weights it owns must be named in a warning, not silently left clean.
"""

import sys
import warnings

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import pytest

from support.gloo import ROOT, free_port, join

pytestmark = pytest.mark.private_api  # exercises private torch/Triton APIs: CI reruns it on the newest torch

STEPS, GLOBAL_BATCH = 5, 8
LAYOUTS = ("whole", "blocks", "compiled-blocks")

def _per_rank_outputs(per_rank_noise: bool) -> list[torch.Tensor]:
    """Every rank's sample of one weight (read through an identity input), gathered."""
    import pqt_compile

    torch.manual_seed(0)
    m = torch.nn.Linear(64, 4, bias=False)
    cm = pqt_compile.compile(m, pqt_compile.PQTConfig(format="fp4_e2m1", per_rank_noise=per_rank_noise))
    with pqt_compile.fixed_seed(5):
        mine = cm(torch.eye(64)).t().detach()
    out = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(out, mine)
    return out

def _worker(rank: int, world: int, port: int, out: str) -> None:
    join(rank, world, port)
    from examples import fsdp_train
    from torch.distributed.fsdp import fully_shard

    import pqt_compile

    results = {layout: fsdp_train.train(STEPS, GLOBAL_BATCH, layout) for layout in LAYOUTS}
    results["shared"] = _per_rank_outputs(False)
    results["per_rank"] = _per_rank_outputs(True)
    model = fsdp_train.make_model()
    for block in model.blocks:
        fully_shard(block)
    fully_shard(model)
    compiled = pqt_compile.compile(model, fsdp_train.CONFIG)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(2):  # the check runs at the first optimizer step
            compiled(fsdp_train.batch(step, 4)[0]).sum().backward()
            opt.step()
    results["warnings"] = [str(w.message) for w in caught if "never reached" in str(w.message)]
    if rank == 0:
        torch.save(results, out)
    dist.destroy_process_group()

def test_fsdp2_matches_one_process(tmp_path):
    sys.path.insert(0, ROOT)
    from examples import fsdp_train

    import pqt_compile
    from pqt_compile import key_for_name, rank_seed, sample

    out = str(tmp_path / "fsdp.pt")
    mp.spawn(_worker, args=(2, free_port(), out), nprocs=2)
    got = torch.load(out, weights_only=False)

    torch._dynamo.reset()
    single = fsdp_train.train(STEPS, GLOBAL_BATCH, "whole")
    start = {k: v for k, v in fsdp_train.make_model().state_dict().items()}
    clean = fsdp_train.train(STEPS, GLOBAL_BATCH, "whole", pqt_compile.PQTConfig(format="fp4_e2m1", exclude=(".",)))
    for layout in LAYOUTS:
        assert set(got[layout]) == set(single), layout
        for k in single:
            # Gradients are averaged over ranks (a reduce-scatter of two fp32 halves): a few ulps.
            assert torch.allclose(got[layout][k], single[k], rtol=1e-5, atol=1e-6), (layout, k)
    # The runs trained, and PQT was on: a run without sampling ends elsewhere.
    assert not torch.allclose(single["head.weight"], start["head.weight"])
    for k in ("stem.weight", "blocks.0.fc1.weight", "blocks.1.fc2.weight", "head.weight"):
        assert not torch.allclose(clean[k], single[k], rtol=1e-5, atol=1e-6), k

    torch.manual_seed(0)
    w = torch.nn.Linear(64, 4, bias=False).weight.detach()
    key = key_for_name("weight")
    shared, per_rank = got["shared"], got["per_rank"]
    assert torch.equal(shared[0], shared[1])  # by default every rank draws the same sample
    assert torch.equal(shared[0], sample(w, seed=5, key=key, axis=1, config=fsdp_train.CONFIG))
    assert not torch.equal(per_rank[0], per_rank[1])  # per_rank_noise: each its own ...
    for r in range(2):  # ... reproducible from the rank
        assert torch.equal(per_rank[r], sample(w, seed=rank_seed(5, r), key=key, axis=1, config=fsdp_train.CONFIG))

    assert len(got["warnings"]) == 1, got["warnings"]
    assert "stem.weight, head.weight" in got["warnings"][0] and "blocks." not in got["warnings"][0]
