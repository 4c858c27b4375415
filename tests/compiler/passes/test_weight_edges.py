"""The pattern rules (find_weight_edges) on traced graphs: every supported weight->matmul
pattern, and what is never sampled. Tracing is cheap (no compile)."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from pqt_compile import PQTConfig, reference

pytestmark = pytest.mark.private_api  # exercises private torch/Triton APIs: CI reruns it on the newest torch


class Zoo(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        d = 16
        self.lin = nn.Linear(d, d)
        self.lin_nb = nn.Linear(d, d, bias=False)
        self.w_kn = nn.Parameter(torch.randn(d, 24) * 0.1)  # x @ W, [K, N]
        self.w_mm = nn.Parameter(torch.randn(24, d) * 0.1)  # torch.matmul(x, W.t())
        self.w_bmm = nn.Parameter(torch.randn(2, d, d) * 0.1)  # bmm with a 3-D weight
        self.w_ein = nn.Parameter(torch.randn(d, d) * 0.1)  # einsum
        self.shared = nn.Linear(d, d, bias=False)  # used twice
        self.emb = nn.Embedding(10, d)
        self.norm = nn.LayerNorm(d)
        self.register_buffer("buf", torch.randn(d, d))

    def forward(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        h = self.lin(x) + self.lin_nb(x)  # [B, T, d]: 3-D activation reshaped around mm
        h = (h @ self.w_kn)[..., :16] + torch.matmul(h, self.w_mm.t())[..., :16]
        hb = torch.bmm(h[:2].transpose(0, 0), self.w_bmm)  # [2, T, d] x [2, d, d]
        h = h + hb.sum(0)
        h = torch.einsum("btk,kn->btn", h, self.w_ein)
        h = self.shared(self.shared(h))
        h = h + self.emb(idx) + h @ self.buf  # a buffer: never sampled
        a = h @ h.transpose(-1, -2)  # activation x activation: not a weight
        h = self.norm(h + a @ h)
        return F.linear(h, self.emb.weight)  # tied use of the embedding


@pytest.fixture(scope="module")
def zoo():
    torch.manual_seed(0)
    return Zoo(), torch.randn(2, 5, 16), torch.randint(0, 10, (2, 5))


EXPECTED = {
    "lin.weight": 1,
    "lin_nb.weight": 1,
    "w_kn": 0,
    "w_mm": 1,
    "w_bmm": 1,
    "w_ein": 0,
    "shared.weight": 1,
    "emb.weight": 1,
}


def test_every_pattern_is_found_with_its_axis(zoo):
    m, x, idx = zoo
    edges, skipped = reference.trace_weight_edges(m, x, idx)
    assert {e.name: e.axis for e in edges} == EXPECTED
    reasons = {s.name: s.reason for s in skipped}
    assert reasons["lin.bias"] == "not a matmul operand"
    assert reasons["norm.weight"] == "not a matmul operand"
    assert "buf" not in reasons  # buffers are not candidates at all


def test_a_weight_used_twice_is_one_edge_with_two_uses(zoo):
    m, x, idx = zoo
    edges, _ = reference.trace_weight_edges(m, x, idx)
    shared = next(e for e in edges if e.name == "shared.weight")
    assert len([u for u in shared.uses if not u.is_backward]) == 2


def test_autocast_casts_are_seen_through(zoo):
    m, x, idx = zoo
    with torch.autocast("cpu", dtype=torch.bfloat16):
        edges, _ = reference.trace_weight_edges(m, x, idx)
    assert {e.name: e.axis for e in edges} == EXPECTED
    assert all(e.dtypes == [torch.bfloat16] for e in edges)


def test_include_exclude_and_reasons(zoo):
    m, x, idx = zoo
    cfg = PQTConfig(include=[r"^lin", "w_"], exclude=["w_bmm"])
    edges, skipped = reference.trace_weight_edges(m, x, idx, config=cfg)
    assert {e.name for e in edges} == {"lin.weight", "lin_nb.weight", "w_kn", "w_mm", "w_ein"}
    reasons = {s.name: s.reason for s in skipped}
    assert "excluded" in reasons["w_bmm"] and "excluded" in reasons["shared.weight"]


def test_reference_run_matches_sampled_weights_on_the_zoo(zoo):
    m, x, idx = zoo
    out = reference.run(m, x, idx, seed=4)
    clean = m(x, idx)
    assert out.shape == clean.shape and not torch.allclose(out, clean)
    # Excluding everything gives the clean model back, exactly.
    none = reference.run(m, x, idx, seed=4, config=PQTConfig(include=["^nothing$"]))
    assert torch.equal(none, clean)


def test_a_recurrent_layer_kept_as_one_op_is_named_as_training_clean():
    """An LSTM that torch keeps as one op (aten.mkldnn_rnn_layer on the CPU, aten._cudnn_rnn on
    CUDA, under torch._dynamo.config.allow_rnn): its matmuls are inside, the pass cannot sample
    its weights, and they were 'not a matmul operand', trained clean with no warning."""
    torch.manual_seed(0)
    lstm = nn.LSTM(8, 8, batch_first=True)
    graph = reference.trace(lstm, torch.randn(2, 3, 8)).graph
    assert any("rnn" in str(n.target) for n in graph.nodes if n.op == "call_function")  # one op, as on a GPU
    _, skipped = reference.trace_weight_edges(lstm, torch.randn(2, 3, 8))
    for name in ("weight_ih_l0", "weight_hh_l0"):
        s = next(s for s in skipped if s.name == name)
        assert s.trains_clean and "rnn" in s.reason, s
    assert not next(s for s in skipped if s.name == "bias_ih_l0").trains_clean  # a bias is never sampled
