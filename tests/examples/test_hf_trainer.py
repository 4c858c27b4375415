"""The Trainer example's wiring: Trainer trains a model compiled with PQT in place."""

import torch

import pqt_compile
from conftest import FP32_REL_TOL, max_rel_err
from examples import hf_trainer
from pqt_compile.hf_callback import PQTStateCallback
import pytest

pytestmark = pytest.mark.private_api  # exercises private torch/Triton APIs: CI reruns it on the newest torch


def test_trainer_trains_with_pqt_and_evaluates_clean(tmp_path):
    torch._dynamo.reset()
    cfg = pqt_compile.PQTConfig(format="fp4_e2m1")
    trainer = hf_trainer.make_trainer(str(tmp_path), steps=3, config=cfg, batch=4)
    model = trainer.model
    assert type(model).__name__ == "GPT2LMHeadModel"  # the same class: compiled in place
    assert any(isinstance(c, PQTStateCallback) for c in trainer.callback_handler.callbacks)  # resumable
    x = torch.randint(0, 256, (2, 64))
    model.train()
    with pqt_compile.fixed_seed(5):
        noisy = model(x).logits
    ref = pqt_compile.reference.run(model, x, seed=5, config=cfg, use_cache=False).logits
    assert max_rel_err(noisy, ref) < FP32_REL_TOL
    out = trainer.train()
    assert out.global_step == 3 and torch.isfinite(torch.tensor(out.training_loss))
    model.eval()
    with torch.no_grad():
        clean = model(x).logits
    model._compiled_call_impl = None  # the uncompiled module, for comparison
    with torch.no_grad():
        eager = model(x).logits
    assert max_rel_err(clean, eager) < FP32_REL_TOL
