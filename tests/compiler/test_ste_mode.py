"""PQTConfig(mode="ste"): the compiled forward reads exactly `quantize`'s weights (what
quantize_model deploys) and the gradient reaches w straight through; the same pass and lowering
as sampling, so eval, exclude and the reference behave the same way."""

import copy

import pytest
import torch

import pqt_compile
from conftest import FP32_REL_TOL, max_rel_err
from models import MLP
from pqt_compile import PQTConfig, reference

pytestmark = pytest.mark.private_api  # compiles through the backend: CI reruns it on the newest torch

CFG = PQTConfig(format="fp4_e2m1", mode="ste")


@pytest.fixture(scope="module")
def ste_step():
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = MLP()
    x = torch.randn(3, 7, 32)
    cm = pqt_compile.compile(model, CFG)
    out = cm(x)
    out.square().mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    deployed = pqt_compile.quantize_model(copy.deepcopy(model), CFG)  # fc1.weight, fc2.weight rounded
    want = deployed(x)
    want.square().mean().backward()
    want_grads = {n: p.grad.clone() for n, p in deployed.named_parameters()}
    model.eval()
    clean_eval = cm(x).detach()
    model.train()
    return model, cm, x, out.detach(), want.detach(), grads, want_grads, clean_eval


def test_forward_reads_the_deployed_weights(ste_step):
    model, _, x, out, want, *_ = ste_step
    assert max_rel_err(out, want) < FP32_REL_TOL
    assert max_rel_err(out, model(x)) > 100 * FP32_REL_TOL  # fp4 rounding did change the output


def test_gradient_is_straight_through(ste_step):
    *_, grads, want_grads, _ = ste_step
    assert grads.keys() == want_grads.keys()
    for n in grads:  # d loss / d w = d loss / d quantize(w)
        assert max_rel_err(grads[n], want_grads[n]) < FP32_REL_TOL, n


def test_reference_runs_the_same_rounding(ste_step):
    model, _, x, out, *_ = ste_step
    assert max_rel_err(reference.run(model, x, seed=0, config=CFG), out) < FP32_REL_TOL


def test_eval_sees_the_clean_weights(ste_step):
    model, _, x, *_, clean_eval = ste_step
    assert max_rel_err(clean_eval, model(x)) < FP32_REL_TOL


def test_ste_config_refuses_noise_settings():
    with pytest.raises(ValueError, match="mode='ste'.*noise_std"):
        PQTConfig(mode="ste", noise_std=0.5)
    with pytest.raises(ValueError, match="mode must be one of"):
        PQTConfig(mode="fake_quant")
    assert PQTConfig().replace(mode="ste").noise_std is None  # a default noise_std does not block the switch
    # The PQT-then-STE recipe from any PQT config: its noise choice is dropped, the rest kept.
    pqt = PQTConfig(format="fp4_e2m1", noise="uniform", noise_std=0.4, exclude=("head",))
    assert pqt.replace(mode="ste") == PQTConfig(format="fp4_e2m1", mode="ste", exclude=("head",))
    assert PQTConfig(noise_std=0.5).replace(mode="ste").noise_std is None
    with pytest.raises(ValueError, match="mode='ste'.*noise_std"):  # an explicit one still is refused
        pqt.replace(mode="ste", noise_std=0.5)
    assert PQTConfig(mode="ste").replace(mode="sample").noise_std == PQTConfig().noise_std
    assert PQTConfig(noise="rounded_gaussian").noise_std == 0.5
    assert PQTConfig().replace(noise="rounded_gaussian").noise_std == 0.5
    assert PQTConfig(noise_std=0.4).replace(noise="uniform").noise_std == 0.4  # a chosen one is kept
