"""What a GPU training step launches (issue 24), read off Inductor's Triton code for it, generated
on the CPU through the interpreter route (tests/support/triton_cpu.py) and run there.

A step of 3 x nn.Linear(64, 64) with plain `torch.compile` and with the pqt backend, in fp32 and
under bf16 autocast. NOTE [one kernel per weight] (lowering/sample.py): each sample is one
persistent-reduction kernel that reads the weight once, so
- under bf16 autocast it takes the place of the cast plain Inductor launches in the forward
  (equal counts there), and the backward adds one regeneration per weight whose grad-input GEMM
  reads it (layers 1 and 2: the first layer's input needs no gradient); plain Inductor keeps its
  forward cast for the backward;
- in fp32 there is no cast to replace: one kernel per weight in the forward, one per regeneration
  in the backward, and nothing else (no stream-word, iota or block-value kernels).
Before issue 24 the same step launched 6 more kernels per sampled weight (bf16: 17 plain, 41 pqt).
Also held: each sample kernel loads the weight once (one `tl.load` of its pointer), and the
samples are bit for bit the eager op's (the step's outputs equal the reference's in fp32).
"""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn as nn
from torch._inductor.utils import run_and_get_code

import pqt_compile
from pqt_compile.formula import MIX_MUL_1
from support.triton_cpu import inductor_triton_on_cpu, kernel_sources, launches, unavailable

pytestmark = [
    pytest.mark.private_api,
    pytest.mark.skipif(unavailable() is not None, reason=str(unavailable())),
]

LAYERS, D = 3, 64
CFG = pqt_compile.PQTConfig(format="fp6_e3m2")


def _step(model, x, autocast):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = model(x)
    out.float().square().mean().backward()
    return out


@pytest.fixture(scope="module", params=["fp32", "bf16"])
def steps(request):
    """{arm: (forward launches, backward launches, kernel sources, output)} for one dtype."""
    autocast = request.param == "bf16"
    x = torch.randn(16, D)
    out = {}
    for arm in ("plain", "pqt"):
        torch.manual_seed(0)
        model = nn.Sequential(*[nn.Linear(D, D) for _ in range(LAYERS)])
        torch._dynamo.reset()
        with inductor_triton_on_cpu():
            compiled = torch.compile(model) if arm == "plain" else pqt_compile.compile(model, CFG)
            with pqt_compile.fixed_seed(11):
                result, codes = run_and_get_code(_step, compiled, x, autocast)
        assert len(codes) == 2, "one forward and one backward graph"
        sources = {}
        for c in codes:
            sources.update(kernel_sources(c))
        out[arm] = (launches(codes[0]), launches(codes[1]), sources, result, model)
    return request.param, x, out


def test_samples_launch_at_most_one_kernel_per_weight_per_step(steps):
    dtype, _, arms = steps
    plain_fwd, plain_bwd = len(arms["plain"][0]), len(arms["plain"][1])
    pqt_fwd, pqt_bwd = len(arms["pqt"][0]), len(arms["pqt"][1])
    regenerated = LAYERS - 1  # the first layer's grad-input GEMM is not needed
    if dtype == "bf16":
        assert pqt_fwd == plain_fwd, (arms["plain"][0], arms["pqt"][0])
        assert pqt_bwd == plain_bwd + regenerated, (arms["plain"][1], arms["pqt"][1])
        assert (pqt_fwd + pqt_bwd) - (plain_fwd + plain_bwd) <= LAYERS
    else:
        assert pqt_fwd == plain_fwd + LAYERS, (arms["plain"][0], arms["pqt"][0])
        assert pqt_bwd == plain_bwd + regenerated, (arms["plain"][1], arms["pqt"][1])


def test_each_sample_kernel_loads_the_weight_once(steps):
    _, _, arms = steps
    step_launches = arms["pqt"][0] + arms["pqt"][1]
    sources = arms["pqt"][2]
    sample_kernels = {name for name, src in sources.items() if str(MIX_MUL_1) in src}
    assert sample_kernels
    for name in sample_kernels:
        # The weight is the kernel's first argument (a primal); it is read by one load.
        calls = [line for line in step_launches if line.startswith(name + ".run(")]
        assert calls and all(re.match(rf"{name}\.run\(primals_\d+,", line) for line in calls), calls
        assert sources[name].count("tl.load(in_ptr0 +") == 1, name
        assert re.search(r"\bxnumel = 1\b", sources[name]) is None  # no one-element (per-call) kernel


def test_the_compiled_step_is_the_reference_step(steps):
    dtype, x, arms = steps
    if dtype == "bf16":
        pytest.skip("bf16 GEMMs: the fp32 case holds the samples to the reference")
    model, result = arms["pqt"][4], arms["pqt"][3]
    ref = pqt_compile.reference.run(model, x, seed=11, config=CFG)
    # NOTE [tolerance] in tests/conftest.py: the same sampled weights, fp32 GEMMs in another order.
    assert (result - ref).abs().max() <= 2.0**-16 * ref.abs().max()
