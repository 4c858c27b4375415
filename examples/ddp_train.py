"""PQT under DistributedDataParallel: launch with torchrun (CPU/gloo or GPU/nccl).

    torchrun --nproc-per-node 2 examples/ddp_train.py --steps 20

Every rank draws the same sample of a weight in a step (the seed is a pure function of the run
seed, the training step and the micro-batch; keys come from qualified names), so N ranks with
a global batch train as one process with that batch, however DDP's optimizer splits the
compiled graph. The sample is computed locally on each rank from its replica of the weight:
PQT adds no communication.

The model is compiled inside DDP: `DDP(pqt_compile.compile(model))`. The other order,
`pqt_compile.compile(DDP(model))`, compiles nothing for a torch.nn container such as
Sequential (DDP's forward graph-breaks and torch's own Sequential.forward is not compiled as
a top-level frame, torch 2.13); pqt_compile warns when a training call sampled nothing.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import pqt_compile  # noqa: E402


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 64), torch.nn.GELU(), torch.nn.Linear(64, 8))


def batch(step: int, global_batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(10_000 + step)
    return torch.randn(global_batch, 32, generator=g), torch.randn(global_batch, 8, generator=g)


def train(steps: int, global_batch: int, bucket_cap_mb: float = 25.0, single: bool = False) -> torch.nn.Module:
    """Train with DDP if a process group is up (and not `single`), else in one process; return the module."""
    distributed = not single and dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    device = torch.device("cuda" if distributed and torch.cuda.is_available() else "cpu")
    model = make_model().to(device)
    pqt_compile.register(model)  # keys from the model's own names, with or without the wrapper
    compiled = pqt_compile.compile(model, pqt_compile.PQTConfig(format="fp4_e2m1"))
    if distributed:
        compiled = DDP(compiled, bucket_cap_mb=bucket_cap_mb)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    pqt_compile.manual_seed(1)
    per_rank = global_batch // world
    for step in range(steps):
        x, y = batch(step, global_batch)
        x, y = (t[rank * per_rank : (rank + 1) * per_rank].to(device) for t in (x, y))
        loss = torch.nn.functional.mse_loss(compiled(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
    return model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--global-batch", type=int, default=16)
    p.add_argument("--check", action="store_true", help="rank 0 also trains in one process (on CPU) and prints the difference")
    a = p.parse_args()
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    model = train(a.steps, a.global_batch)
    if dist.get_rank() == 0:
        print("trained; first weight checksum", float(model[0].weight.detach().sum()))
        if a.check:
            one = train(a.steps, a.global_batch, single=True).state_dict()
            diff = max(float((v.cpu() - one[k]).abs().max()) for k, v in model.state_dict().items())
            moved = min(float((one[k] - v).abs().max()) for k, v in make_model().state_dict().items() if k.endswith("weight"))
            print(f"one process with the global batch: max |difference| {diff:.3g} (the least-moved weight moved {moved:.3g})")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
