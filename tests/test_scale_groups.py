"""NVFP4 tensor-scale groups (scale_groups.py): the rule, the config field, and the eager paths
that follow it (the reference's samples, quantize / pack)."""

import pytest
import torch

import pqt_compile
from models import grouped_attention as attention
from pqt_compile import PQTConfig, key_for_name, reference, sample
from pqt_compile.config import FUSED_SIBLINGS
from pqt_compile.scale_groups import group_tensor_amax, groups_among, members_in, missing_members, shared_with

NV = PQTConfig(format="nvfp4")
NAMES = ["l.0.attn.q_proj.weight", "l.0.attn.k_proj.weight", "l.0.attn.v_proj.weight", "l.0.attn.o_proj.weight",
         "l.1.attn.q_proj.weight", "l.1.attn.k_proj.weight", "l.0.mlp.up_proj.weight", "l.0.mlp.gate_proj.weight",
         "l.0.attn.q_proj.bias", "q_proj.weight", "k_proj.weight"]


def test_groups_are_siblings_under_one_parent_in_config_order():
    assert groups_among(NAMES, NV) == [
        ("l.0.attn.q_proj.weight", "l.0.attn.k_proj.weight", "l.0.attn.v_proj.weight"),
        ("l.1.attn.q_proj.weight", "l.1.attn.k_proj.weight"),  # the members present only
        ("l.0.mlp.gate_proj.weight", "l.0.mlp.up_proj.weight"),
        ("q_proj.weight", "k_proj.weight"),  # a root's own modules
    ]
    assert shared_with("l.0.attn.k_proj.weight", NAMES, NV) == ("l.0.attn.q_proj.weight", "l.0.attn.v_proj.weight")
    assert shared_with("l.0.attn.o_proj.weight", NAMES, NV) == ()
    assert groups_among(NAMES, NV.replace(tensor_scale_groups=())) == []
    assert groups_among(NAMES, PQTConfig()) == []  # no tensor scale: no groups
    assert groups_among(["a.q_proj.weight", "b.k_proj.weight"], NV) == []  # other parents
    custom = NV.replace(tensor_scale_groups=[["q_proj", "o_proj"]])
    assert groups_among(NAMES, custom) == [("l.0.attn.q_proj.weight", "l.0.attn.o_proj.weight")]


def test_missing_members_are_the_models_siblings_a_graph_lacks():
    graph = ["l.0.attn.q_proj.weight", "l.0.attn.o_proj.weight"]
    assert missing_members(graph, NAMES, NV) == {"l.0.attn.q_proj.weight": ("l.0.attn.k_proj.weight",
                                                                           "l.0.attn.v_proj.weight")}
    assert missing_members(graph, graph, NV) == {}  # the model holds no sibling: its own scale
    assert missing_members(NAMES, NAMES, NV) == {}


def _exponent_of(amax: float) -> int:
    """k_t by its definition: 1344 2^k_t < amax <= 2688 2^k_t."""
    k = 0
    while 2688 * 2.0**k < amax:
        k += 1
    while 1344 * 2.0**k >= amax:
        k -= 1
    return k


def test_members_in_a_model_are_the_group_weights_the_config_samples():
    m = attention()
    assert members_in([(m, "")], NV) == {f"{i}.{p}.weight" for i in (0, 2) for p in ("q_proj", "k_proj", "v_proj")}
    assert members_in([(m, "")], NV.replace(exclude=["k_proj"])) == {f"{i}.{p}.weight" for i in (0, 2)
                                                                     for p in ("q_proj", "v_proj")}
    assert members_in([(m, "")], NV.replace(tensor_scale_groups=())) == frozenset()


def test_the_group_amax_is_the_largest_members_and_a_nan_member_by_mode():
    """A NaN member: the reference's group amax is NaN (as the compiled step's); the writers refuse
    it by its own name; quantize_model takes the finite members' amax."""
    m = attention()
    params = dict(m.named_parameters())
    shared = group_tensor_amax(params, NV)
    want = max(float(params[f"0.{p}.weight"].detach().abs().max()) for p in ("q_proj", "k_proj", "v_proj"))
    assert float(shared["0.k_proj.weight"]) == want == float(params["0.v_proj.weight"].detach().abs().max())
    assert shared["0.q_proj.weight"] is shared["0.v_proj.weight"] and "0.o_proj.weight" not in shared
    with torch.no_grad():
        params["2.k_proj.weight"][3, 3] = float("nan")
    assert torch.isnan(group_tensor_amax(params, NV)["2.q_proj.weight"])  # propagates, as in training
    with pytest.raises(ValueError, match=r"2\.k_proj\.weight holds NaN or Inf"):
        group_tensor_amax(params, NV, nonfinite="refuse")
    skipped = group_tensor_amax(params, NV, nonfinite="skip")
    assert float(skipped["2.q_proj.weight"]) == float(params["2.v_proj.weight"].detach().abs().max())
    assert "2.k_proj.weight" not in skipped  # its own amax, NaN: quantize leaves it as it is


def test_quantize_model_quantizes_the_finite_siblings_of_a_nan_member():
    m = attention(2.0**16)
    params = dict(m.named_parameters())
    with torch.no_grad():
        params["0.k_proj.weight"][0, 0] = float("nan")
    amax = params["0.v_proj.weight"].detach().abs().max().clone()
    want = pqt_compile.quantize(params["0.q_proj.weight"], axis=1, config=NV, tensor_amax=amax)
    k = params["0.k_proj.weight"].detach().clone()
    pqt_compile.quantize_model(m, NV, example_args=(torch.randn(2, 32),))
    assert torch.equal(params["0.q_proj.weight"], want)  # before: left as trained, with no word
    assert torch.equal(params["0.k_proj.weight"].view(torch.int32), k.view(torch.int32))  # as quantize leaves it


