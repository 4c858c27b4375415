"""The run-time half of the backend: each call's seed (NOTE [the seed rule]) and keys, eval mode,
shared graphs."""

import pytest
import torch
import torch.nn as nn
from torch._dynamo.utils import counters

import pqt_compile
from conftest import FP32_REL_TOL, max_rel_err
from models import MLP
from pqt_compile import PQTConfig, reference, step_seed

pytestmark = pytest.mark.private_api  # exercises private torch/Triton APIs: CI reruns it on the newest torch


class Probe(nn.Module):
    """Three bias-free linears fed the identity: output i is block i's sampled weight, transposed,
    exactly (eye @ W_hat^T), so samples can be compared bit for bit whatever the compile layout."""

    def __init__(self, d: int = 40, graph_break: bool = False) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(d, d, bias=False)) for _ in range(3))
        self.graph_break = graph_break

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        # Unrolled: Dynamo (torch 2.13) skips the whole frame on a graph break inside a loop.
        a = self.blocks[0](x)
        self._maybe_break()
        b = self.blocks[1](x)
        self._maybe_break()
        return [a, b, self.blocks[2](x)]

    def _maybe_break(self) -> None:
        if self.graph_break:
            torch._dynamo.graph_break()


def _compiled(layout: str, model: Probe):
    if layout == "whole":
        return torch.compile(model, backend="pqt")
    if layout == "graph_breaks":
        model.graph_break = True
        return torch.compile(model, backend="pqt")
    pqt_compile.register(model)  # per block (torchtitan): blocks share one graph
    for i, block in enumerate(model.blocks):
        model.blocks[i] = torch.compile(block, backend="pqt")
    return model


def _run_steps(call, model: nn.Module) -> list[list[torch.Tensor]]:
    """Samples seen at (step 0, micro 0), (step 0, micro 1) and (step 1, micro 0): two micro-batches
    of gradient accumulation, an optimizer step (lr 0: the weights stay), one more forward."""
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    eye = torch.eye(40)
    seen = []
    for micro in range(2):
        outs = call(eye)
        seen.append([o.detach().clone() for o in outs])
        sum(o.square().sum() for o in outs).backward()
    opt.step()
    seen.append([o.detach().clone() for o in call(eye)])
    return seen


def test_a_weight_draws_the_same_noise_however_dynamo_splits_the_model():
    torch._dynamo.reset()
    torch.manual_seed(0)
    base = Probe()
    results = {}
    for layout in ("whole", "graph_breaks", "per_block"):
        model = Probe()
        model.load_state_dict(base.state_dict())
        pqt_compile.manual_seed(7)
        results[layout] = _run_steps(_compiled(layout, model), model)
    for layout in ("graph_breaks", "per_block"):
        for when in range(3):
            for block in range(3):
                assert torch.equal(results[layout][when][block], results["whole"][when][block]), (layout, when, block)
    # ... and it is the draw of (seed 7, step, micro-batch, name): the reference reproduces it.
    for when, (step, micro) in enumerate([(0, 0), (0, 1), (1, 0)]):
        want = reference.sampled_weights(base, seed=step_seed(step, micro, base=7))
        for block in range(3):
            assert torch.equal(results["whole"][when][block].t(), want[f"blocks.{block}.0.weight"])
    # Each micro-batch and each step draws afresh.
    assert not torch.equal(results["whole"][0][0], results["whole"][1][0])
    assert not torch.equal(results["whole"][1][0], results["whole"][2][0])


def test_calls_within_a_micro_batch_share_a_draw_and_manual_seed_restarts_the_stream():
    torch._dynamo.reset()
    torch.manual_seed(0)
    m, x = MLP(), torch.randn(4, 32)
    cm = pqt_compile.compile(m)
    pqt_compile.manual_seed(123)
    a, b = cm(x), cm(x)  # no backward between: the same micro-batch
    assert torch.equal(a, b)
    first = _losses(cm, m, x)
    pqt_compile.manual_seed(123)
    assert torch.equal(cm(x), a)
    assert _losses(cm, m, x) == first  # the same seed draws the same noise
    pqt_compile.manual_seed(124)
    assert not torch.equal(cm(x), a)  # another seed, another stream


def _losses(cm, m, x) -> list[float]:
    opt = torch.optim.SGD(m.parameters(), lr=0.0)
    out = []
    for _ in range(3):
        loss = cm(x).square().mean()
        loss.backward()
        opt.step()
        out.append(loss.item())
    assert len(set(out)) == 3  # fresh noise at every step
    return out


