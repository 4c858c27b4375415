"""MoE experts (transformers' 3-D expert Parameters) through the compiler: every expert weight
sampled with blocks along its own reduction axis, per expert, in each experts implementation that
runs on CPU; outputs and gradients equal `reference.run`, whose noise is the sample of the full
3-D Parameter (a per-expert or per-token draw would move the output by the size of the noise:
the `moved` check shows that size is 10^5 times the tolerance). The lowering's 3-D case is held
bit for bit in tests/compiler/lowering/test_sample_lowering.py.

Two compiles run in CI (the fallback grouped op with Mixtral's [E, N, K]; bmm with gpt-oss's
transposed [E, K, N]); the other implementations and models with pytest --run-slow.
"""

import pytest
import torch

import pqt_compile
from conftest import FP32_REL_TOL, max_rel_err
from pqt_compile import PQTConfig, reference
from support.moe_models import tiny_moe, tokens

pytestmark = pytest.mark.private_api  # compiles through the backend: CI reruns it on the newest torch

CFG = PQTConfig(format="fp4_e2m1")
# (arch, implementation, the expert weights' reduction axis, the matmul op that reads them)
CASES = [
    ("mixtral", "grouped_mm", 2, "transformers::grouped_mm_fallback"),
    ("gpt_oss", "batched_mm", 1, "aten::bmm"),
    pytest.param(("mixtral", "batched_mm", 2, "aten::bmm"), marks=pytest.mark.slow),
    pytest.param(("gpt_oss", "grouped_mm", 1, "transformers::grouped_mm_fallback"), marks=pytest.mark.slow),
    pytest.param(("qwen2_moe", "grouped_mm", 2, "transformers::grouped_mm_fallback"), marks=pytest.mark.slow),
    pytest.param(("qwen3_moe", "batched_mm", 2, "aten::bmm"), marks=pytest.mark.slow),
]


@pytest.fixture(scope="module", params=CASES, ids=lambda c: f"{c[0]}-{c[1]}")
def moe_step(request):
    arch, impl, axis, kind = request.param
    torch._dynamo.reset()
    m = tiny_moe(arch, impl)
    x = tokens()
    with pqt_compile.fixed_seed(21):
        out = pqt_compile.compile(m, CFG)(x, use_cache=False).logits
    out.square().mean().backward()
    grads = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
    m.zero_grad()
    ref = reference.run(m, x, seed=21, config=CFG, use_cache=False).logits
    ref.square().mean().backward()
    ref_grads = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
    clean = m(x, use_cache=False).logits.detach()
    edges, _ = reference.trace_weight_edges(m, x, config=CFG, use_cache=False)
    return m, x, axis, kind, out.detach(), ref.detach(), clean, grads, ref_grads, edges


def test_outputs_and_gradients_match_the_reference(moe_step):
    m, x, _, _, out, ref, clean, grads, ref_grads, _ = moe_step
    assert max_rel_err(out, ref) < FP32_REL_TOL
    assert max_rel_err(out, clean) > 1e3 * FP32_REL_TOL  # PQT moved the output
    assert grads.keys() == ref_grads.keys()
    experts = [n for n in grads if grads[n].dim() == 3]
    assert len(experts) == 2  # gate_up_proj and down_proj received gradients
    for n in grads:
        assert max_rel_err(grads[n], ref_grads[n]) < FP32_REL_TOL, n


def test_expert_weights_are_sampled_per_expert_along_their_reduction_axis(moe_step):
    m, _, axis, kind, *_, edges = moe_step
    by_name = {e.name: e for e in edges}
    experts = {n: p for n, p in m.named_parameters() if p.dim() == 3}
    for name in experts:
        e = by_name[name]
        assert (e.axis, e.expert_axes, e.kinds) == (axis, (0,), [kind]), name
        assert any("experts along axis 0" in note for note in e.notes)  # what explain and pqt-dump print
    routers = [n for n in by_name if n.endswith(("mlp.gate.weight", "mlp.router.weight"))]
    assert routers and by_name[routers[0]].axis == 1  # the router is a matmul weight too
    # The module-type rule (export without example inputs) agrees with the traced axes.
    rule = pqt_compile.selection.module_rule_axes(m, CFG)
    assert {n: rule[n] for n in experts} == {n: axis for n in experts}
