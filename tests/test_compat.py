"""pqt_compile.compat: every private torch symbol pqt_compile uses resolves on this torch, and a missing
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


def test_the_0d_assert_filter_nests_overlaps_across_threads_and_restores_inductor():
    """NOTE [0-d input asserts]: blocks nest, and overlap in two threads that leave in the other
    order; the filter applies only in a thread inside a block, and Inductor's method is its own
    again once the last block is left (also after an error inside one)."""
    import threading

    from torch._inductor.codegen.wrapper import PythonWrapperCodegen

    def method():
        return PythonWrapperCodegen.__dict__["codegen_input_size_asserts"]

    original = method()
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def first():
        with compat.no_scalar_index_input_asserts():
            first_in.set()
            second_in.wait(10)
        first_out.set()

    def second():
        first_in.wait(10)
        with compat.no_scalar_index_input_asserts():
            second_in.set()
            first_out.wait(10)
            seen["wrapped while the first thread is out"] = method() is not original
        seen["restored"] = method() is original

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    first_in.wait(10)
    seen["this thread skips"] = compat.inductor._skip_scalar_index_asserts.get()  # not in a block here
    for t in threads:
        t.join(10)
    assert seen == {"wrapped while the first thread is out": True, "restored": True, "this thread skips": False}
    with pytest.raises(ValueError), compat.no_scalar_index_input_asserts():
        with compat.no_scalar_index_input_asserts():
            assert method() is not original and compat.inductor._skip_scalar_index_asserts.get()
            raise ValueError
    assert method() is original and not compat.inductor._skip_scalar_index_asserts.get()


def test_compiled_module_is_read_from_torch_compiles_wrapper():
    """compat.compiled_module names the module each entry point compiles, from inside a
    backend (NOTE [the compiled module]); outside a compile there is none. If a torch release
    moves torch.compile's wrapper, this fails by name (names then come from the traced frame)."""
    import torch.nn as nn

    class Inner(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(x)

    class Outer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = Inner()

        def forward(self, x):
            return self.inner(x) * 2

    seen = []

    def backend(gm, example_inputs):
        seen.append(compat.compiled_module())
        return gm.forward

    assert compat.compiled_module() is None
    torch._dynamo.reset()
    m = Outer()
    torch.compile(m, backend=backend)(torch.randn(2, 4))
    torch._dynamo.reset()  # else m2 reuses m's graph and the backend is not called
    m2 = Outer()
    m2.compile(backend=backend)
    m2(torch.randn(2, 4))
    torch.compile(lambda mod, x: mod.inner(x), backend=backend)(m, torch.randn(2, 4))
    assert seen[0] is m and seen[1] is m2 and seen[2] is None  # a function tracing its modules whole
    torch._dynamo.reset()


class _Twice(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, g):
        return g * 2


class _TwiceByVjp(torch.autograd.Function):
    forward = staticmethod(_Twice.forward)
    vjp = staticmethod(_Twice.backward)  # the same rule, as vjp: a class that is not watched


def test_a_watched_function_backward_calls_back_for_marked_nodes_only():
    """compat NOTE [watched backward]: each backward through a marked node calls back once, the
    gradients are the Function's own, a node of the same class left unmarked does not call back,
    and a class is wrapped once however many nodes are marked."""
    calls = []
    x = torch.ones(3, requires_grad=True)
    y = _Twice.apply(x)
    assert compat.watch_function_backward(y.grad_fn, lambda: calls.append("y"))
    original = _Twice.backward
    z = _Twice.apply(x)
    assert compat.watch_function_backward(z.grad_fn, lambda: calls.append("z"))
    assert _Twice.backward is original  # not wrapped twice
    y.sum().backward(retain_graph=True)
    y.sum().backward()
    _Twice.apply(x).sum().backward()  # unmarked: no call
    assert calls == ["y", "y"]
    assert torch.equal(x.grad, torch.full((3,), 6.0))
    z.sum().backward()
    assert calls == ["y", "y", "z"]


def test_nodes_that_cannot_be_watched_are_left_to_the_caller():
    x = torch.ones(3, requires_grad=True)
    assert not compat.watch_function_backward((x * 2).grad_fn, lambda: None)  # a C++ node
    assert not compat.watch_function_backward(_TwiceByVjp.apply(x).grad_fn, lambda: None)  # vjp, not backward
    assert "backward" not in _TwiceByVjp.__dict__


def test_a_subclass_of_a_watched_function_calls_back_once():
    """A Function subclass inheriting a wrapped backward is not wrapped again: one call back per
    backward."""

    class _TwiceAgain(_Twice):
        pass

    calls = []
    x = torch.ones(2, requires_grad=True)
    assert compat.watch_function_backward(_Twice.apply(x).grad_fn, lambda: None)  # _Twice wrapped first
    y = _TwiceAgain.apply(x)
    assert compat.watch_function_backward(y.grad_fn, lambda: calls.append(1))
    y.sum().backward()
    assert calls == [1]
