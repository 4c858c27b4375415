"""DDP on CPU (gloo, 2 processes): the same result as one process with the global batch."""

import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import pytest

from support.gloo import ROOT, free_port, join

pytestmark = pytest.mark.private_api  # exercises private torch/Triton APIs: CI reruns it on the newest torch

def _worker(rank: int, world: int, port: int, bucket_cap_mb: float, out: str) -> None:
    join(rank, world, port)
    from examples.ddp_train import train

    model = train(5, 8, bucket_cap_mb)
    if rank == 0:
        torch.save(model.state_dict(), out)
    dist.destroy_process_group()

def _ddp(tmp_path, bucket_cap_mb: float) -> dict:
    out = str(tmp_path / f"ddp_{bucket_cap_mb}.pt")
    mp.spawn(_worker, args=(2, free_port(), bucket_cap_mb, out), nprocs=2)
    return torch.load(out, weights_only=True)

def test_ddp_matches_one_process(tmp_path):
    sys.path.insert(0, ROOT)
    from examples.ddp_train import make_model, train

    torch._dynamo.reset()
    single = train(5, 8).state_dict()
    start = make_model().state_dict()
    ddp = _ddp(tmp_path, 25.0)
    for k in single:
        # Gradients are averaged over ranks (fp32 all-reduce of two halves): a few ulps.
        assert torch.allclose(ddp[k], single[k], rtol=1e-5, atol=1e-6), k
    assert not torch.allclose(ddp["0.weight"], start["0.weight"])
    # and PQT was on in both: a clean run ends elsewhere.
    clean = make_model()
    opt = torch.optim.SGD(clean.parameters(), lr=0.05)
    from examples.ddp_train import batch

    for step in range(5):
        x, y = batch(step, 8)
        torch.nn.functional.mse_loss(clean(x), y).backward()
        opt.step()
        opt.zero_grad()
    assert not torch.allclose(clean.state_dict()["0.weight"], single["0.weight"], rtol=1e-5, atol=1e-6)
