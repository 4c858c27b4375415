"""SamplePass: what it keeps after a compile (NOTE [recording] in compiler/passes/base.py)."""

import gc
import weakref

import torch
from torch._subclasses.fake_tensor import FakeTensor

from models import MLP
from pqt_compile.compiler.passes import sample_pass
from pqt_compile.compiler.passes.base import recording
import pytest

pytestmark = pytest.mark.private_api  # exercises private torch/Triton APIs: CI reruns it on the newest torch


def _holds_graph_objects(obj, depth: int = 6) -> list[str]:
    """Paths from `obj` (through attributes, dicts, lists, tuples) to FX nodes or fake tensors."""
    found, seen = [], set()
    stack = [(obj, "pass")]
    while stack:
        o, path = stack.pop()
        if id(o) in seen or path.count(".") + path.count("[") > depth:
            continue
        seen.add(id(o))
        if isinstance(o, (torch.fx.Node, FakeTensor, torch.fx.Graph)):
            found.append(path)
            continue
        if isinstance(o, dict):
            stack += [(v, f"{path}[{k!r}]") for k, v in o.items()]
        elif isinstance(o, (list, tuple, set)):
            stack += [(v, f"{path}[{i}]") for i, v in enumerate(o)]
        elif hasattr(o, "__dict__") and type(o).__module__.startswith("pqt_compile"):
            stack += [(v, f"{path}.{k}") for k, v in vars(o).items()]
    return found


