"""Failure cases of the compiled path: each has a clear outcome, none a silently wrong result."""

import copy

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

import pqt_compile
from conftest import FP32_REL_TOL, assert_matches_reference, max_rel_err
from models import MLP
from pqt_compile import PQTConfig, key_for_name, reference, sample


def test_nan_in_a_weight_stays_in_its_block():
    torch._dynamo.reset()
    m = nn.Linear(64, 4, bias=False)
    cm = pqt_compile.compile(m)
    cm(torch.eye(64))  # compiled while finite
    with torch.no_grad():
        m.weight[1, 40] = float("nan")  # appears mid-training
    with pqt_compile.fixed_seed(1):
        y = cm(torch.eye(64)).t()  # = the sample, row by row (a NaN fills its whole row: 0 * NaN)
    assert y[1].isnan().all() and not y[[0, 2, 3]].isnan().any()  # the NaN stays in its weight row
    want = sample(m.weight.detach(), seed=1, key=key_for_name("weight"), axis=1)
    assert torch.equal(y[[0, 2, 3]], want[[0, 2, 3]])  # the other rows are sampled as usual
    # and the sample itself keeps the NaN block as it is (no noise), the other block noised:
    assert torch.equal(want[1, 32:].nan_to_num(), m.weight[1, 32:].detach().nan_to_num())
    assert not torch.equal(want[1, :32], m.weight[1, :32].detach())


def test_fullgraph_and_non_contiguous_parameter():
    torch._dynamo.reset()

    class T(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(48, 40).t())  # [40, 48], column-major storage

        def forward(self, x):
            return torch.nn.functional.linear(x, self.w)

    m, x = T(), torch.randn(3, 48)
    cm = pqt_compile.compile(m, fullgraph=True)
    assert_matches_reference(cm, m, x, seed=2)


def test_requires_grad_change_recompiles_and_stays_correct():
    torch._dynamo.reset()
    torch.manual_seed(0)
    m, x = MLP(), torch.randn(4, 32)
    cm = pqt_compile.compile(m)
    cm(x).sum().backward()
    m.fc1.weight.requires_grad_(False)  # frozen from now on: still a Parameter, still sampled
    with pqt_compile.fixed_seed(3):
        y = cm(x)
    assert max_rel_err(y, reference.run(m, x, seed=3)) < FP32_REL_TOL
    y.sum().backward()
    assert m.fc2.weight.grad is not None


def test_a_config_change_between_two_compiles_is_honoured():
    torch._dynamo.reset()
    torch.manual_seed(0)
    m, x = MLP(), torch.randn(4, 32)
    a, b = PQTConfig(format="fp4_e2m1"), PQTConfig(format="int8")
    with pqt_compile.fixed_seed(4):
        ya = pqt_compile.compile(m, a)(x)
        yb = pqt_compile.compile(m, b)(x)
    assert max_rel_err(ya, reference.run(m, x, seed=4, config=a)) < FP32_REL_TOL
    assert max_rel_err(yb, reference.run(m, x, seed=4, config=b)) < FP32_REL_TOL


def test_activation_checkpointing_sees_the_same_sample():
    torch._dynamo.reset()

    class Ck(nn.Module):
        def __init__(self, use_checkpoint: bool) -> None:
            super().__init__()
            self.a, self.b, self.use_checkpoint = MLP(), MLP(), use_checkpoint

        def forward(self, x):
            h = checkpoint(self.a, x, use_reentrant=False) if self.use_checkpoint else self.a(x)
            return self.b(h)

    torch.manual_seed(0)
    with_ck = Ck(True)
    without = copy.deepcopy(with_ck)
    without.use_checkpoint = False
    x = torch.randn(4, 32)
    grads = []
    for model in (with_ck, without):
        with pqt_compile.fixed_seed(5):
            pqt_compile.compile(model)(x).square().sum().backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert all(torch.allclose(grads[0][n], grads[1][n], rtol=0, atol=0) for n in grads[0])


def test_a_training_call_that_samples_nothing_warns():
    torch._dynamo.reset()

    class Skipped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8, 8)

        @torch._dynamo.disable
        def forward(self, x):
            return self.fc(x)

    import pytest

    cm = pqt_compile.compile(Skipped())
    with pytest.warns(UserWarning, match="no PQT-compiled graph"):
        cm(torch.randn(2, 8))
    ok = pqt_compile.compile(MLP())
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        ok(torch.randn(2, 32))  # a model that does compile: no warning
