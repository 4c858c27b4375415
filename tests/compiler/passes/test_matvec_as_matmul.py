"""The matrix-vector rewrite (compiler/passes/matvec_as_matmul.py): every aten.mv and addmv
becomes a one-column mm or addmm with the same value, so that Inductor never falls back to an
ATen kernel it refuses under CI=1."""

import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx

from conftest import FP32_REL_TOL, max_rel_err
from pqt_compile.compiler.passes.matvec_as_matmul import matvec_as_matmul

pytestmark = pytest.mark.private_api  # exercises private torch/Triton APIs: CI reruns it on the newest torch

aten = torch.ops.aten


def _products(w, v, b_row, b_one, b_scalar):
    return (aten.mv(w, v),
            aten.addmv(b_row, w, v),
            aten.addmv(b_one, w, v, beta=0.5, alpha=-2.0),  # a [1] bias broadcasts over the rows
            aten.addmv(b_scalar, w, v, beta=0.0))           # beta = 0: the bias is not read


@pytest.mark.parametrize("tracing_mode", ["fake", "symbolic"])  # one fake mode, as Inductor's graphs
def test_every_matvec_becomes_a_one_column_matmul_of_the_same_value(tracing_mode):
    torch.manual_seed(0)
    args = (torch.randn(24, 40), torch.randn(40), torch.randn(24), torch.randn(1), torch.tensor(float("nan")))
    gm = make_fx(_products, tracing_mode=tracing_mode)(*args)
    assert matvec_as_matmul(gm.graph) == 4
    gm.recompile()
    targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert aten.mv.default not in targets and aten.addmv.default not in targets
    assert targets.count(aten.mm.default) == 1 and targets.count(aten.addmm.default) == 3
    for got, want in zip(gm(*args), _products(*args)):
        assert got.shape == want.shape
        assert max_rel_err(got, want) < FP32_REL_TOL  # one sum of 40 terms, maybe in another order: the fp32 bound
    outputs = [n.meta["val"] for n in gm.graph.find_nodes(op="output")[0].args[0]]
    assert [tuple(o.shape) for o in outputs] == [(24,)] * 4  # the fake values later passes read


def test_the_rewrite_keeps_the_products_meta():
    gm = make_fx(lambda w, v: aten.mv(w, v), tracing_mode="fake")(torch.randn(3, 4), torch.randn(4))
    (mv,) = [n for n in gm.graph.nodes if n.target is aten.mv.default]
    mv.meta["recompute"] = "tag"  # activation-checkpoint tags must survive the rewrite
    mv.meta["tensor_meta"] = "the product's [3] shape"  # ... and no node may claim the product's shape
    matvec_as_matmul(gm.graph)
    new = [n for n in gm.graph.nodes if n.op == "call_function"]
    assert new and all(n.meta.get("recompute") == "tag" and "tensor_meta" not in n.meta for n in new)