def _compile_and_run(monkeypatch) -> list:
    passes: list = []
    real_init = sample_pass.SamplePass.__init__

    def spy(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        passes.append(self)

    monkeypatch.setattr(sample_pass.SamplePass, "__init__", spy)
    torch._dynamo.reset()
    torch.manual_seed(0)
    m = MLP()
    torch.compile(m, backend="pqt")(torch.randn(4, 32)).sum().backward()
    return passes


def test_the_pass_keeps_no_graph_objects_after_the_compile(monkeypatch):
    passes = _compile_and_run(monkeypatch)
    assert passes  # the pass ran
    refs = [weakref.ref(p) for p in passes]
    del passes
    gc.collect()
    for r in refs:
        p = r()
        if p is not None:  # still alive (held by Inductor's config snapshot): then it must be light
            assert not _holds_graph_objects(p), _holds_graph_objects(p)


def test_while_recording_the_pass_reports_summaries_without_graph_objects(monkeypatch):
    with recording() as rec:
        _compile_and_run(monkeypatch)
    assert rec.records and any(r.sampled and r.edges for r in rec.records)
    assert {e.name for r in rec.records for e in r.edges} == {"fc1.weight", "fc2.weight"}
    assert not _holds_graph_objects(rec.records)


class _ForwardGraphs(torch._inductor.custom_graph_pass.CustomGraphPass):
    """The post-grad forward graphs' tensor-amax inputs of the sample ops, per weight."""

    def __init__(self) -> None:
        self.amax_of: dict[str, str] = {}
        self.maximums = 0

    def __call__(self, graph: torch.fx.Graph) -> None:
        if any(n.op == "placeholder" and n.name.startswith("tangents") for n in graph.nodes):
            return
        aten = torch.ops.aten
        self.maximums += len(graph.find_nodes(op="call_function", target=aten.maximum.default))
        for n in graph.nodes:
            if n.op == "call_function" and "pqt_weight" in n.meta and str(n.target).startswith("pqt."):
                amax = [a for a in n.args if isinstance(a, torch.fx.Node)
                        and a.target in (aten.amax.default, aten.maximum.default)]
                if amax:
                    self.amax_of[n.meta["pqt_weight"]] = amax[0].name

    def uuid(self):
        return None  # never cached: the test must see the graph


def test_nvfp4_siblings_read_one_group_amax_and_match_the_reference():
    """insert_sample.py NOTE [shared tensor scales]: q/k/v of one block read one amax node, the
    maximum of theirs, in the compiled forward; o_proj reads its own. Outputs and gradients match
    the reference, which applies the same groups; with tensor_scale_groups=() no maximum is made."""
    import copy

    import pqt_compile
    from conftest import FP32_REL_TOL, max_rel_err
    from pqt_compile import PQTConfig, reference
    from models import grouped_attention as attention

    x = torch.randn(4, 32)
    for cfg, maximums in ((PQTConfig(format="nvfp4"), 4), (PQTConfig(format="nvfp4", tensor_scale_groups=()), 0)):
        torch._dynamo.reset()
        m = attention()
        ref = copy.deepcopy(m)
        rec = _ForwardGraphs()
        cm = pqt_compile.compile(m, cfg, options={"post_grad_custom_post_pass": rec})
        with recording() as found, pqt_compile.fixed_seed(7):
            out = cm(x)
        out.square().sum().backward()
        assert rec.maximums == maximums
        notes = {e.name: e.notes for r in found.records if r.is_joint for e in r.edges}
        shared = "nvfp4 tensor scale shared with q_proj, v_proj (PQTConfig.tensor_scale_groups)"
        assert (notes["0.k_proj.weight"] == (shared,)) == bool(maximums) and notes["0.o_proj.weight"] == ()
        groups = {i: {rec.amax_of[f"{i}.{p}.weight"] for p in ("q_proj", "k_proj", "v_proj")} for i in (0, 2)}
        own = {rec.amax_of[f"{i}.o_proj.weight"] for i in (0, 2)}
        if maximums:
            assert all(len(g) == 1 for g in groups.values()) and len(set.union(*groups.values(), own)) == 4
        else:
            assert len(set.union(*groups.values(), own)) == 8  # every weight its own amax
        want = reference.run(ref, x, seed=7, config=cfg)
        assert max_rel_err(out, want) < FP32_REL_TOL
        want.square().sum().backward()
        for (name, p), q in zip(m.named_parameters(), ref.parameters()):
            assert max_rel_err(p.grad, q.grad) < FP32_REL_TOL, name


class _SplitAttention(torch.nn.Module):
    """q_proj in one graph, k_proj and v_proj in the next (a graph break between them)."""

    def __init__(self) -> None:
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj = (torch.nn.Linear(32, 32, bias=False) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.q_proj(x)
        torch._dynamo.graph_break()
        return q * self.k_proj(x) + self.v_proj(x)


def test_a_group_split_across_graphs_trains_and_warns_with_the_fix():
    """scale_groups.py NOTE [groups within one graph]: the graph that samples q_proj alone cannot
    give it the group's scale (as under DDP's bucket split): it trains under its own, with a warning
    naming the siblings and the fixes; no warning with tensor_scale_groups=()."""
    import warnings

    import pqt_compile
    from pqt_compile import PQTConfig

    for cfg, warned in ((PQTConfig(format="nvfp4"), True), (PQTConfig(format="nvfp4", tensor_scale_groups=()), False)):
        torch._dynamo.reset()
        cm = pqt_compile.compile(_SplitAttention(), cfg)
        with warnings.catch_warnings(record=True) as caught, recording() as found:
            warnings.simplefilter("always")
            cm(torch.randn(2, 32)).sum().backward()
        notes = {e.name: e.notes for r in found.records if r.is_joint for e in r.edges}
        split_note = "nvfp4 tensor-scale group split: k_proj, v_proj in another compiled graph"
        assert any(n.startswith(split_note) for n in notes["q_proj.weight"]) == warned
        messages = {str(w.message) for w in caught if "tensor-scale groups" in str(w.message)}
        assert messages == ({sample_pass.SPLIT_GROUP_WARNING} if warned else set())  # one text for both graphs
    assert "optimize_ddp = False" in sample_pass.SPLIT_GROUP_WARNING
    torch._dynamo.reset()


def test_group_members_are_found_by_name_when_the_graph_inputs_are_not_the_models():
    """DDP's optimizer compiles each bucket's subgraph with fake inputs: the models holding the
    weights are then found by the weights' names (backend._group_members)."""
    import pqt_compile
    from pqt_compile import PQTConfig
    from pqt_compile.compiler.backend import _group_members
    from torch._subclasses.fake_tensor import FakeTensorMode

    m = _SplitAttention()
    pqt_compile.register(m)
    fake = FakeTensorMode().from_tensor(m.q_proj.weight)
    want = {"q_proj.weight", "k_proj.weight", "v_proj.weight"}
    nv = PQTConfig(format="nvfp4")
    assert _group_members(nv, [m.q_proj.weight], ["q_proj.weight"]) == want  # by object
    assert _group_members(nv, [fake], ["q_proj.weight"]) == want  # by name
    assert _group_members(nv, [fake], ["other.weight"]) == frozenset()  # no registered model holds it
