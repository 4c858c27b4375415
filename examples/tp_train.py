"""PQT under tensor parallelism (DTensor weights): launch with torchrun (CPU/gloo or GPU/nccl).

    torchrun --nproc-per-node 4 examples/tp_train.py --steps 20 --layout tp --check
    torchrun --nproc-per-node 4 examples/tp_train.py --steps 20 --layout fsdp-tp   # a 2 x 2 mesh

Two layouts, each checked against one process by tests/distributed/test_tensor_parallel.py:

* `--layout tp`: one mesh over every rank; each block's fc1 is `ColwiseParallel` (its weight
  Shard(0): rows), fc2 `RowwiseParallel` (Shard(1): columns, the reduction axis), the stem and
  head stay plain replicated weights. Every rank reads the whole batch.
* `--layout fsdp-tp`: a 2-D mesh (dp, tp) = (world / 2, 2): the same plan on the tp axis, then
  `fully_shard(model)` on the dp axis (tp first, as torchtitan orders them); each dp rank reads
  its part of the batch. FSDP2 all-gathers along dp before the forward, so the compiled graph
  reads the tp shards, as in `--layout tp`. (Per-block `fully_shard` of a model compiled whole
  makes Dynamo run the root eagerly: see examples/fsdp_train.py for the per-block layout.)

Then `pqt_compile.compile(model)`. Each rank samples its shard of a DTensor weight where the
matmul reads it, as the slice of the full weight's sample: the draw index is the element's index
in the full weight, the key the full weight's name, and the blocks the full weight's (a shard
must hold whole blocks along the reduction axis, or the compile stops naming the sizes). So the
run equals one process with the global batch, and PQT adds no communication. Per rank, a step
costs one sampler pass over the rank's shards in the forward and one in the backward's
recompute: 1/tp of the weights' sampling work in one process.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pqt_compile  # noqa: E402
from fsdp_train import Net, train_steps  # noqa: E402  (the same model, batches and steps)

CONFIG = pqt_compile.PQTConfig(format="fp4_e2m1")
LAYOUTS = ("tp", "fsdp-tp")


def make_model() -> Net:
    """The FSDP example's model, wide enough (d = 64) that fc2's columns split into whole
    32-element blocks over up to 4 tensor-parallel ranks."""
    torch.manual_seed(0)
    return Net(d=64)


def parallelize(model: Net, layout: str) -> tuple[int, int]:
    """Apply the layout's plan (if a process group is up); returns (data-parallel rank, size)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    world = dist.get_world_size()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if layout == "tp":
        tp_mesh, dp_mesh = init_device_mesh(device, (world,), mesh_dim_names=("tp",)), None
    elif layout == "fsdp-tp":
        if world % 2:
            raise SystemExit(f"--layout fsdp-tp needs an even world size (a 2-way tp axis), got {world}")
        mesh = init_device_mesh(device, (world // 2, 2), mesh_dim_names=("dp", "tp"))
        tp_mesh, dp_mesh = mesh["tp"], mesh["dp"]
    else:
        raise ValueError(f"--layout must be one of {LAYOUTS}, got {layout!r}")
    for block in model.blocks:
        parallelize_module(block, tp_mesh, {"fc1": ColwiseParallel(), "fc2": RowwiseParallel()})
    if dp_mesh is None:
        return 0, 1
    from torch.distributed.fsdp import fully_shard

    fully_shard(model, mesh=dp_mesh)
    return dp_mesh.get_local_rank(), dp_mesh.size()


def train(steps: int, global_batch: int, layout: str = "tp", config: pqt_compile.PQTConfig = CONFIG,
          single: bool = False) -> dict:
    """Train in `layout` if a process group is up (and not `single`), else in one process;
    return the full state (DTensors gathered)."""
    distributed = not single and dist.is_available() and dist.is_initialized()
    device = torch.device("cuda" if distributed and torch.cuda.is_available() else "cpu")
    model = make_model().to(device)
    dp_rank, dp_size = parallelize(model, layout) if distributed else (0, 1)
    compiled = pqt_compile.compile(model, config)
    return train_steps(model, compiled, steps, global_batch, dp_rank, dp_size, device)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--global-batch", type=int, default=16)
    p.add_argument("--layout", choices=LAYOUTS, default="tp")
    p.add_argument("--check", action="store_true", help="rank 0 also trains in one process (on CPU) and prints the difference")
    a = p.parse_args()
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    state = train(a.steps, a.global_batch, a.layout)
    if dist.get_rank() == 0:
        print("trained; head weight checksum", float(state["head.weight"].sum()))
        if a.check:
            torch._dynamo.reset()  # a fresh compile of the same code, as a new process would
            one = train(a.steps, a.global_batch, single=True)
            diff = max(float((state[k].cpu() - one[k]).abs().max()) for k in one)
            print(f"one process with the global batch: max |difference| {diff:.3g}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
