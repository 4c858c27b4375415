"""Tensor-parallel (DTensor) weights are refused by name, not sampled as if a local shard were
the whole weight (one process, a 1-rank mesh: the compiled graph sees DTensor weights exactly as
with more ranks)."""

import pytest
import torch
import torch.distributed as dist

import pqt_compile
from models import MLP

pytestmark = pytest.mark.private_api  # compiles through the backend: CI reruns it on the newest torch


def test_a_dtensor_weight_is_refused_with_the_fix(tmp_path):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    torch._dynamo.reset()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        m = MLP()
        parallelize_module(m, init_device_mesh("cpu", (1,)), {"fc1": ColwiseParallel(), "fc2": RowwiseParallel()})
        with pytest.raises(Exception, match=r"weight 'fc\d.weight' is a DTensor .*Shard.*tensor parallelism.*FSDP2 or DDP"):
            pqt_compile.compile(m)(torch.randn(2, 3, 32))
    finally:
        dist.destroy_process_group()
        torch._dynamo.reset()
