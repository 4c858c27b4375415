"""Shared test helpers."""

from __future__ import annotations

import os
import sys

import pytest
import torch

# Without a GPU, Triton kernels run in Triton's interpreter (set before triton is imported).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Test helpers (models.py, formula_py.py) live here; tests in subfolders import them too.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# Hermetic: hub access off and sockets to other machines refused, before any test module
# imports transformers (huggingface_hub reads its offline switch at import).
from support import hermetic  # noqa: E402

hermetic.install()

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(autouse=True)
def _fresh_pqt_state():
    """Each test starts with no registered names, nothing seen by the guards, and the seed stream
    at manual_seed(0): one test's models must not name, key or warn about another's."""
    from pqt_compile import guards, naming, seeds, steps

    naming.reset()
    guards.reset()
    steps.reset()
    seeds.manual_seed(0)
    yield


def fmt_dict(spec) -> dict:
    """The constants of a FormatSpec as the independent re-implementation takes them."""
    return {"is_int": spec.is_int, "emax": spec.emax, "emin": spec.emin, "M": spec.mantissa_bits}


def max_rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|: the error relative to the scale of the reference."""
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


# NOTE [tolerance]: compiled and reference runs use bit-identical sampled weights but Inductor
# reorders fp32 reductions (layer norm, softmax, matmul blocking); with K <= 128 and a few
# layers that moves results by a few ulps of the largest magnitude. 2^-16 (~1.5e-5, ~128 ulps)
# relative to the output's scale covers that with room, and is 1000x below the PQT noise
# (~2^-4 relative for fp6_e3m2), so a wrong sample cannot pass.
FP32_REL_TOL = 2.0**-16


def assert_matches_reference(call, model, *args, seed: int, config=None, **kwargs) -> torch.Tensor:
    """Run `call(*args, **kwargs)` (a compiled model) under fixed_seed(seed) and check it against
    reference.run on `model` within FP32_REL_TOL; returns the compiled output."""
    import pqt_compile

    with pqt_compile.fixed_seed(seed):
        out = call(*args, **kwargs)
    ref = pqt_compile.reference.run(model, *args, seed=seed, config=config, **kwargs)
    assert max_rel_err(out, ref) < FP32_REL_TOL
    return out


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", default=False,
                     help="also run the tests marked slow (compile-heavy cases beyond CI's budget)")


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow (compile-heavy): run with pytest --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
