import pytest
import torch
import torch.nn.functional as F

from models import MLP, TinyGPT
from pqt_compile import PQTConfig, key_for_name, reference, sample

pytestmark = pytest.mark.private_api  # exercises private torch/Triton APIs: CI reruns it on the newest torch


def test_sampled_weights_of_an_mlp_by_module_rules():
    m = MLP()
    got = reference.sampled_weights(m, seed=5)
    assert set(got) == {"fc1.weight", "fc2.weight"}
    want = sample(m.fc1.weight, seed=5, key=key_for_name("fc1.weight"), axis=1)
    assert torch.equal(got["fc1.weight"], want)


def test_run_equals_a_hand_written_forward():
    torch.manual_seed(0)
    m, x = MLP(), torch.randn(3, 5, 32)
    w1 = sample(m.fc1.weight, seed=9, key=key_for_name("fc1.weight"), axis=1)
    w2 = sample(m.fc2.weight, seed=9, key=key_for_name("fc2.weight"), axis=1)
    want = F.linear(F.gelu(F.linear(m.norm(x), w1, m.fc1.bias)), w2)
    assert torch.equal(reference.run(m, x, seed=9), want)


def test_tinygpt_edges_tied_and_kn_weights():
    torch.manual_seed(0)
    m, idx = TinyGPT(), torch.randint(0, 64, (2, 16))
    edges, skipped = reference.trace_weight_edges(m, idx)
    axes = {e.name: e.axis for e in edges}
    assert axes == {"wte.weight": 1, "qkv.weight": 1, "proj.weight": 1, "w_in": 0, "w_out": 0}
    reasons = {s.name: s.reason for s in skipped}
    assert reasons["wpe.weight"] == "not a matmul operand" and "ln1.weight" in reasons
    assert "scale" not in reasons  # buffers are never candidates
    # With example inputs, sampled_weights follows the traced rules (w_in / w_out included).
    sw = reference.sampled_weights(m, seed=1, example_args=(idx,))
    assert set(sw) == set(axes)
    assert torch.equal(sw["w_in"], sample(m.w_in, seed=1, key=key_for_name("w_in"), axis=0))


def test_tied_embedding_lookup_reads_the_clean_weight():
    torch.manual_seed(0)
    m, idx = TinyGPT(), torch.randint(0, 64, (2, 16))
    # Only the tied weight is sampled: the output then depends on the sample only through lm_head.
    cfg = PQTConfig(include=[r"^wte\.weight$"])
    out = reference.run(m, idx, seed=3, config=cfg)
    w_hat = sample(m.wte.weight, seed=3, key=key_for_name("wte.weight"), axis=1)
    with torch.no_grad():
        head = m.lm_head.weight
        m.lm_head = torch.nn.Linear(32, 64, bias=False)
        m.lm_head.weight = torch.nn.Parameter(w_hat)
        want = m(idx)  # the embedding still reads the clean (untied now) wte
        m.lm_head.weight = head
    assert torch.equal(out, want)


def test_run_under_autocast_samples_in_bf16_once():
    torch.manual_seed(0)
    m, x = MLP(), torch.randn(4, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = reference.run(m, x, seed=2)
    w1 = sample(m.fc1.weight, seed=2, key=key_for_name("fc1.weight"), axis=1, out_dtype=torch.bfloat16)
    w2 = sample(m.fc2.weight, seed=2, key=key_for_name("fc2.weight"), axis=1, out_dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = F.gelu(F.linear(m.norm(x), w1, m.fc1.bias))
        want = F.linear(h, w2)
    assert out.dtype == torch.bfloat16 and torch.equal(out, want)


def test_gradients_flow_to_the_parameters():
    torch.manual_seed(0)
    m, x = MLP(), torch.randn(4, 32)
    reference.run(m, x, seed=1).square().sum().backward()
    g_ref = m.fc1.weight.grad.clone()
    m.zero_grad()
    w1 = sample(m.fc1.weight, seed=1, key=key_for_name("fc1.weight"), axis=1)
    w2 = sample(m.fc2.weight, seed=1, key=key_for_name("fc2.weight"), axis=1)
    F.linear(F.gelu(F.linear(m.norm(x), w1, m.fc1.bias)), w2).square().sum().backward()
    assert torch.allclose(g_ref, m.fc1.weight.grad, rtol=0, atol=0)


def test_include_exclude():
    m = MLP()
    assert set(reference.sampled_weights(m, seed=0, config=PQTConfig(exclude=["fc2"]))) == {"fc1.weight"}
    edges, skipped = reference.trace_weight_edges(m, torch.randn(2, 32), config=PQTConfig(exclude=["fc2"]))
    assert [e.name for e in edges] == ["fc1.weight"]
    assert any(s.name == "fc2.weight" and "excluded" in s.reason for s in skipped)
