"""explain / pqt-dump, checked against ground truth (the model's own matmul weights)."""

import json
import os

import pytest
import torch
import torch.nn as nn

import pqt_compile
from models import MLP, WithGraphBreak
from pqt_compile import PQTConfig, steps
from pqt_compile.tools import cli
from pqt_compile.formula import MIX_MUL_1

pytestmark = pytest.mark.private_api  # exercises private torch/Triton APIs: CI reruns it on the newest torch


def matmul_weights(model: nn.Module) -> set[str]:
    """Ground truth without the compiler: Linear / Conv1D weights, tied ones under their first name."""
    canon = {id(p): n for n, p in model.named_parameters()}
    return {canon[id(m.weight)] for m in model.modules() if isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D"}


@pytest.fixture(scope="module")
def gpt2_report():
    model, args = cli.build("gpt2-tiny", None, 2, 16, None)
    return model, pqt_compile.explain(model, *args, config=PQTConfig(exclude=["lm_head"]))


def test_sampled_are_the_admitted_matmul_weights(gpt2_report):
    model, r = gpt2_report
    truth = matmul_weights(model) - {"transformer.wte.weight"}  # excluded through its alias lm_head
    assert {s.name for s in r.sampled} == truth
    assert all(s.forward_uses >= 1 and s.backward_uses >= 1 for s in r.sampled)
    assert all(s.axis == 0 for s in r.sampled)  # GPT-2's Conv1D stores [K, N]
    reasons = {u.name: u.reason for u in r.unsampled}
    assert "excluded" in reasons["transformer.wte.weight"]
    assert reasons["transformer.wpe.weight"] == "not a matmul operand"
    assert r.graphs == 1 and r.recompiles == 0 and r.graph_breaks == []


def test_landing_and_marked_output_code(gpt2_report):
    _, r = gpt2_report
    assert all(s.landed.startswith(("fused into kernel cpp_", "materialised by its own kernel cpp_")) for s in r.sampled)
    code = "\n".join(v for k, v in r.artifacts.items() if k.startswith("output_code"))
    assert "# >>> PQT:" in code and str(MIX_MUL_1) in code


def test_saved_files(gpt2_report, tmp_path):
    _, r = gpt2_report
    paths = r.save(str(tmp_path))
    names = {os.path.basename(p) for p in paths}
    assert {"summary.txt", "report.json", "00_dynamo_graph.txt", "partitioned_00_forward.txt", "partitioned_01_backward.txt"} <= names
    assert any(n.startswith("joint_") and "before" in n for n in names) and any("after" in n for n in names)
    after = next(p for p in paths if "after_pqt_sample_pass" in p)
    assert "pqt.sample.default" in open(after).read()
    assert "pqt.sample" not in open(next(p for p in paths if "before_pqt_sample_pass" in p)).read()
    assert json.load(open(tmp_path / "report.json"))["graphs"] == 1
    assert "transformer.h.0.mlp.c_fc.weight" in open(tmp_path / "summary.txt").read()


def test_graph_break_is_reported_and_both_pieces_sampled():
    r = pqt_compile.explain(WithGraphBreak(), torch.randn(2, 16))
    assert r.graphs == 2 and len(r.graph_breaks) >= 1
    assert {s.name for s in r.sampled} == {"a.weight", "b.weight"}
    # Each piece's sample found in its own code: both graphs name their inputs primals_1, ..., and
    # a.weight was "not found in the output code" while b.weight's label sat on a's kernel.
    assert all(s.landed.startswith("fused into kernel") for s in r.sampled), r.sampled
    marks = {k: [line for line in v.splitlines() if ">>> PQT" in line] for k, v in r.artifacts.items() if k.startswith("output_code")}
    assert marks["output_code_00.py"] == ["# >>> PQT: cpp_fused_sample_0 computes the sample of a.weight"], marks
    assert any("b.weight" in m for v in marks.values() for m in v)
    # Every pass of both graphs dumped (each compile numbers its passes from 1: one graph's overwrote the other's).
    joints = [k for k in r.artifacts if k.startswith("joint_")]
    assert len(joints) == 2 * 2 * len({k.split("_", 3)[3] for k in joints}), sorted(joints)


def test_buffer_feeding_a_matmul_is_reported_not_sampled():
    class WithBuffer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8, 8)
            self.register_buffer("proj", torch.randn(8, 8))

        def forward(self, x):
            return self.fc(x) @ self.proj

    r = pqt_compile.explain(WithBuffer(), torch.randn(2, 8))
    assert {s.name for s in r.sampled} == {"fc.weight"}
    assert {u.name: u.reason for u in r.unsampled}["proj"] == "not a Parameter (a buffer)"


