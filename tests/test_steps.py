"""steps.py: which events advance the seed stream."""

import torch
import torch.nn as nn

import pqt_compile
from models import MLP
from pqt_compile import compat, steps
import pytest

pytestmark = pytest.mark.private_api  # exercises private torch/Triton APIs: CI reruns it on the newest torch


def test_a_step_is_an_optimizer_step_after_a_backward_through_pqt_graphs():
    torch._dynamo.reset()
    torch.manual_seed(0)
    m, x = MLP(), torch.randn(4, 32)
    cm = pqt_compile.compile(m)
    opt = torch.optim.SGD(m.parameters(), lr=0.0)
    baseline = nn.Linear(4, 4)
    base_opt = torch.optim.SGD(baseline.parameters(), lr=0.1)
    cm(x).sum().backward()
    cm(x).sum().backward()  # gradient accumulation: two micro-batches
    assert pqt_compile.seed_state()["micro_batch"] == 2
    baseline(torch.randn(2, 4)).sum().backward()
    base_opt.step()  # an optimizer of a model trained without pqt moves nothing
    assert pqt_compile.seed_state() == {"base": 0, "step": 0, "micro_batch": 2}
    opt.step()
    assert pqt_compile.seed_state() == {"base": 0, "step": 1, "micro_batch": 0}
    opt.step()  # no backward since the last step (an initialisation, as DCP does): not a step
    assert pqt_compile.seed_state()["step"] == 1
    assert steps.optimizer_counts(opt) and not steps.optimizer_counts(base_opt)


def test_one_backward_through_several_graphs_is_one_micro_batch():
    torch._dynamo.reset()
    from models import WithGraphBreak

    m = WithGraphBreak()
    cm = torch.compile(m, backend="pqt")
    cm(torch.randn(3, 16)).sum().backward()  # two graphs, one backward pass
    assert pqt_compile.seed_state()["micro_batch"] == 1


def test_a_backward_pass_that_raised_does_not_stop_the_next_from_counting():
    torch._dynamo.reset()
    m = MLP()
    cm = pqt_compile.compile(m)
    out = cm(torch.randn(4, 32)).sum()

    def boom(grad):
        raise RuntimeError("boom")

    out.register_hook(boom)
    try:
        out.backward()
    except RuntimeError:
        pass
    cm(torch.randn(4, 32)).sum().backward()
    assert pqt_compile.seed_state()["micro_batch"] == 1


def test_a_compiled_sampling_call_is_watched_and_any_other_node_hooked():
    """The node of a PQT graph's outputs (AOTAutograd's) is watched through its Function's
    backward (compat NOTE [watched backward]: no pre-hook registered per call); an output whose
    node cannot be watched (here an eager op's) gets a pre-hook; both count the backward."""
    torch._dynamo.reset()
    m = MLP()
    cm = pqt_compile.compile(m)
    out = cm(torch.randn(4, 32))
    assert getattr(out.grad_fn, compat.autograd._ON_BACKWARD, None) is steps._backward_runs
    before = pqt_compile.seed_state()["micro_batch"]
    out.sum().backward()
    assert pqt_compile.seed_state()["micro_batch"] == before + 1
    eager = torch.randn(3, requires_grad=True) * 2
    steps.track_backward(eager, 5)
    assert not hasattr(eager.grad_fn, compat.autograd._ON_BACKWARD)
    eager.sum().backward()
    assert pqt_compile.seed_state()["micro_batch"] == before + 2


def test_compiled_autograd_is_refused_naming_the_fix():
    """Compiled autograd runs a compiled graph's backward without the seed rule seeing it (every
    micro-batch would draw the same noise): refused at the sampling call, whether asked for in
    Dynamo's config or by its context entered around the step."""
    import torch._dynamo.compiled_autograd as compiled_autograd

    torch._dynamo.reset()
    x = torch.randn(4, 32)
    with torch._dynamo.config.patch(compiled_autograd=True):
        with pytest.raises(RuntimeError, match=r"compiled autograd is on .*compiled_autograd = False"):
            pqt_compile.compile(MLP())(x)
    torch._dynamo.reset()
    cm = pqt_compile.compile(MLP())
    cm(x).sum().backward()  # compiled, watched: fine without compiled autograd
    with compiled_autograd._enable(torch.compile(backend="eager")):
        with pytest.raises(RuntimeError, match="compiled autograd is on"):
            cm(x)
    cm(x).sum().backward()  # and fine again after it


