"""selection.py: the one rule of which weights are sampled."""

import pytest
import torch
import torch.nn as nn

from models import TinyGPT
from pqt_compile import PQTConfig, reference
from pqt_compile.selection import Reason, admits, could_be_sampled, module_rule_axes, skip_reason

pytestmark = pytest.mark.third_party  # goes through another library (transformers, compressed-tensors, gguf)


def test_include_and_exclude_match_any_name_of_a_tied_weight():
    cfg = PQTConfig(include=[r"\.attn\."], exclude=["lm_head"])
    assert admits(cfg, "h.0.attn.c_attn.weight") and not admits(cfg, "h.0.mlp.c_fc.weight")
    assert not admits(PQTConfig(exclude=["lm_head"]), "wte.weight", ("lm_head.weight",))
    assert admits(PQTConfig(include=["lm_head"]), "wte.weight", ("lm_head.weight",))


def test_skip_reasons_in_rule_order():
    ok = dict(dtype=torch.float32, ndim=2, forward_matmul=True, single_axis=True, admitted=True)
    assert skip_reason(**ok) is None
    assert skip_reason(**{**ok, "dtype": torch.int8}) == Reason.DTYPE.format(dtype=torch.int8)
    assert skip_reason(**{**ok, "forward_matmul": False, "ndim": 1}) == Reason.NOT_MATMUL
    assert skip_reason(**{**ok, "ndim": 1}) == Reason.NOT_MATRIX
    assert skip_reason(**{**ok, "single_axis": False}) == Reason.MIXED_AXES
    assert skip_reason(**{**ok, "admitted": False}) == Reason.EXCLUDED


def test_the_module_rules_agree_with_the_graph_rules_where_both_apply():
    """Export without example inputs uses module types; they must pick what the pass picks."""
    transformers = __import__("pytest").importorskip("transformers")
    cfg = PQTConfig(exclude=["c_proj"])
    m = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=1, n_head=2))
    idx = torch.randint(0, 64, (1, 8))
    traced = reference.sampled_axes(m, cfg, (idx,))
    assert module_rule_axes(m, cfg) == traced and traced  # Conv1D axis 0, the tied head under wte
    assert "transformer.wte.weight" in traced and not any("c_proj" in n for n in traced)


def test_could_be_sampled():
    cfg = PQTConfig()
    assert could_be_sampled(nn.Parameter(torch.zeros(4, 4)), cfg, "w")
    assert not could_be_sampled(nn.Parameter(torch.zeros(4)), cfg, "b")
    assert not could_be_sampled(torch.zeros(4, 4), cfg, "buffer")
    assert not could_be_sampled(nn.Parameter(torch.zeros(4, 4)), PQTConfig(exclude=["w"]), "w")
    assert could_be_sampled(TinyGPT().w_in, cfg, "w_in")