def test_explain_leaves_other_compiled_models_and_the_seed_stream_alone():
    """No torch._dynamo.reset(): a model compiled before explain keeps its compiled code (no
    recompile after explain), keeps sampling, and the seed stream is where it was; the gradients
    accumulated before explain (a micro-batch's) and the model's mode are as they were."""
    from torch._dynamo.utils import counters

    from models import MLP

    # A fresh Dynamo cache first: after other tests' MLPs, MLP.forward can be at Dynamo's recompile
    # limit, and cm would then run eagerly. (No reset between cm and explain: that is the point.)
    torch._dynamo.reset()
    torch.manual_seed(0)
    m, x = MLP(), torch.randn(4, 32)
    cm = torch.compile(m, backend="pqt")
    with pqt_compile.fixed_seed(3):
        before = cm(x)
    state, pending = pqt_compile.seed_state(), steps.pending()
    assert pending == (False, True)  # `before` awaits its backward (steps.py NOTE [unseen backward])
    graphs = counters["stats"]["unique_graphs"]
    accumulated = {n: torch.full_like(p, 0.5) for n, p in m.named_parameters()}
    for n, p in m.named_parameters():
        p.grad = accumulated[n]
    m.eval()
    m.norm.train()  # a mixed mode, as a frozen part kept in eval inside a training model
    r = pqt_compile.explain(m, x)  # the same model: its code object gets a second cache entry
    assert {s.name for s in r.sampled} == {"fc1.weight", "fc2.weight"}
    assert pqt_compile.seed_state() == state and steps.pending() == pending
    assert not m.training and not m.fc1.training and m.norm.training
    for n, p in m.named_parameters():
        assert p.grad is accumulated[n] and bool((p.grad == 0.5).all()), n
    m.train()
    m.zero_grad(set_to_none=True)
    graphs_after_explain = counters["stats"]["unique_graphs"]
    with pqt_compile.fixed_seed(3):
        again = cm(x)
    assert counters["stats"]["unique_graphs"] == graphs_after_explain > graphs  # cm did not recompile
    assert torch.equal(before, again)




def test_explain_leaves_buffers_and_torchs_generators_as_they_were():
    """explain runs a training step: BatchNorm's running statistics moved and dropout drew from
    torch's generator, so a later run's data order and masks changed, against its promise."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.BatchNorm1d(32), torch.nn.Dropout(0.5), torch.nn.Linear(32, 8))
    x = torch.randn(4, 32)
    buffers, rng = {n: b.clone() for n, b in m.named_buffers()}, torch.get_rng_state()
    pqt_compile.explain(m, x)
    assert all(torch.equal(b, buffers[n]) for n, b in m.named_buffers()) and int(m[1].num_batches_tracked) == 0
    assert torch.equal(torch.get_rng_state(), rng)


class _PrintInLoop(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([MLP(16, 16) for _ in range(2)])  # their frames compile; the root's is skipped
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        for b in self.blocks:
            x = x + b(x)
            print("", end="")  # a graph break inside the loop: Dynamo skips the root's frame
        return self.head(x)


def test_a_weight_that_reaches_no_graph_is_listed_and_the_break_counted():
    """The break was counted under Dynamo's 'unimplemented' counter, not 'graph_break' (explain said
    0), and head.weight, which trained clean, was in neither table."""
    torch._dynamo.reset()
    r = pqt_compile.explain(_PrintInLoop(), torch.randn(2, 16))
    assert len(r.graph_breaks) >= 1, r
    never = {u.name: u.reason for u in r.unsampled if "never reached" in u.reason}
    assert set(never) == {"head.weight"} and len(r.sampled) == 4, r


def test_a_model_compiled_in_place_is_explained():
    """Its own compiled code ran instead of explain's: graphs 0, nothing listed."""
    torch._dynamo.reset()
    m = MLP()
    m.compile(backend="pqt")
    m(torch.randn(2, 32)).sum().backward()
    r = pqt_compile.explain(m, torch.randn(2, 32))
    assert r.graphs == 1 and {s.name for s in r.sampled} == {"fc1.weight", "fc2.weight"}, r
    assert m._compiled_call_impl is not None  # its in-place compile, back after explain
