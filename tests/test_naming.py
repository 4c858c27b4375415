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
    assert naming.canonical_name("h.0._checkpoint_wrapped_module._fsdp_wrapped_module.fc.weight") == "h.0.fc.weight"


def test_a_block_in_torchs_checkpoint_wrapper_keeps_its_name_and_its_noise():
    """torchtitan checkpoints a block by wrapping it (checkpoint_wrapper): the wrapper's segment
    entered the weight's name, hence its key, and turning activation checkpointing on changed every
    wrapped weight's noise (gradients 0.04 apart), against the README's bit-identical promise."""
    import pqt_compile
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    def grads(wrap: bool) -> dict:
        torch._dynamo.reset()
        torch.manual_seed(0)
        root = nn.Sequential(MLP(), MLP())
        if wrap:
            root[0] = checkpoint_wrapper(root[0])
        with pqt_compile.fixed_seed(5):
            pqt_compile.compile(root)(torch.randn(4, 32)).sum().backward()
        return {n: p.grad for n, p in naming.named_parameters(root).items()}

    plain, wrapped = grads(False), grads(True)
    assert plain.keys() == wrapped.keys() and "0.fc1.weight" in wrapped
    assert all(torch.equal(plain[n], wrapped[n]) for n in plain)  # the recompute reads the same sample


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


# ---- Names that do not depend on how Dynamo sees the model (issue 25) ------------------------
# The real pqt backend up to Inductor (compile_fx replaced: each graph runs as Dynamo traced it,
# unsampled), so that the names every entry point gives can be checked without an Inductor
# compile; the compiled runs against the reference are in tests/compiler/test_equivalence.py.

from models import BlockLoop, Decorated  # noqa: E402


@pytest.fixture
def names_only(monkeypatch):
    from pqt_compile.compiler import backend

    monkeypatch.setattr(backend, "compile_fx", lambda gm, example_inputs, patches, **kwargs: gm.forward)
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _compile(model: nn.Module, entry: str):
    """`model` compiled by one entry point, as a callable."""
    import pqt_compile

    if entry == "torch.compile":
        return torch.compile(model, backend="pqt")
    if entry == "model.compile":
        model.compile(backend="pqt")
        return model
    if entry == "pqt_compile.compile":
        return pqt_compile.compile(model)
    assert entry == "function"
    step = torch.compile(lambda m, *a, **k: m(*a, **k), backend="pqt")
    return lambda *a, **k: step(model, *a, **k)


def _keyed_names(model: nn.Module) -> dict[str, str]:
    """{qualified name: the name that keyed it in the PQT graphs}, for every parameter."""
    from pqt_compile import guards

    return {name: guards.keyed_name(p) for name, p in naming.named_parameters(model).items()}


ENTRIES = ["torch.compile", "model.compile", "pqt_compile.compile", "function"]


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("make", [Decorated, BlockLoop], ids=["decorated_forward", "break_in_a_block_loop"])
def test_every_entry_point_keys_weights_by_their_names_in_the_model(names_only, make, entry):
    """A forward wrapped by a *args decorator (named `args.fc1.weight` from Dynamo's sources
    before), and a loop over blocks with a graph break (each block compiled as its own frame:
    `fc.weight` in every block before) are keyed by their qualified names in the model."""
    torch.manual_seed(0)
    m = make().train()
    x = torch.randn(2, 32 if make is Decorated else 16)
    _compile(m, entry)(x)
    _compile(m, entry)(x)  # a second call: cached names
    keyed = _keyed_names(m)
    assert keyed == {n: n for n in keyed}


def test_a_second_model_of_the_class_is_keyed_by_its_own_names(names_only):
    """Dynamo runs the second model on the first one's graph (the backend never sees it)."""
    for _ in range(2):
        m = BlockLoop().train()
        torch.compile(m, backend="pqt")(torch.randn(2, 16))
        keyed = _keyed_names(m)
        assert keyed == {n: n for n in keyed}


def test_blocks_compiled_one_by_one_keep_register_root_as_the_way(names_only):
    """Blocks compiled one by one inside an eager root are keyed by their names in themselves
    (`fc.weight`, "#n" where blocks share a graph: naming.py rule 3; the guards warn of blocks
    that share a name) until the root is registered; then by the root's names."""
    torch.manual_seed(0)
    m = BlockLoop(broken=False).train()
    for block in m.blocks:
        block.compile(backend="pqt")
    m(torch.randn(2, 16))
    assert all(k.split("#")[0] in ("fc.weight", "fc.bias") for k in _keyed_names(m).values())
    naming.register(m)
    m(torch.randn(2, 16))
    keyed = _keyed_names(m)
    assert keyed == {n: n for n in keyed}


# CI: Llama through torch.compile and Gemma through model.compile (forwards wrapped by *args
# decorators in transformers 5.25). The rest (slow): the 9 architectures x the 3 model entry points.
HF_CI = {("llama", "torch.compile"), ("gemma", "model.compile")}


@pytest.mark.third_party
@pytest.mark.parametrize("name,entry", [
    pytest.param(n, e, marks=() if (n, e) in HF_CI else pytest.mark.slow, id=f"{n}-{e}")
    for n in ("gpt2", "llama", "mistral", "qwen2", "phi3", "gemma", "gpt_neox", "opt", "bert")
    for e in ENTRIES[:3]
])
def test_hf_models_are_keyed_by_their_names_through_every_entry_point(names_only, name, entry):
    from support.hf_zoo import KWARGS, ZOO, inputs

    m = ZOO[name]().train()
    _compile(m, entry)(*inputs(name), **KWARGS[name])
    keyed = _keyed_names(m)
    assert keyed == {n: n for n in keyed}
