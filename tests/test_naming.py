"""naming.py: one rule for a weight's name (its key), lookups without side effects."""

import torch
import torch.nn as nn

from models import MLP, TinyGPT
from pqt_compile import naming
import pytest

pytestmark = pytest.mark.private_api  # exercises private torch/Triton APIs: CI reruns it on the newest torch


def test_canonical_names_drop_compile_wrappers_and_keep_tied_aliases():
    m = TinyGPT()
    names = naming.named_parameters(m)
    assert "lm_head.weight" not in names and names["wte.weight"] is m.wte.weight  # tied: its first name
    assert naming.parameter_aliases(m) == {"wte.weight": ("lm_head.weight",)}
    root = nn.Sequential(MLP(), MLP())
    root[1] = torch.compile(root[1], backend="pqt")
    assert "1.fc1.weight" in naming.named_parameters(root)
    assert naming.canonical_name("h.0._orig_mod._orig_mod.fc.weight") == "h.0.fc.weight"


def test_a_wider_name_is_never_replaced_by_a_narrower_one():
    root = nn.Sequential(MLP(), MLP())
    naming.register(root)
    naming.register(root[1])  # a block registers after its root (the backend does this on compile)
    assert naming.lookup(root[1].fc1.weight).name == "1.fc1.weight"
    other = nn.Sequential(MLP(), MLP())
    naming.register(other[0])
    naming.register(other)  # a root after its block: the wider name replaces the narrower
    assert naming.lookup(other[0].fc2.weight).name == "0.fc2.weight"


def test_lookup_finds_parameters_a_root_acquired_later_without_side_effects():
    """to_empty() replaces Parameter objects: they are found in the registered root, under its names;
    a lookup does not change the registry's version (compiled graphs keep their cached names)."""
    with torch.device("meta"):
        root = nn.Sequential(MLP(), MLP())
    naming.register(root)
    version = naming.version()
    root.to_empty(device="cpu")
    assert naming.lookup(root[1].fc2.weight).name == "1.fc2.weight"
    assert naming.lookup(nn.Parameter(torch.zeros(2, 2))) is None  # not in any root
    assert naming.version() == version
    naming.register(root[0])  # the new objects: the root's wider names win here too
    assert naming.lookup(root[0].fc1.weight).name == "0.fc1.weight"


def test_owner_is_the_module_that_holds_the_parameter():
    m = MLP()
    naming.register(m)
    assert naming.lookup(m.fc1.weight).owner() is m.fc1


def test_reset_forgets_every_registration():
    m = MLP()
    naming.register(m)
    naming.reset()
    assert naming.lookup(m.fc1.weight) is None and naming.roots() == []