def test_another_seed_hits_the_fx_graph_cache():
    """The seed is a runtime input, never part of a cache key (NOTE [cache safety])."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    m, x = MLP(), torch.randn(4, 32)
    pqt_compile.manual_seed(1)
    first = pqt_compile.compile(m)(x)
    torch._dynamo.reset()
    counters.clear()
    pqt_compile.manual_seed(2)
    second = pqt_compile.compile(m)(x)
    assert counters["inductor"]["fxgraph_cache_hit"] > 0
    assert not torch.equal(first, second)
    assert max_rel_err(second, reference.run(m, x, seed=step_seed(0, 0, base=2))) < FP32_REL_TOL


def test_eval_of_one_block_in_a_shared_graph_keeps_only_that_block_clean():
    """Per-weight switches: a block in eval mode passes its weight through its key (DISABLED_KEY),
    even in a graph it shares with blocks in training mode; no second graph is compiled."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = Probe()
    compiles = counters["stats"]["unique_graphs"]
    call = _compiled("per_block", model)
    eye = torch.eye(40)
    model.blocks[1].eval()
    with pqt_compile.fixed_seed(4):
        outs = call(eye)
    clean = [b._orig_mod[0].weight.detach().t() for b in model.blocks]
    assert torch.equal(outs[1], clean[1])
    assert not torch.equal(outs[0], clean[0]) and not torch.equal(outs[2], clean[2])
    assert counters["stats"]["unique_graphs"] - compiles == 1  # one graph for the three blocks, both modes
    model.blocks[1].train()
    with pqt_compile.fixed_seed(4):
        assert not torch.equal(call(eye)[1], clean[1])


def test_eval_of_one_module_in_a_graph_keeps_only_its_weights_clean():
    """One graph, two owners: the flags are read per owning module, each weight by its own."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = Probe()
    call = _compiled("whole", model)
    eye = torch.eye(40)
    clean = [b[0].weight.detach().t() for b in model.blocks]
    model.blocks[0].eval()
    with pqt_compile.fixed_seed(4):
        outs = call(eye)
    assert torch.equal(outs[0], clean[0])
    assert not torch.equal(outs[1], clean[1]) and not torch.equal(outs[2], clean[2])
    model.blocks[0].train()
    model.blocks[2].eval()
    with pqt_compile.fixed_seed(4):
        again = call(eye)
    assert torch.equal(again[1], outs[1]) and torch.equal(again[2], clean[2]) and not torch.equal(again[0], clean[0])


def test_a_call_whose_only_training_weight_has_no_key_still_counts_its_backward_pass():
    """A norm's weight is never sampled, but a call with it switched on is a training call of a
    PQT graph: its backward pass counts (the micro-batch moves), as when the linear trains too."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8))
    cm = pqt_compile.compile(m)
    m[0].eval()
    before = pqt_compile.seed_state()
    cm(torch.randn(4, 8)).sum().backward()
    assert pqt_compile.seed_state() == {**before, "micro_batch": before["micro_batch"] + 1}


def test_eval_and_no_grad_calls_do_not_move_the_stream():
    torch._dynamo.reset()
    torch.manual_seed(0)
    m, x = MLP(), torch.randn(4, 32)
    cm = pqt_compile.compile(m)
    before = pqt_compile.seed_state()
    with torch.no_grad():
        cm(x)
    m.eval()
    cm(x).sum().backward()  # even a backward through an eval call samples nothing, counts nothing
    m.train()
    assert pqt_compile.seed_state() == before


def test_sample_in_eval_samples_under_no_grad():
    torch._dynamo.reset()
    torch.manual_seed(0)
    m = MLP()
    cfg = PQTConfig(sample_in_eval=True)
    cm = pqt_compile.compile(m, cfg)
    x = torch.randn(4, 32)
    with torch.no_grad(), pqt_compile.fixed_seed(8):
        y = cm(x)
    assert max_rel_err(y, reference.run(m, x, seed=8, config=cfg)) < FP32_REL_TOL


@pytest.mark.parametrize("pattern,clean_block", [(r"^blocks\.1\.", 1), (r"^blocks\.0\.", 0)])
def test_include_and_exclude_in_a_shared_graph(pattern, clean_block):
    """exclude: the first block's compile samples everything, the excluded block is switched off by
    its key. include: the first block's compile samples nothing, and a block that is admitted gets a
    variant graph (NOTE [shared graphs])."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    for cfg in (PQTConfig(exclude=[pattern]), PQTConfig(include=[r"^blocks\.[^%d]\." % clean_block])):
        model = Probe()
        pqt_compile.register(model)
        for i, block in enumerate(model.blocks):
            model.blocks[i] = torch.compile(block, backend="pqt", options=cfg.to_options())
        with pqt_compile.fixed_seed(2):
            outs = model(torch.eye(40))
        want = reference.sampled_weights(model, seed=2, config=cfg)
        for i, out in enumerate(outs):
            w = model.blocks[i]._orig_mod[0].weight.detach()
            assert torch.equal(out.t(), w if i == clean_block else want[f"blocks.{i}.0.weight"]), (cfg, i)
