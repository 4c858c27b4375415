"""PQT under FSDP2 (`fully_shard`): launch with torchrun (CPU/gloo or GPU/nccl).

    torchrun --nproc-per-node 2 examples/fsdp_train.py --steps 20 --shard blocks

Three layouts, each checked against one process by tests/distributed/test_fsdp.py:

* `--shard whole`: `fully_shard(model)` once, then `pqt_compile.compile(model)`: one graph.
* `--shard blocks` (per-block sharding, as in torchtitan): `fully_shard` every block, then the root; each
  block is compiled on its own (`block.compile(backend="pqt")`), and so are the root's own
  matmul modules (`model.head = torch.compile(model.head, backend="pqt")`). Compiling the root
  whole instead does not work in torch 2.11-2.13: FSDP2's hooks break the graph inside the
  loop over the blocks, Dynamo then runs the root's forward eagerly, and its weights would
  train without noise (pqt_compile warns, naming them, at the first optimizer step).
* `--shard compiled-blocks`: the same, in torchtitan's order: every block (and the stem and
  head) is swapped for its `torch.compile(..., backend="pqt")` wrapper first, then sharded.

The sample is taken on the full weight: FSDP2 all-gathers a block's parameters before its
forward (and again before its backward), the compiled block reads the unsharded weight, and
its key is that of the weight's full name (`pqt_compile.register(model)`), so the noise does
not depend on the sharding or the world size. PQT adds no communication: every rank computes
the sample locally from the weight it already gathered (the same sample on every rank, or its
own with `PQTConfig(per_rank_noise=True)`). Per rank it costs one pass of the sampler over
each unsharded weight in the forward and one in the backward's recompute, as in one process.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import pqt_compile  # noqa: E402

CONFIG = pqt_compile.PQTConfig(format="fp4_e2m1")


class Block(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, 2 * d)
        self.fc2 = nn.Linear(2 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(F.gelu(self.fc1(self.norm(x))))


class Net(nn.Module):
    """A stem, a stack of residual blocks and a head: the shape of a transformer's layout."""

    def __init__(self, d_in: int = 16, d: int = 32, d_out: int = 4, layers: int = 2) -> None:
        super().__init__()
        self.stem = nn.Linear(d_in, d)
        self.blocks = nn.ModuleList(Block(d) for _ in range(layers))
        self.head = nn.Linear(d, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def make_model() -> Net:
    torch.manual_seed(0)
    return Net()


def batch(step: int, global_batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(20_000 + step)
    return torch.randn(global_batch, 16, generator=g), torch.randn(global_batch, 4, generator=g)


def _distributed(single: bool) -> bool:
    return not single and dist.is_available() and dist.is_initialized()


def shard_and_compile(model: Net, shard: str, config: pqt_compile.PQTConfig = CONFIG, single: bool = False) -> nn.Module:
    """Apply FSDP2 (if a process group is up and not `single`) and PQT compilation in the given layout."""
    from torch.distributed.fsdp import fully_shard

    distributed = _distributed(single)
    if shard == "whole":
        if distributed:
            fully_shard(model)
        return pqt_compile.compile(model, config)  # registers the full names too
    if shard not in ("blocks", "compiled-blocks"):
        raise ValueError(f"--shard must be 'whole', 'blocks' or 'compiled-blocks', got {shard!r}")
    options = config.to_options()
    # torch.nn's own modules are not compiled by `Module.compile` (their forward is a skipped
    # frame, torch 2.11-2.13): the root's stem and head are swapped for their compiled
    # wrappers (keys ignore the wrapper's `_orig_mod`); so are the blocks in torchtitan's order.
    model.stem = torch.compile(model.stem, backend="pqt", options=options)
    model.head = torch.compile(model.head, backend="pqt", options=options)
    if shard == "compiled-blocks":  # compile, then shard the compiled wrappers
        for i, block in enumerate(model.blocks):
            model.blocks[i] = torch.compile(block, backend="pqt", options=options)
    if distributed:
        for block in model.blocks:
            fully_shard(block)
        fully_shard(model)
    # Full names for keys: FSDP2's unsharded parameters are named after these.
    pqt_compile.register(model)
    if shard == "blocks":  # shard, then compile each block in place
        for block in model.blocks:
            block.compile(backend="pqt", options=options)
    return model


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Unsharded parameters by their plain names (DTensors gathered, `_orig_mod.` dropped)."""
    out = {}
    for name, t in model.state_dict().items():
        full = t.full_tensor() if hasattr(t, "full_tensor") else t
        out[pqt_compile.naming.canonical_name(name)] = full.detach().clone()
    return out


def train(steps: int, global_batch: int, shard: str = "whole", config: pqt_compile.PQTConfig = CONFIG,
          single: bool = False) -> dict:
    """Train with FSDP2 if a process group is up (and not `single`), else in one process;
    return the full state."""
    distributed = _distributed(single)
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    device = torch.device("cuda" if distributed and torch.cuda.is_available() else "cpu")
    model = make_model().to(device)
    compiled = shard_and_compile(model, shard, config, single)
    return train_steps(model, compiled, steps, global_batch, rank, world, device)


def train_steps(model: nn.Module, compiled: nn.Module, steps: int, global_batch: int, rank: int, world: int,
                device: torch.device) -> dict:
    """`steps` SGD steps of `compiled` on data-parallel rank `rank`'s part of each global batch
    (of `world` parts); returns the full state. Shared by the distributed examples."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    pqt_compile.manual_seed(1)  # the noise of step s is then a function of s alone, in any layout
    per_rank = global_batch // world
    for step in range(steps):
        x, y = batch(step, global_batch)
        x, y = (t[rank * per_rank : (rank + 1) * per_rank].to(device) for t in (x, y))
        loss = F.mse_loss(compiled(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
    return full_state_dict(model)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--global-batch", type=int, default=16)
    p.add_argument("--shard", choices=("whole", "blocks", "compiled-blocks"), default="blocks")
    p.add_argument("--check", action="store_true", help="rank 0 also trains in one process (on CPU) and prints the difference")
    a = p.parse_args()
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    state = train(a.steps, a.global_batch, a.shard)
    if dist.get_rank() == 0:
        print("trained; head weight checksum", float(state["head.weight"].sum()))
        if a.check:
            one = train(a.steps, a.global_batch, "whole", single=True)
            diff = max(float((state[k].cpu() - one[k]).abs().max()) for k in one)
            moved = min(float((one[k] - v).abs().max()) for k, v in full_state_dict(make_model()).items() if k.endswith("weight"))
            print(f"one process with the global batch: max |difference| {diff:.3g} (the least-moved weight moved {moved:.3g})")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
