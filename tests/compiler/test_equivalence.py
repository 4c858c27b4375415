"""Compiled PQT against the eager reference: same sampled weights, so outputs and gradients
agree to fp32 reassociation (NOTE [tolerance] in conftest.py); and 10 training steps agree.

Each model is compiled once (module fixtures): CPU compiles are the slow part of the suite.
"""

import copy
import warnings

import pytest
import torch

import pqt_compile
from conftest import FP32_REL_TOL, max_rel_err
from models import MLP, BlockLoop, TinyGPT
from passes.test_weight_edges import Zoo
from pqt_compile import key_for_name, reference, sample
from pqt_compile.tools.check import GRAD_FLOOR

pytestmark = pytest.mark.private_api  # exercises private torch/Triton APIs: CI reruns it on the newest torch


def hf_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=2, resid_pdrop=0.0,
                     embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(cfg)


def hf_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, max_position_embeddings=32, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    return LlamaForCausalLM(cfg)


def _logits(out):
    return out.logits if hasattr(out, "logits") else out


def _compile(model, entry: str):
    """`model` compiled by one of the three entry points (README, "Using the backend")."""
    if entry == "torch.compile":
        return torch.compile(model, backend="pqt")
    if entry == "model.compile":
        model.compile(backend="pqt")
        return model
    return pqt_compile.compile(model)


# (factory, inputs, kwargs, entry point). Each case compiles once; the HF models go through the
# entry points that named weights after Dynamo's view of the frame before issue 25 (Llama's
# forward is wrapped by a *args decorator in transformers 5.25).
CASES = {
    "mlp": (MLP, lambda: (torch.randn(3, 7, 32),), {}, "pqt_compile.compile"),
    "zoo": (Zoo, lambda: (torch.randn(2, 5, 16), torch.randint(0, 10, (2, 5))), {}, "pqt_compile.compile"),
    "tinygpt": (TinyGPT, lambda: (torch.randint(0, 64, (2, 16)),), {}, "pqt_compile.compile"),
    "hf_gpt2": (hf_gpt2, lambda: (torch.randint(0, 64, (2, 16)),), {"use_cache": False}, "model.compile"),
    "hf_llama": (hf_llama, lambda: (torch.randint(0, 64, (2, 16)),), {"use_cache": False}, "torch.compile"),
}


@pytest.fixture(scope="module", params=list(CASES))
def compiled_step(request):
    """One compiled training step and the same step through the reference, per model."""
    torch._dynamo.reset()
    make, make_args, kwargs, entry = CASES[request.param]
    torch.manual_seed(0)
    model = make()
    args = make_args()
    clean = _logits(model(*args, **kwargs)).detach()  # before compiling: model.compile compiles `model` itself
    cm = _compile(model, entry)
    with pqt_compile.fixed_seed(21):
        out = _logits(cm(*args, **kwargs))
    out.square().mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    ref = _logits(reference.run(model, *args, seed=21, **kwargs))
    ref.square().mean().backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return request.param, out.detach(), ref.detach(), clean, grads, ref_grads


def test_outputs_match_the_reference(compiled_step):
    name, out, ref, clean, _, _ = compiled_step
    assert max_rel_err(out, ref) < FP32_REL_TOL, name
    assert max_rel_err(out, clean) > 100 * FP32_REL_TOL, name  # and PQT did change the output


def test_gradients_match_the_reference(compiled_step):
    name, _, _, _, grads, ref_grads = compiled_step
    assert grads.keys() == ref_grads.keys()
    worst = max(max_rel_err(grads[n], ref_grads[n]) for n in grads)
    assert worst < FP32_REL_TOL, name


def test_autocast_bf16_samples_once_in_bf16():
    torch._dynamo.reset()
    torch.manual_seed(0)
    m = torch.nn.Linear(64, 24, bias=False)
    cm = pqt_compile.compile(m)
    with torch.autocast("cpu", dtype=torch.bfloat16), pqt_compile.fixed_seed(4):
        y = cm(torch.eye(64))  # bf16 mm of an identity: exact, so y^T is the bf16 sample
    want = sample(m.weight, seed=4, key=key_for_name("weight"), axis=1, out_dtype=torch.bfloat16)
    assert y.dtype == torch.bfloat16 and torch.equal(y.t(), want)


