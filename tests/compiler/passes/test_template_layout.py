"""The template-layout rule (compiler/passes/template_layout.py) and when it applies (targets.py).

Graph-level: a GEMM operand that is a transpose of a 2-D sample reads pqt.sample_t (the same
values, [K, N] contiguous), one that reads the sample as it is reads the sample; nothing else
moves. The rule applies only where Inductor may use a Triton GEMM template; the eager
reference applies it under the same condition and computes the same values.
"""

import pytest
import torch
import torch._inductor.config as inductor_config
from torch.fx.experimental.proxy_tensor import make_fx
from torch.utils._python_dispatch import TorchDispatchMode

import pqt_compile
from models import MLP
from pqt_compile import PQTConfig
from pqt_compile.compiler.passes import emit_template_layouts
from pqt_compile.compiler.targets import cpp_backend, gemm_templates, triton_codegen

pytestmark = pytest.mark.private_api  # exercises private torch/Triton APIs: CI reruns it on the newest torch

CFG = PQTConfig()
ARGS = (CFG.format, CFG.block_code, CFG.noise, CFG.noise_std, torch.float32)
aten = torch.ops.aten
TRITON_TEMPLATES_ON_CPU = {"cpu_backend": "triton", "max_autotune": True, "max_autotune_gemm_backends": "TRITON"}


def _sample(w, s, k, axis):
    return torch.ops.pqt.sample.default(w, s, k, axis, *ARGS)


def linear_fwd_bwd(x, w, b, g, s, k):  # nn.Linear: forward addmm(b, x, w_hat^T), grad input g @ w_hat
    wt = aten.t(_sample(w, s, k, 1))
    return aten.addmm(b, x, wt), aten.mm(g, aten.t(wt))


def xw_fwd_bwd(x, w, b, g, s, k):  # x @ W / Conv1D: forward mm(x, w_hat), grad input g @ w_hat^T
    wh = _sample(w, s, k, 0)
    return aten.mm(x, wh), aten.mm(g, aten.permute(wh, [1, 0]))


def _graph(fn, w_shape):
    x, g = torch.randn(5, w_shape[1] if fn is linear_fwd_bwd else w_shape[0]), None
    w = torch.randn(*w_shape)
    n = w_shape[0] if fn is linear_fwd_bwd else w_shape[1]
    g = torch.randn(5, n)
    inputs = (x, w, torch.randn(n), g, torch.tensor(3), torch.tensor(4))
    return make_fx(fn, tracing_mode="fake")(*inputs), inputs


def _reads(gm):
    """For each GEMM in order: the op its weight-side operand comes from."""
    out = []
    for n in gm.graph.nodes:
        if n.target in (aten.mm.default, aten.addmm.default):
            out.append(n.args[-1].target)
    return out


@pytest.mark.parametrize("fn,shape,before,after,moved", [
    (linear_fwd_bwd, (12, 40), [aten.t.default, aten.t.default],
     [torch.ops.pqt.sample_t.default, torch.ops.pqt.sample.default], 2),
    (xw_fwd_bwd, (40, 12), [torch.ops.pqt.sample.default, aten.permute.default],
     [torch.ops.pqt.sample.default, torch.ops.pqt.sample_t.default], 1),
])
def test_each_gemm_reads_the_sample_in_its_own_layout(fn, shape, before, after, moved):
    gm, inputs = _graph(fn, shape)
    assert _reads(gm) == before
    want = gm(*inputs)
    assert emit_template_layouts(gm.graph) == moved
    gm.recompile()
    assert _reads(gm) == after
    # one sample_t at most, carrying the sample's tags; the old transposes are gone
    assert sum(n.target is aten.t.default or n.target is aten.permute.default for n in gm.graph.nodes) == 0
    for got, ref in zip(gm(*inputs), want):
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)  # same values; only the GEMM layout differs


def test_nothing_moves_where_the_rule_is_not_wanted():
    gm, _ = _graph(linear_fwd_bwd, (12, 40))
    text = str(gm.graph)
    assert emit_template_layouts(gm.graph, wanted=lambda device: False) == 0
    assert str(gm.graph) == text


def test_other_readers_and_3d_samples_are_left_alone():
    def fn(x, w, w3, s, k):
        wh = _sample(w, s, k, 1)
        w3h = _sample(w3, s, k, 2)
        return aten.mm(x, aten.t(wh)), wh * 2, aten.bmm(x.unsqueeze(0).expand(2, -1, -1), w3h.transpose(1, 2))

    gm = make_fx(fn, tracing_mode="fake")(torch.randn(3, 8), torch.randn(4, 8), torch.randn(2, 4, 8),
                                         torch.tensor(1), torch.tensor(2))
    emit_template_layouts(gm.graph)
    samples = [n for n in gm.graph.nodes if n.target is torch.ops.pqt.sample.default]
    assert len(samples) == 2  # the 2-D sample stays for `wh * 2`, the 3-D one for bmm
    assert [n.target for n in gm.graph.nodes].count(torch.ops.pqt.sample_t.default) == 1


def test_when_the_layout_is_emitted():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    # default: C++ on CPU, Triton on GPU but no GEMM template (cuBLAS) unless max-autotune
    assert cpp_backend(cpu) and not triton_codegen(cpu) and triton_codegen(cuda)
    assert not gemm_templates(cpu) and not gemm_templates(cuda)
    with inductor_config.patch(max_autotune=True):
        assert gemm_templates(cuda) and not gemm_templates(cpu)
        with inductor_config.patch(max_autotune_gemm_backends="ATEN"):
            assert not gemm_templates(cuda)
    with inductor_config.patch(TRITON_TEMPLATES_ON_CPU):
        assert gemm_templates(cpu) and not cpp_backend(cpu)


class _OpLog(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func)
        return func(*args, **(kwargs or {}))


def test_the_reference_follows_the_same_rule_and_values():
    torch.manual_seed(0)
    m = MLP()
    x = torch.randn(4, 32)
    runs = {}
    for name, patch in (("cpp", {}), ("templates", TRITON_TEMPLATES_ON_CPU)):
        m.zero_grad()
        with inductor_config.patch(patch), _OpLog() as log:
            y = pqt_compile.reference.run(m, x, seed=5, config=CFG)
            y.square().sum().backward()
        runs[name] = (y.detach(), [p.grad.clone() for p in m.parameters()], log.ops)
    assert torch.ops.pqt.sample_t.default not in runs["cpp"][2]
    assert runs["templates"][2].count(torch.ops.pqt.sample_t.default) == 2  # fc1 and fc2 (forward)
    torch.testing.assert_close(runs["templates"][0], runs["cpp"][0], rtol=1e-6, atol=1e-6)
    for a, b in zip(runs["templates"][1], runs["cpp"][1]):  # the identity gradient, transposed back
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
