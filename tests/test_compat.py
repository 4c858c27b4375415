"""compat.py: every private torch symbol pqt_compile uses resolves on this torch, and a missing
one is reported with the version, the symbol and what needs it."""

import pytest
import torch

from pqt_compile import compat

pytestmark = pytest.mark.private_api  # exercises private torch/Triton APIs: CI reruns it on the newest torch


@pytest.mark.parametrize("module,attr,needed_for", compat.SYMBOLS, ids=[f"{m}.{a}" for m, a, _ in compat.SYMBOLS])
def test_every_private_symbol_resolves(module, attr, needed_for):
    assert compat.require(module, attr, needed_for) is not None


def test_a_missing_symbol_names_the_version_and_the_feature():
    with pytest.raises(compat.CompatError) as e:
        compat.require("torch._inductor.lowering", "no_such_thing", "the Inductor lowering of pqt.sample")
    text = str(e.value)
    assert torch.__version__ in text and "torch._inductor.lowering.no_such_thing" in text and "lowering" in text


def test_capture_output_code_restores_inductor_hook():
    from torch._inductor.graph import GraphLowering

    before = GraphLowering.__dict__.get("save_output_code", "absent")
    with compat.capture_output_code() as codes:
        torch.compile(lambda x: x * 2 + 1)(torch.randn(8))
    assert codes and "def call" in "\n".join(codes)
    assert GraphLowering.__dict__.get("save_output_code", "absent") == before
