"""The GPU training step (issue 24), on a CUDA device: the GPU test tier (`pytest -m gpu`; skipped
without one, so CPU-only CI runs none of it). What the CPU cannot show:

- under bf16 autocast, the samples of a step are at most one extra kernel launch per sampled
  weight against plain Inductor, counted by the profiler on the device (the CPU holds the same
  count on the generated code: tests/compiler/lowering/test_launch_counts.py);
- a steady-state training step synchronises nothing: `torch.cuda.set_sync_debug_mode("error")`
  raises on any host-device synchronisation (NOTE [seed on the device] in graph_abi.py);
- `mode="reduce-overhead"` (CUDA graphs): every replay draws its own step's noise, and each step
  matches the eager reference at that step's seed.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import pqt_compile
from pqt_compile import PQTConfig, reference

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.private_api,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

CFG = PQTConfig(format="fp4_e2m1")


def _mlp(layers: int = 3, d: int = 256) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(*[nn.Linear(d, d) for _ in range(layers)]).cuda()


def _step(model, opt, x, autocast: bool = True) -> torch.Tensor:
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        out = model(x)
    out.float().square().mean().backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return out


def _kernels_per_step(model, opt, x) -> int:
    from torch.profiler import ProfilerActivity, profile

    for _ in range(3):
        _step(model, opt, x)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(2):
            _step(model, opt, x)
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    return len(kernels) // 2


def test_samples_cost_at_most_one_launch_per_weight_per_step():
    x = torch.randn(64, 256, device="cuda")
    plain_model, pqt_model = _mlp(), _mlp()
    plain = torch.compile(plain_model)
    pqt = pqt_compile.compile(pqt_model, CFG)
    plain_n = _kernels_per_step(plain, torch.optim.SGD(plain_model.parameters(), lr=1e-3), x)
    pqt_n = _kernels_per_step(pqt, torch.optim.SGD(pqt_model.parameters(), lr=1e-3), x)
    assert pqt_n - plain_n <= 3, (plain_n, pqt_n)  # 3 sampled weights


def test_a_training_step_does_not_synchronise():
    model = _mlp()
    compiled = pqt_compile.compile(model, CFG)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(64, 256, device="cuda")
    for _ in range(3):  # compile, first keys (made once per set of weights)
        _step(compiled, opt, x)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            _step(compiled, opt, x)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()


def test_cuda_graphs_replay_each_steps_noise_and_match_the_reference():
    from torch._dynamo.utils import counters

    model = _mlp(layers=2, d=128)
    compiled = pqt_compile.compile(model, CFG, mode="reduce-overhead")
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # the weights stay: outputs differ by the noise only
    x = torch.randn(16, 128, device="cuda")
    pqt_compile.manual_seed(5)
    counters.clear()
    outs = []
    for step in range(4):
        out = _step(compiled, opt, x, autocast=False)
        outs.append(out.detach().clone())
        ref = reference.run(model, x, seed=pqt_compile.step_seed(step, 0), config=CFG)
        # NOTE [tolerance] in tests/conftest.py: the same sampled weights, fp32 GEMMs in another order.
        assert (outs[-1] - ref).abs().max() <= 1e-5 * ref.abs().max(), step
    assert not counters["inductor"]["cudagraph_skips"], dict(counters["inductor"])
    assert not torch.equal(outs[2], outs[3])  # replays of one CUDA graph, each with its step's draw
