"""graph_abi.py: the seed and key inputs, in one place."""

import re

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from pqt_compile.compiler import graph_abi

pytestmark = pytest.mark.private_api  # exercises private torch/Triton APIs: CI reruns it on the newest torch


def _graph_with(values, num_weights=2):
    """A graph [w, seed, key_0, ..., key_{W-1}] whose added inputs carry `values()` as fake values."""
    g = torch.fx.Graph()
    w = g.placeholder("w")
    seed, keys = graph_abi.add_inputs(g, dynamo=False, num_weights=num_weights)
    g.output(w)
    with FakeTensorMode():
        w.meta["val"] = torch.empty(4, 4)
        for node, val in zip((seed, *keys), values()):
            node.meta["val"] = val
    return g


def _int0():
    return torch.empty((), dtype=torch.int64)


def test_inputs_are_appended_after_the_graphs_own_and_found_by_their_values():
    g = _graph_with(lambda: [_int0(), _int0(), _int0()])
    names = [n.name for n in g.nodes if n.op == "placeholder"]
    assert names == ["w", graph_abi.SEED, graph_abi.KEY.format(0), graph_abi.KEY.format(1)]
    primals = [n for n in g.nodes if n.op == "placeholder"]
    assert graph_abi.find_inputs(primals, 2) == (primals[1], primals[2:])
    assert graph_abi.key_of_slot(primals[2:], 1) is primals[3]


@pytest.mark.parametrize("values,num", [
    (lambda: [torch.empty((), dtype=torch.float32), _int0(), _int0()], 2),  # a weight where the seed was
    (lambda: [_int0(), torch.empty(2, dtype=torch.int64), _int0()], 2),  # a [W] keys tensor (the old layout)
    (lambda: [_int0(), _int0(), _int0()], 3),  # more weights than keys: the weight itself would be read
])
def test_a_layout_that_moved_is_refused(values, num):
    primals = [n for n in _graph_with(values).nodes if n.op == "placeholder"]
    with pytest.raises(RuntimeError, match="lays out AOTAutograd|at least"):
        graph_abi.find_inputs(primals, num)


def test_example_and_runtime_values():
    ex = graph_abi.example_inputs([torch.ones(2)], 3, torch.device("cpu"))
    assert len(ex) == 5 and all(t.dtype == torch.int64 and t.dim() == 0 for t in ex[1:])
    keys = graph_abi.key_tensors([5, graph_abi.DISABLED_KEY], torch.device("cpu"))
    assert [int(k) for k in keys] == [5, -1] and all(k.dim() == 0 for k in keys)
    # NOTE [keys are not views]: AOTAutograd would detach a saved view at every step.
    assert not any(k._is_view() for k in keys) and not graph_abi.seed_tensor(3, torch.device("cpu"))._is_view()


def test_the_seed_tensor_is_made_once_per_seed_and_never_written():
    """NOTE [seed on the device]: every graph of a micro-batch gets the same tensor; the next seed
    gets a new one, and the old one keeps its value (a saved backward still reads its step's seed)."""
    cpu = torch.device("cpu")
    a = graph_abi.seed_tensor(7, cpu)
    assert graph_abi.seed_tensor(7, cpu) is a and int(a) == 7
    b = graph_abi.seed_tensor(8, cpu)
    assert b is not a and int(b) == 8 and int(a) == 7


def test_only_parameters_some_config_could_sample_get_a_key():
    """NOTE [keyed inputs only]: a bias, a norm's weight or an fp64 matrix is never sampled
    (selection rules 2 and 4) and gets no key input; a matrix of a supported dtype does, excluded
    or not (include/exclude may differ per call of a shared graph)."""
    P = torch.nn.Parameter
    params = [P(torch.ones(4, 4)), P(torch.ones(4)), P(torch.ones(2, 4, 4)), P(torch.ones(4, 4, dtype=torch.float64)),
              P(torch.ones(4, 4, dtype=torch.bfloat16)), torch.ones(4, 4)]
    assert graph_abi.key_slots(params) == (0, 2, 4)


def test_a_compiled_graph_has_one_key_input_per_matrix():
    """nn.Linear -> nn.LayerNorm -> nn.Linear: of its 6 Parameter inputs (w, b, the norm's w and b,
    w, b) the two matrices get keys, and the pass samples both with them."""
    from pqt_compile.compiler.backend import pqt_backend
    from pqt_compile.compiler.passes.base import recording
    from pqt_compile.compiler.wrapper import PQTCompiled

    torch._dynamo.reset()
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 4))
    compiled: list = []

    def backend(gm, example_inputs):
        compiled.append(pqt_backend(gm, example_inputs))
        return compiled[-1]

    with recording() as rec:
        torch.compile(m, backend=backend)(torch.randn(3, 8)).sum().backward()
    (fn,) = compiled
    assert isinstance(fn, PQTCompiled) and fn._compiler.key_slots == (0, 4)
    assert {e.name for r in rec.records if r.sampled for e in r.edges} == {"0.weight", "2.weight"}


def _step_code(model, compile_fn, *args) -> list[str]:
    """The generated wrappers (forward, then backward) of one training step, compiled afresh."""
    import torch._inductor.config as inductor_config

    from pqt_compile import compat

    torch._dynamo.reset()
    with inductor_config.patch(fx_graph_cache=False), compat.capture_output_code() as codes:
        compile_fn(model)(*args).float().sum().backward()  # the backward graph compiles here, lazily
    return [c[c.index("def call("):] for c in codes]


def _zero_d_inputs(code: str) -> set[str]:
    """The names of a generated module's 0-d tensor inputs (from its get_args)."""
    return set(re.findall(r"^\s*(\w+) = rand_strided\(\(\), \(\)", code, re.M))


def _checked(code: str) -> set[str]:
    """The names that the input checks of a generated `call` name (`assert_size_stride`, or torch
    2.15's `assert_size_stride_grouped`)."""
    call = code[:code.index("def get_args(")]
    lines = [line for line in call.splitlines() if "assert_size_stride" in line]
    return {name for line in lines for name in re.findall(r"\w+", line)}


def test_the_seed_and_keys_are_not_checked_per_call_and_every_other_input_is():
    """compat NOTE [0-d input asserts]: a 0-d tensor's size and stride check always holds, so the
    wrappers of a PQT step check none of the seed and key inputs (forward, and the backward that
    reads the saved ones), and still check the weights and activations; a plain compile in the same
    process keeps the check of its own 0-d input (the switch lasts one pqt compile)."""
    import pqt_compile

    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 8))
    fwd, bwd = _step_code(m, lambda mod: pqt_compile.compile(mod, pqt_compile.PQTConfig()), torch.randn(4, 8))
    assert len(_zero_d_inputs(fwd)) == 3 and len(_zero_d_inputs(bwd)) == 2  # the seed and two keys; those saved
    for code in (fwd, bwd):
        assert _checked(code) and not _checked(code) & _zero_d_inputs(code)
    assert "primals_1" in _checked(fwd) and "tangents_1" in _checked(bwd)  # the first weight, the gradient
    assert "cpp_fused_sample" in bwd  # the backward reads the seed and a key (it regenerates a sample)

    class Scaled(torch.nn.Module):
        def forward(self, x, s):
            return x * s

    (plain,) = _step_code(Scaled(), torch.compile, torch.randn(4, requires_grad=True), torch.tensor(3))[:1]
    assert len(_zero_d_inputs(plain)) == 1 and _zero_d_inputs(plain) <= _checked(plain)
