"""pqt_compile/moe.py and the expert rules that need no compile: the refusal of experts
implementations pqt cannot sample, of one scale across experts and of opaque custom ops;
`exclude` on routers and experts; quantize_model and the packed export on 3-D expert weights."""

import warnings

import pytest
import torch

import pqt_compile
from pqt_compile import PQTConfig, quantize, reference
from pqt_compile.moe import check_experts, experts_modules
from pqt_compile.selection import admits_fn
from support.moe_models import tiny_moe, tokens

pytestmark = pytest.mark.third_party  # goes through another library (transformers, compressed-tensors, gguf)

CFG = PQTConfig(format="fp4_e2m1")


@pytest.mark.parametrize("impl", ["eager", "deepgemm"])
def test_an_implementation_pqt_cannot_sample_is_refused_with_the_fix(impl):
    m = tiny_moe("mixtral", "batched_mm")
    m.config._experts_implementation = impl  # as from_pretrained(..., experts_implementation=impl) sets it
    with pytest.raises(ValueError, match=rf"experts_implementation='{impl}'.*set_experts_implementation\('grouped_mm'\)"):
        pqt_compile.compile(m, CFG)
    with pytest.raises(ValueError, match="experts_implementation"):
        reference.run(m, tokens(), seed=1, config=CFG, use_cache=False)
    # Excluding the expert weights is the other way out: nothing is left to sample there.
    check_experts(m, admits_fn(CFG.replace(exclude=("experts",)), m))


def test_experts_modules_reports_each_implementation():
    m = tiny_moe("gpt_oss", "grouped_mm")
    assert [(n, impl) for n, (_, impl) in experts_modules(m).items()] == [("model.layers.0.mlp.experts", "grouped_mm")]


def test_one_scale_across_experts_is_refused():
    m = tiny_moe("mixtral", "batched_mm")
    with pytest.raises(ValueError, match="holds experts along axis 0; block_size='tensor'"):
        reference.run(m, tokens(), seed=1, config=CFG.replace(block_size="tensor"), use_cache=False)


def test_exclude_keeps_routers_and_experts_clean():
    m = tiny_moe("mixtral", "batched_mm")
    cfg = CFG.replace(exclude=(r"mlp\.gate\.weight",))
    edges, skipped = reference.trace_weight_edges(m, tokens(), config=cfg, use_cache=False)
    names = {e.name for e in edges}
    assert "model.layers.0.mlp.experts.gate_up_proj" in names and "model.layers.0.mlp.gate.weight" not in names
    assert any(s.name == "model.layers.0.mlp.gate.weight" and "exclude" in s.reason for s in skipped)


@torch.library.custom_op("pqt_test::mystery_moe", mutates_args=())
def _mystery(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return torch.einsum("sk,enk->sn", x, w)


@_mystery.register_fake
def _(x, w):
    return x.new_empty(x.shape[0], w.shape[1])


class OpaqueExperts(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(4, 16, 32))

    def forward(self, x):
        return torch.ops.pqt_test.mystery_moe(x, self.w)


def test_a_weight_only_a_custom_op_reads_is_refused_not_left_clean():
    with pytest.raises(ValueError, match="'w' .* custom op pqt_test::mystery_moe.*_NAMED_MATMULS"):
        reference.trace_weight_edges(OpaqueExperts(), torch.randn(3, 32))
    edges, skipped = reference.trace_weight_edges(OpaqueExperts(), torch.randn(3, 32), config=CFG.replace(exclude=("w",)))
    assert not edges and skipped[0].name == "w"  # excluded: allowed


def test_an_embedding_written_as_indexing_is_not_a_path():
    """Only dim 0 of a weight with 3 or more dims picks experts: emb.weight[idx] stays a lookup."""

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Parameter(torch.randn(10, 16))
            self.experts = torch.nn.Parameter(torch.randn(3, 8, 16))

        def forward(self, idx):
            h = self.emb[idx]  # [S, 16]
            return torch.bmm(self.experts[idx % 3], h.unsqueeze(-1))

    edges, skipped = reference.trace_weight_edges(M(), torch.tensor([1, 4, 7]))
    assert [(e.name, e.axis, e.expert_axes) for e in edges] == [("experts", 2, (0,))]
    assert [s.name for s in skipped] == ["emb"]


@pytest.mark.parametrize("arch,axis", [("mixtral", 2), ("gpt_oss", 1)])
def test_quantize_model_and_the_packed_export_hold_expert_weights_per_expert(tmp_path, arch, axis):
    m = tiny_moe(arch, "batched_mm")
    experts = {n: p.detach().clone() for n, p in m.named_parameters() if p.dim() == 3}
    q = pqt_compile.quantize_model(tiny_moe(arch, "batched_mm"), CFG)  # module-type rules, no example inputs
    qp = dict(q.named_parameters())
    for n, w in experts.items():
        want = quantize(w, axis=axis, config=CFG)
        assert torch.equal(qp[n], want), n
        per_expert = torch.stack([quantize(w[e], axis=axis - 1, config=CFG) for e in range(w.shape[0])])
        assert torch.equal(want, per_expert)  # blocks never cross experts
        assert not torch.equal(want, w)
    path = tmp_path / "m.pt"
    pqt_compile.export.save(m, str(path), CFG)
    back = pqt_compile.export.load(str(path), tiny_moe(arch, "batched_mm", seed=5), CFG)
    for n in experts:
        assert torch.equal(dict(back.named_parameters())[n], qp[n]), n


def test_the_module_rules_place_every_matrix_of_an_experts_module():
    """gpt-oss's experts hold [E, N] biases beside their 3-D weights: added, never multiplied, so
    an export without example inputs has nothing to warn about (it warned on both biases)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        q = pqt_compile.quantize_model(tiny_moe("gpt_oss", "batched_mm"), CFG)
    experts = q.model.layers[0].mlp.experts
    assert experts.gate_up_proj_bias.dim() == 2
    assert torch.equal(experts.gate_up_proj_bias, tiny_moe("gpt_oss", "batched_mm").model.layers[0].mlp.experts.gate_up_proj_bias)
