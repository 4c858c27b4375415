"""Both choices reachable (route 1): with several template choices and
options={"max_autotune": True, "benchmark_epilogue_fusion": True}, Inductor compiles the fused
prologue and keeps it only if it times faster than the template plus the separate sample
kernel (docs/design.md, "The GPU path": the cost model). No timing can be taken on CPU, so fixed
numbers stand in for them (tests/support/triton_cpu.py, fused_ms): fused faster -> the sample
runs inside the triton_tem_* kernel; fused slower -> a separate sample kernel. Either way the
output is the eager reference's, bit for bit (bf16)."""

import pytest
import torch

import pqt_compile
from pqt_compile import PQTConfig
from support.triton_cpu import fallback_calls, inductor_triton_on_cpu, kernels_computing_sample, unavailable

pytestmark = [
    pytest.mark.private_api,  # exercises private torch/Triton APIs: CI reruns it on the newest torch
    pytest.mark.skipif(unavailable() is not None, reason=str(unavailable())),
]


@pytest.mark.parametrize("fused_ms,in_template", [(1.0, True), (1e6, False)])
def test_timing_decides_between_prologue_and_separate_kernel(fused_ms, in_template):
    torch.manual_seed(0)
    m = torch.nn.Linear(64, 32, bias=False).to(torch.bfloat16)
    x = torch.randn(32, 64, dtype=torch.bfloat16)
    torch._dynamo.reset()
    codes: list[str] = []
    with inductor_triton_on_cpu(templates=True, mm_configs=2, fused_ms=fused_ms), \
            pqt_compile.compat.capture_output_code() as codes, torch.no_grad():
        cm = pqt_compile.compile(m, PQTConfig(sample_in_eval=True),
                                 options={"max_autotune": True, "benchmark_epilogue_fusion": True})
        with pqt_compile.fixed_seed(3):
            y = cm(x)
    holders = kernels_computing_sample(codes[-1])
    assert fallback_calls(codes[-1]) == 0
    assert len(holders) == 1 and holders[0].startswith("triton_tem") == in_template, holders
    ref = pqt_compile.reference.run(m, x, seed=3, config=PQTConfig(sample_in_eval=True))
    assert torch.equal(y.view(torch.int16), ref.view(torch.int16))