def test_ten_training_steps_match_the_reference():
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = TinyGPT()
    twin = copy.deepcopy(model)
    other = copy.deepcopy(model)  # trained on other seeds: must end up measurably elsewhere
    cm = pqt_compile.compile(model)
    opt_c = torch.optim.SGD(other.parameters(), lr=0.05, momentum=0.9)
    # SGD, not Adam: Adam divides by sqrt(v), which turns the ~1e-9 rounding noise of a gradient
    # that is zero in exact arithmetic (the key bias of attention: softmax ignores a constant
    # added to every score) into full-size steps of random sign. SGD stays linear in the gradient.
    opt_a = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    opt_b = torch.optim.SGD(twin.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    for step in range(10):
        idx = torch.randint(0, 64, (2, 16), generator=g)
        tgt = torch.randint(0, 64, (2, 16), generator=g)
        with pqt_compile.fixed_seed(1000 + step):
            loss_a = torch.nn.functional.cross_entropy(cm(idx).flatten(0, 1), tgt.flatten())
        loss_a.backward()
        opt_a.step()
        opt_a.zero_grad()
        loss_b = torch.nn.functional.cross_entropy(reference.run(twin, idx, seed=1000 + step).flatten(0, 1), tgt.flatten())
        loss_b.backward()
        opt_b.step()
        opt_b.zero_grad()
        torch.nn.functional.cross_entropy(reference.run(other, idx, seed=5000 + step).flatten(0, 1), tgt.flatten()).backward()
        opt_c.step()
        opt_c.zero_grad()
        assert abs(loss_a.item() - loss_b.item()) < 1e-4 * abs(loss_b.item()), step
    # Per-step gradients agree to ~1e-6 relative; ten momentum steps keep that below 1e-4 of each
    # tensor's scale. Other seeds (other noise) land far outside that tolerance.
    for (n, a), b in zip(model.named_parameters(), twin.parameters()):
        assert max_rel_err(a, b) < 1e-4, n
    assert max_rel_err(model.qkv.weight, other.qkv.weight) > 100 * 1e-4


class _FrozenStem(torch.nn.Module):
    """fc1 frozen (the fine-tuning pattern), an optional graph break after it."""

    def __init__(self, broken: bool) -> None:
        super().__init__()
        self.broken = broken
        self.fc1, self.fc2 = torch.nn.Linear(32, 32), torch.nn.Linear(32, 4)
        self.fc1.requires_grad_(False)

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        if self.broken:
            torch._dynamo.graph_break()  # fc1's graph has no input that requires grad
        return self.fc2(h)


@pytest.mark.parametrize("broken", [False, True], ids=["one_graph", "frozen_graph_of_its_own"])
def test_a_frozen_weight_is_sampled_wherever_dynamo_splits(broken):
    """compiler/backend.py NOTE [training graphs]: a frozen weight is sampled in training, as the
    reference samples it, also when its graph is one where no input requires grad (AOTAutograd's
    inference graph: before, it ran clean there and no warning said so); eval mode stays clean."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    m, x = _FrozenStem(broken), torch.randn(4, 32)
    cm = pqt_compile.compile(m, pqt_compile.PQTConfig(format="int4"))
    with pqt_compile.fixed_seed(7):
        y = cm(x)
    cfg = pqt_compile.PQTConfig(format="int4")
    want = reference.run(m, x, seed=7, config=cfg)
    fc1_clean = reference.run(m, x, seed=7, config=cfg.replace(exclude=("fc1",)))
    assert max_rel_err(y, want) < FP32_REL_TOL
    assert max_rel_err(y, fc1_clean) > 100 * FP32_REL_TOL  # fc1's noise is visible
    m.eval()
    with pqt_compile.fixed_seed(7):
        assert torch.equal(cm(x), m(x))


def test_a_frozen_backbone_compiled_alone_draws_afresh_at_each_step():
    """steps.py NOTE [frozen graphs]: no backward pass runs through a frozen backbone's graph, and
    the head trains without pqt; each optimizer step still starts a new step of the seed rule
    (before the fix for frozen graphs the backbone ran clean; a sampled one must not keep one draw)."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    backbone, head = MLP(), torch.nn.Linear(32, 4)
    backbone.requires_grad_(False)
    cfg = pqt_compile.PQTConfig(format="int4")
    compiled = pqt_compile.compile(backbone, cfg)
    opt = torch.optim.SGD(head.parameters(), lr=0.1)
    pqt_compile.manual_seed(0)
    x = torch.randn(4, 32)
    features = []
    for step in range(3):
        h = compiled(x)
        assert max_rel_err(h, reference.run(backbone, x, seed=pqt_compile.step_seed(step, 0), config=cfg)) < FP32_REL_TOL
        features.append(h)
        head(h).square().mean().backward()
        opt.step()
        opt.zero_grad()
    assert pqt_compile.seed_state()["step"] == 3
    assert not torch.equal(features[0], features[1]) and not torch.equal(features[1], features[2])


def test_a_graph_break_in_a_block_loop_trains_as_the_unbroken_model():
    """torch.compile(model, backend="pqt") of a loop over blocks with a graph break after block 1:
    Dynamo skips the forward and compiles each block's frame (one graph for all blocks). Each
    weight is still keyed by its name in the model (issue 25: every block was keyed `fc.weight`
    before, and 3 SGD steps ended 2.25e-3 away from the unbroken model), so 3 steps train exactly
    as the same model compiled whole, and as the reference; no guard warns."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    broken, whole = BlockLoop(broken=True), BlockLoop(broken=False)
    whole.load_state_dict(broken.state_dict())
    twin = copy.deepcopy(whole)
    models = {"broken": broken, "whole": whole, "reference": twin}
    calls = {"broken": torch.compile(broken, backend="pqt"), "whole": torch.compile(whole, backend="pqt"),
             "reference": lambda x, seed: reference.run(twin, x, seed=seed)}
    opts = {k: torch.optim.SGD(m.parameters(), lr=0.1) for k, m in models.items()}
    g = torch.Generator().manual_seed(1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(3):
            # x requires grad, as every block's input then does: one block graph, no recompile
            x, tgt = torch.randn(8, 16, generator=g).requires_grad_(), torch.randn(8, 16, generator=g)
            losses = {}
            for k, call in calls.items():
                if k == "reference":
                    y = call(x, 500 + step)
                else:
                    with pqt_compile.fixed_seed(500 + step):
                        y = call(x)
                losses[k] = torch.nn.functional.mse_loss(y, tgt)
                losses[k].backward()
                opts[k].step()
                opts[k].zero_grad()
            assert torch.equal(losses["broken"], losses["whole"]), step
            assert abs(losses["broken"].item() - losses["reference"].item()) < FP32_REL_TOL * losses["reference"].item()
    assert not [w for w in caught if "pqt:" in str(w.message)]
    from pqt_compile import guards

    for (n, a), b, c in zip(broken.named_parameters(), whole.parameters(), twin.parameters()):
        assert guards.keyed_name(a) == n  # its own name, not the block's
        assert torch.equal(a, b), n  # the same samples and the same kernels per block: bit for bit
        assert max_rel_err(a, c) < FP32_REL_TOL, n
    moved = max(max_rel_err(a, b) for a, b in zip(broken.parameters(), BlockLoop(broken=False).parameters()))
    assert moved > 0.1  # (sanity: the steps did move the weights)


# The full matrix (slow): the HF zoo (tests/support/hf_zoo.py: 2 layers, d 64) through each entry
# point, compiled step against the reference. In CI: hf_gpt2 (model.compile) and hf_llama
# (torch.compile) above, and tests/test_naming.py's names through every entry point.
@pytest.mark.slow
@pytest.mark.third_party
@pytest.mark.parametrize("entry", ["torch.compile", "model.compile", "pqt_compile.compile"])
@pytest.mark.parametrize("name", ["gpt2", "llama", "mistral", "qwen2", "phi3", "gemma", "gpt_neox", "opt", "bert"])
def test_hf_zoo_compiled_step_matches_the_reference_through_every_entry_point(name, entry):
    from support.hf_zoo import KWARGS, ZOO, inputs, logits

    torch._dynamo.reset()
    model = ZOO[name]().train()
    args, kwargs = inputs(name), KWARGS[name]
    cm = _compile(model, entry)
    with pqt_compile.fixed_seed(8):
        out = logits(cm(*args, **kwargs))
    out.square().mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    ref = logits(reference.run(model, *args, seed=8, **kwargs))
    ref.square().mean().backward()
    assert max_rel_err(out, ref) < FP32_REL_TOL
    ref_grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert grads.keys() == ref_grads.keys()
    # The key bias of OPT's and BERT's attention has a gradient that is zero in exact arithmetic
    # (softmax ignores a constant added to every score): rounding noise in both runs. Each
    # gradient is judged against max(its scale, GRAD_FLOOR x the largest), as pqt-check does
    # (tools/check.py NOTE [gradient floor]).
    floor = GRAD_FLOOR * max(float(g.abs().max()) for g in ref_grads.values())
    worst = max(float((grads[n] - ref_grads[n]).abs().max()) / max(float(ref_grads[n].abs().max()), floor)
                for n in grads)
    assert worst < FP32_REL_TOL
    torch._dynamo.reset()