def test_a_packed_file_from_before_groups_reads_as_a_scale_per_weight(tmp_path):
    """Its tensor exponents are per weight: its config must not claim today's default groups."""
    from pqt_compile.export import packed

    path = str(tmp_path / "m.pt")
    packed.save(attention(), path, NV)
    blob = torch.load(path, weights_only=True)
    del blob["meta"]["config"]["tensor_scale_groups"]  # as pqt_compile wrote it before
    blob["sha256"] = packed._digest(blob["meta"], blob["tensors"])
    torch.save(blob, path)
    assert packed.saved_config(path) == NV.replace(tensor_scale_groups=())


def test_the_references_samples_take_the_groups_tensor_scale():
    """A member's sample is the op's with the group's amax as tensor_amax, which differs from its
    own-scale sample (the own scales differ here); a weight outside any group keeps its own."""
    m = attention(2.0**16)
    x = torch.randn(4, 32)
    got = reference.sampled_weights(m, seed=3, config=NV, example_args=(x,))
    params = dict(m.named_parameters())
    amax = params["0.v_proj.weight"].abs().max()
    for name in ("0.q_proj.weight", "0.k_proj.weight", "0.v_proj.weight"):
        want = sample(params[name], seed=3, key=key_for_name(name), axis=1, config=NV, tensor_amax=amax)
        assert torch.equal(got[name], want), name
    own = sample(params["0.q_proj.weight"], seed=3, key=key_for_name("0.q_proj.weight"), axis=1, config=NV)
    assert not torch.equal(got["0.q_proj.weight"], own)
    alone = sample(params["0.o_proj.weight"], seed=3, key=key_for_name("0.o_proj.weight"), axis=1, config=NV)
    assert torch.equal(got["0.o_proj.weight"], alone)


def test_quantize_and_pack_take_a_group_amax():
    torch.manual_seed(0)
    w = torch.randn(8, 32) * 0.01
    amax = torch.tensor(2.0**12)  # the group's: s_t 2^1, where w's blocks need subnormal E4M3 scales
    q = pqt_compile.quantize(w, axis=1, config=NV, tensor_amax=amax)
    p = pqt_compile.pack(w, axis=1, config=NV, tensor_amax=amax)
    assert p.tensor_exponent == _exponent_of(2.0**12) == 1
    assert pqt_compile.pack(w, axis=1, config=NV).tensor_exponent == _exponent_of(float(w.abs().max())) < -10
    assert torch.equal(pqt_compile.unpack(p), q) and not torch.equal(q, pqt_compile.quantize(w, axis=1, config=NV))
    zeros = pqt_compile.pack(torch.zeros(8, 32), axis=1, config=NV, tensor_amax=amax)  # an all-zero member
    assert zeros.tensor_exponent == 1 and not zeros.codes.any() and not zeros.scales.float().any()
    with pytest.raises(ValueError, match="below the weight's own max"):
        pqt_compile.quantize(w, axis=1, config=NV, tensor_amax=torch.tensor(1e-6))
    with pytest.raises(ValueError, match="tensor_amax applies to format 'nvfp4' only"):
        pqt_compile.pack(w, axis=1, config=PQTConfig(format="int4"), tensor_amax=amax)


def test_quantize_model_rounds_each_group_under_its_shared_scale():
    m = attention(2.0**16)
    params = dict(m.named_parameters())
    amax = params["0.v_proj.weight"].abs().max().clone()
    want = pqt_compile.quantize(params["0.q_proj.weight"], axis=1, config=NV, tensor_amax=amax)
    assert not torch.equal(want, pqt_compile.quantize(params["0.q_proj.weight"], axis=1, config=NV))
    alone = pqt_compile.quantize(params["0.o_proj.weight"], axis=1, config=NV)
    pqt_compile.quantize_model(m, NV, example_args=(torch.randn(2, 32),))
    assert torch.equal(params["0.q_proj.weight"], want) and torch.equal(params["0.o_proj.weight"], alone)


@pytest.mark.parametrize("value,match", [
    ([["q_proj"]], "two or more module names"),
    ("q_proj,k_proj", "a list of groups"),
    ([["attn.q_proj", "k_proj"]], "not a module name"),
    ([["q_proj", "k_proj"], ["k_proj", "v_proj"]], "more than one group"),
    ([["q_proj", 3]], "not a module name"),
    ([["q_proj", " k_proj"]], "not a module name"),
])
def test_bad_groups_are_refused_by_name(value, match):
    with pytest.raises(ValueError, match=match):
        PQTConfig(format="nvfp4", tensor_scale_groups=value)


def test_groups_default_by_format_and_follow_a_change_of_format():
    assert NV.tensor_scale_groups == FUSED_SIBLINGS and PQTConfig().tensor_scale_groups == ()
    with pytest.raises(ValueError, match="applies to format 'nvfp4' only"):
        PQTConfig(format="int4", tensor_scale_groups=[["q_proj", "k_proj"]])
    assert NV.replace(format="int4").tensor_scale_groups == ()
    assert PQTConfig(format="int4").replace(format="nvfp4").tensor_scale_groups == FUSED_SIBLINGS
    own = NV.replace(tensor_scale_groups=())
    assert own.replace(noise="uniform").tensor_scale_groups == ()  # a chosen value is kept
    # Lists (JSON, torch.compile options) become tuples: the config stays hashable and equal.
    assert PQTConfig(format="nvfp4", tensor_scale_groups=[list(g) for g in FUSED_SIBLINGS]) == NV
    assert PQTConfig.from_options(NV.to_options()) == NV and hash(NV)