def test_a_backward_pqt_cannot_see_still_ends_the_step_with_a_warning():
    """NOTE [unseen backward]: compiled autograd entered around loss.backward() only runs the
    backward where pqt cannot see it; the optimizer step still ends the step (each step draws
    afresh) and says so once."""
    import warnings

    import torch._dynamo.compiled_autograd as compiled_autograd

    torch._dynamo.reset()
    m = MLP()
    cm = pqt_compile.compile(m)
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    x = torch.randn(4, 32)
    start = pqt_compile.seed_state()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(2):
            loss = cm(x).sum()
            with compiled_autograd._enable(torch.compile(backend="eager")):
                loss.backward()
            opt.step()
            opt.zero_grad()
            assert pqt_compile.seed_state() == {**start, "step": start["step"] + step + 1, "micro_batch": 0}
    unseen = [w for w in caught if "no backward pass through them was seen" in str(w.message)]
    assert len(unseen) == 1  # once
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cm(x).sum().backward()  # seen again: counted, no warning
        opt.step()
    assert pqt_compile.seed_state()["step"] == start["step"] + 3


def _pqt_warnings(caught):
    return [str(w.message) for w in caught if str(w.message).startswith("pqt:")]


@pytest.mark.parametrize("entry", ["torch.compile", "pqt_compile.compile"])
def test_an_optimizer_step_after_the_model_ran_eagerly_warns_once_naming_why(entry):
    """NOTE [no graph ran]: set_stance("force_eager") after a compiled step ran every later step
    eagerly, clean, without a word (the guards stop checking a model once its weights were seen)."""
    import warnings

    torch._dynamo.reset()
    m, x = MLP(), torch.randn(4, 32)
    cm = torch.compile(m, backend="pqt") if entry == "torch.compile" else pqt_compile.compile(m)
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    cm(x).sum().backward()
    opt.step()
    with warnings.catch_warnings(record=True) as caught, torch.compiler.set_stance("force_eager"):
        warnings.simplefilter("always")
        for _ in range(3):
            cm(x).sum().backward()
            opt.step()
    said = _pqt_warnings(caught)
    assert len(said) == 1 and "no PQT-compiled graph ran since this optimizer's previous step" in said[0]
    assert "torch.compiler.set_stance('force_eager') is in force" in said[0]


def test_two_optimizers_stepping_after_one_backward_do_not_warn():
    """The check is per optimizer: the second optimizer of an iteration saw graphs run since its own
    previous step, though none ran since the first optimizer's step."""
    import warnings

    torch._dynamo.reset()
    m, x = MLP(), torch.randn(4, 32)
    cm = pqt_compile.compile(m)
    first, second = list(m.parameters())[:2], list(m.parameters())[2:]
    opts = [torch.optim.SGD(first, lr=0.01), torch.optim.SGD(second, lr=0.01)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            cm(x).sum().backward()
            for opt in opts:
                opt.step()
    assert not _pqt_warnings(caught)


def test_a_pqt_model_trained_on_alternate_steps_next_to_a_plain_one_does_not_warn():
    """One optimizer over a PQT model and a plain one, the two trained on alternate steps: the plain
    model's steps run no PQT graph, but give the PQT weights no gradient either (set to None)."""
    import warnings

    torch._dynamo.reset()
    pqt_model, plain, x = MLP(), nn.Linear(32, 32), torch.randn(4, 32)
    cm = pqt_compile.compile(pqt_model)
    opt = torch.optim.AdamW([*pqt_model.parameters(), *plain.parameters()], lr=1e-3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for it in range(4):
            opt.zero_grad(set_to_none=True)
            (cm(x) if it % 2 == 0 else plain(x)).sum().backward()
            opt.step()
    assert not _pqt_warnings(caught)


def test_a_model_run_eagerly_because_dynamo_is_disabled_is_named_as_such():
    """The nothing-sampled and compiled-over warnings blamed a recompile limit or an outer compile."""
    import warnings

    torch._dynamo.reset()
    m, x = MLP(), torch.randn(4, 32)
    with torch._dynamo.config.patch(disable=True), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cm = pqt_compile.compile(m)
        opt = torch.optim.SGD(m.parameters(), lr=0.01)
        for _ in range(2):
            cm(x).sum().backward()
            opt.step()
    torch._dynamo.reset()  # Dynamo marked MLP.forward's code "skip" while disabled: other tests compile it
    said = _pqt_warnings(caught)
    assert len(said) == 2 and all("Dynamo is disabled (torch._dynamo.config.disable" in s for s in said), said
    assert not any("recompile limit" in s or "applied on top" in s for s in said)
