"""The pqt backend: options, registration, seeds and keys, modes, recompiles, caching, memory."""

import copy
import io

import pytest
import torch
import torch._inductor.config as inductor_config
import torch.nn as nn
from torch._inductor.custom_graph_pass import CustomGraphPass

import pqt_compile
from conftest import FP32_REL_TOL, assert_matches_reference, max_rel_err
from models import MLP, WithGraphBreak
from pqt_compile import PQTConfig, key_for_name, reference, sample
from pqt_compile.compiler.backend import pqt_backend
from pqt_compile.compiler.passes.matmul_ops import MATMUL_OPERANDS
from pqt_compile.sample_parts import SAMPLE_OPS

pytestmark = pytest.mark.private_api  # exercises private torch/Triton APIs: CI reruns it on the newest torch


def counting_backend(counter: dict, **options):
    def backend(gm, example_inputs):
        # Counted on success only: with dynamic shapes Dynamo may restart its analysis from
        # inside a compile (TensorifyScalarRestartAnalysis), which is not a recompile.
        fn = pqt_backend(gm, example_inputs, options=options)
        counter["compiles"] = counter.get("compiles", 0) + 1
        return fn

    return backend


def test_backend_is_registered_once_through_the_entry_point():
    from torch._dynamo.backends.registry import lookup_backend

    assert "pqt" in torch._dynamo.list_backends(exclude_tags=())
    assert lookup_backend("pqt") is pqt_backend


@pytest.mark.parametrize("options,match", [({"formt": "int8"}, "formt"), ({"format": "int99"}, "int99"), ({"block_size": -3}, "block_size")])
def test_bad_options_fail_at_compile_time(options, match):
    torch._dynamo.reset()
    m = nn.Linear(8, 8)
    with pytest.raises(Exception, match=match):
        torch.compile(m, backend="pqt", options=options)(torch.randn(2, 8))


def test_pqt_compile_refuses_unknown_options_when_called():
    with pytest.raises(ValueError, match="formt"):
        pqt_compile.compile(nn.Linear(8, 8), options={"formt": "int8"})
    # A PQT field in options overrode the config silently, and the guards checked the config.
    with pytest.raises(ValueError, match=r"\['exclude', 'format'\] are PQTConfig fields; give them in the config"):
        pqt_compile.compile(nn.Linear(8, 8), PQTConfig(format="int4"), options={"format": "fp8_e4m3", "exclude": ["."]})
    # An Inductor option of the wrong type, as torch.compile refuses it ("False" switched autotuning on).
    with pytest.raises(ValueError, match=r"Inductor option 'max_autotune' takes a bool, got str 'False'"):
        pqt_compile.compile(nn.Linear(8, 8), options={"max_autotune": "False"})
    with pytest.raises(ValueError, match=r"'max_autotune' takes a bool"):
        pqt_backend(None, [], options={"max_autotune": "False"})
    compiled = torch.compile(nn.Linear(8, 8))
    with pytest.raises(TypeError, match=r"OptimizedModule is already compiled; pass the model itself .*\._orig_mod"):
        pqt_compile.compile(compiled)
    with pytest.raises(TypeError, match="PQTConfig"):
        pqt_compile.compile(nn.Linear(8, 8), config={"format": "int8"})
    with pytest.raises(RuntimeError, match="max_autotune.*max-autotune"):  # a bad mode too, not at the first call
        pqt_compile.compile(nn.Linear(8, 8), mode="max_autotune")


def test_options_reach_the_sample():
    torch._dynamo.reset()
    m = nn.Linear(40, 8, bias=False)
    cfg = PQTConfig(format="fp4_e2m1", block_size=8, noise="uniform")
    cm = torch.compile(m, backend="pqt", options={"format": "fp4_e2m1", "block_size": 8, "noise": "uniform"})
    eye = torch.eye(40)
    with pqt_compile.fixed_seed(5):
        y = cm(eye)  # eye @ W_hat^T = W_hat^T, exactly
    want = sample(m.weight, seed=5, key=key_for_name("weight"), axis=1, config=cfg)
    assert torch.equal(y.t(), want)


def test_a_model_pqt_compile_returns_pickles_and_the_loaded_copy_samples_with_its_config():
    """Its backend was a closure: torch.save and pickle failed ("Can't pickle local object"), where
    torch.compile(model, backend="pqt") pickles."""
    torch._dynamo.reset()
    m = nn.Linear(40, 8, bias=False)
    cfg = PQTConfig(format="fp4_e2m1", block_size=8)
    buf = io.BytesIO()
    torch.save(pqt_compile.compile(m, cfg), buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    with pqt_compile.fixed_seed(5):
        y = loaded(torch.eye(40))
    want = sample(loaded._orig_mod.weight, seed=5, key=key_for_name("weight"), axis=1, config=cfg)
    assert torch.equal(y.t(), want)


def test_sampled_weight_is_bit_exact_in_forward_and_backward():
    """Forward reads W_hat (eye @ W_hat^T); backward's grad_input is grad @ W_hat, the same sample."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    m = nn.Linear(70, 16, bias=False)  # K = 70: a ragged last block
    cm = pqt_compile.compile(m)
    x = torch.eye(70, requires_grad=True)
    with pqt_compile.fixed_seed(11):
        y = cm(x)
    want = sample(m.weight, seed=11, key=key_for_name("weight"), axis=1)
    assert torch.equal(y.t(), want)
    y.backward(torch.eye(70, 16))  # x.grad = grad @ W_hat: rows of W_hat^T ... exactly
    assert torch.equal(x.grad, torch.eye(70, 16) @ want)
    # and the weight's gradient is the plain one (identity through the sample)
    assert torch.equal(m.weight.grad, torch.eye(70, 16).t() @ torch.eye(70))


def test_inductor_freezing_evaluates_clean_and_a_graph_that_must_sample_names_the_setting():
    """Inductor freezing (TORCHINDUCTOR_FREEZING=1) makes Dynamo fold a no_grad graph's weights into
    constants: every no_grad call crashed, telling the user to set inline_inbuilt_nn_modules, which
    torch 2.13 ignores. Such a graph is clean anyway: plain Inductor's, frozen. One that must sample
    (sample_in_eval; any graph under prepare_freezing) is refused naming the real setting."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    m, x = MLP(), torch.randn(4, 32)
    with inductor_config.patch(freezing=True):
        cm = pqt_compile.compile(m)
        with pqt_compile.fixed_seed(3):
            assert max_rel_err(cm(x), reference.run(m, x, seed=3)) < FP32_REL_TOL  # training: sampled
        m.eval()
        with torch.no_grad():
            assert max_rel_err(cm(x), m(x)) < FP32_REL_TOL
        torch._dynamo.reset()
        with torch.no_grad(), pytest.raises(Exception, match=r"Inductor freezing is on .* turn freezing off for a pqt "
                                                            r"compile \(sample_in_eval samples no_grad calls too\)"):
            pqt_compile.compile(m, PQTConfig(sample_in_eval=True))(x)
    torch._dynamo.reset()
    m.train()
    with torch._dynamo.config.patch(prepare_freezing=True), pytest.raises(Exception, match=r"prepare_freezing is on"):
        pqt_compile.compile(m)(x)


def test_eval_no_grad_and_inference_mode_use_clean_weights():
    torch._dynamo.reset()
    torch.manual_seed(0)
    m = MLP()
    cm = pqt_compile.compile(m)
    x = torch.randn(4, 32)
    clean = m(x).detach()
    assert not torch.allclose(cm(x), clean)
    with torch.no_grad():
        assert max_rel_err(cm(x), clean) < FP32_REL_TOL
    with torch.inference_mode():
        assert max_rel_err(cm(x), clean) < FP32_REL_TOL
    m.eval()
    assert max_rel_err(cm(x).detach(), clean) < FP32_REL_TOL
    m.train()
    assert not torch.allclose(cm(x), clean)


class Parallel(nn.Module):
    """Calls each of its blocks on the same input (an eager parent of per-block compiles)."""

    def __init__(self, *blocks: nn.Module) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> list:
        return [b(x) for b in self.blocks]


def test_per_block_compilation_gives_each_block_its_own_noise():
    torch._dynamo.reset()
    torch.manual_seed(0)
    root = Parallel(MLP(), MLP(), MLP())
    root.blocks[1].load_state_dict(root.blocks[0].state_dict())  # identical weights in blocks 0 and 1
    for block in root.blocks:
        block.compile(backend="pqt")
    x = torch.randn(4, 32)
    with pqt_compile.fixed_seed(3):
        y0, y1, _ = root(x)
    assert not torch.allclose(y0, y1)  # same weights, same seed, different keys (naming.py rule 3)
    # Registering the root gives the names reference.run uses.
    pqt_compile.register(root)
    with pqt_compile.fixed_seed(3):
        got = root(x)
    for a, b in zip(got, reference.run(root, x, seed=3)):
        assert max_rel_err(a, b) < FP32_REL_TOL


def test_models_of_one_class_called_alone_are_each_keyed_by_their_own_names():
    """Two models of one class compiled separately share one Dynamo graph (the second never
    reaches the backend); each is still keyed by its own qualified names, as reference.run on
    it (naming.py NOTE [a graph reused by another model])."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    a, b = MLP(), MLP()
    b.load_state_dict(a.state_dict())
    ca, cb = torch.compile(a, backend="pqt"), torch.compile(b, backend="pqt")
    x = torch.randn(4, 32)
    with pqt_compile.fixed_seed(3):
        ya, yb = ca(x), cb(x)
    assert torch.equal(ya, yb)  # same weights, same names, same seed: the same draw
    assert max_rel_err(yb, reference.run(b, x, seed=3)) < FP32_REL_TOL


def test_cache_hit_still_samples():
    torch._dynamo.reset()
    torch.manual_seed(0)
    m, x = MLP(), torch.randn(4, 32)
    with pqt_compile.fixed_seed(2):
        first = pqt_compile.compile(m)(x)
    torch._dynamo.reset()
    from torch._dynamo.utils import counters

    counters.clear()
    with pqt_compile.fixed_seed(2):
        second = pqt_compile.compile(m)(x)
    hits = counters["inductor"]["fxgraph_cache_hit"] + counters["aot_autograd"]["autograd_cache_hit"]
    assert hits > 0
    assert torch.equal(first, second)
    assert max_rel_err(second, reference.run(m, x, seed=2)) < FP32_REL_TOL


class GraphRecorder(CustomGraphPass):
    """Records the post-grad graphs (partitioned forward and backward)."""

    def __init__(self) -> None:
        self.graphs: list[str] = []
        self.saved: list[list[str]] = []

    def __call__(self, graph: torch.fx.Graph) -> None:
        self.graphs.append(str(graph))
        if not any(n.op == "placeholder" and n.name.startswith("tangents") for n in graph.nodes):
            # Everything computed from a sample (views of it included) must stay in the forward.
            derived = {n for op in SAMPLE_OPS for n in graph.find_nodes(op="call_function", target=op)}
            for n in graph.nodes:
                if any(a in derived for a in n.all_input_nodes) and n.target not in MATMUL_OPERANDS:
                    derived.add(n)
            out = next(n for n in graph.nodes if n.op == "output")
            self.saved.append([str(a.target) for a in out.args[0] if isinstance(a, torch.fx.Node) and a in derived])

    def uuid(self):
        return None  # do not cache: the test must see the graphs


def test_forward_saves_the_clean_weight_and_backward_recomputes_the_sample():
    torch._dynamo.reset()
    rec = GraphRecorder()
    m = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32))
    cm = torch.compile(m, backend="pqt", options={"post_grad_custom_post_pass": rec})
    cm(torch.randn(4, 32)).sum().backward()
    fwd = [g for g in rec.graphs if "tangents" not in g]
    bwd = [g for g in rec.graphs if "tangents" in g]
    assert len(fwd) == 1 and len(bwd) == 1
    assert "pqt.sample" in fwd[0] and "pqt.sample" in bwd[0]  # regenerated in the backward
    assert rec.saved == [[]]  # neither a sample nor a view of one crosses to the backward


def _targets(graph: str) -> set[str]:
    return {op for op in ("pqt.sample.default", "pqt.block_values", "pqt.stream_words", "pqt.sample_from_values")
            if op in graph}


@pytest.mark.parametrize("cfg", [PQTConfig(), PQTConfig(format="nvfp4"), PQTConfig(format="int8", mode="ste")],
                         ids=["fp6", "nvfp4", "int8-ste"])
def test_the_backward_reads_the_forwards_block_values_where_the_cpp_lowering_makes_them(cfg):
    """NOTE [saved block values]: a C++ weight in the per-block form (above CPP_ONE_KERNEL_MAX_NUMEL,
    or a ragged last block) is sampled by three ops (two under mode "ste": no words); the backward
    regenerates only the element part, from the forward's saved values and words, and the outputs
    and gradients match the reference (NVFP4: its tensor amax reaches the block values)."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    rec = GraphRecorder()
    # Split: Linear(64, 128) and Linear(128, 48) (8192 and 6144 elements), and Linear(48, 8), where
    # blocks of 32 leave a ragged last block (NVFP4's blocks of 16 do not: one kernel there); the
    # other weights are small.
    m = nn.Sequential(nn.Linear(16, 16), nn.GELU(), nn.Linear(16, 64), nn.GELU(), nn.Linear(64, 128),
                      nn.GELU(), nn.Linear(128, 48), nn.GELU(), nn.Linear(48, 8))
    ref = copy.deepcopy(m)
    cm = pqt_compile.compile(m, cfg, options={"post_grad_custom_post_pass": rec})
    x = torch.randn(4, 16)
    with pqt_compile.fixed_seed(5):
        out = cm(x)
        out.square().sum().backward()
    fwd = [g for g in rec.graphs if "tangents" not in g]
    bwd = [g for g in rec.graphs if "tangents" in g]
    words = set() if cfg.mode == "ste" else {"pqt.stream_words"}
    assert _targets(fwd[0]) == {"pqt.sample.default", "pqt.block_values", "pqt.sample_from_values", *words}
    assert _targets(bwd[0]) == {"pqt.sample.default", "pqt.sample_from_values"}  # no block amax, values or words
    split = 2 if cfg.format == "nvfp4" else 3
    assert fwd[0].count("pqt.block_values.default]") == split and bwd[0].count("pqt.sample_from_values.default]") == split
    # NOTE [one words op per graph]: one words op for the split weights, a row each.
    assert fwd[0].count("pqt.stream_words.default]") == len(words)
    assert rec.saved == [[]]  # neither a sample nor a view of one crosses to the backward
    want = reference.run(ref, x, seed=5, config=cfg)
    assert max_rel_err(out, want) < FP32_REL_TOL
    want.square().sum().backward()
    for (name, p), q in zip(m.named_parameters(), ref.parameters()):
        assert max_rel_err(p.grad, q.grad) < FP32_REL_TOL, name


def test_share_sample_saves_the_sample_for_the_backward_and_keeps_the_bits():
    """PQTConfig(share_sample=True): the backward reads the forward's sample instead of
    regenerating it, and the loss and gradients are the same bits as the default's."""
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32))
    x = torch.randn(4, 32)
    results = {}
    for share in (False, True):
        torch._dynamo.reset()
        rec = GraphRecorder()
        m = copy.deepcopy(base)
        cm = torch.compile(m, backend="pqt", options={"post_grad_custom_post_pass": rec, "share_sample": share})
        with pqt_compile.fixed_seed(3):
            loss = cm(x).square().sum()
            loss.backward()
        bwd = [g for g in rec.graphs if "tangents" in g]
        results[share] = (loss.detach(), [p.grad.clone() for p in m.parameters()], bwd, rec.saved)
    (l0, g0, bwd0, saved0), (l1, g1, bwd1, saved1) = results[False], results[True]
    assert "pqt.sample" in bwd0[0] and "pqt.sample" not in bwd1[0]  # no regeneration in the backward
    # The second layer's sample crosses to the backward (dx = dy @ W2_hat); the first one's is
    # not needed there (x needs no gradient).
    assert saved0 == [[]] and len(saved1[0]) == 1
    assert torch.equal(l0, l1)
    assert all(torch.equal(a, b) for a, b in zip(g0, g1))


def test_dynamic_batch_and_sequence_do_not_recompile():
    torch._dynamo.reset()
    torch.manual_seed(0)
    counter: dict = {}
    m = MLP()
    cm = torch.compile(m, backend=counting_backend(counter), dynamic=True)
    for b, t in [(2, 3), (3, 5), (5, 7), (4, 2)]:
        x = torch.randn(b, t, 32)
        with pqt_compile.fixed_seed(b):
            y = cm(x)
        assert max_rel_err(y, reference.run(m, x, seed=b)) < FP32_REL_TOL
    assert counter["compiles"] == 1


def test_graph_break_samples_every_piece():
    torch._dynamo.reset()
    torch.manual_seed(0)
    counter: dict = {}
    m, x = WithGraphBreak(), torch.randn(3, 16)
    cm = torch.compile(m, backend=counting_backend(counter))
    with pqt_compile.fixed_seed(6):
        y = cm(x)
    assert counter["compiles"] == 2
    assert max_rel_err(y, reference.run(m, x, seed=6)) < FP32_REL_TOL
    only_b = reference.run(m, x, seed=6, config=PQTConfig(include=["^b\\."]))
    assert max_rel_err(y, only_b) > 1e-3  # the first piece was sampled too


def test_exclude_keeps_a_weight_clean():
    torch._dynamo.reset()
    m = nn.Linear(32, 8, bias=False)
    cm = pqt_compile.compile(m, PQTConfig(exclude=["weight"]))
    x = torch.eye(32)
    assert torch.equal(cm(x).t(), m.weight.detach())


def test_blocks_compiled_one_by_one_after_registering_the_root():
    torch._dynamo.reset()
    torch.manual_seed(0)
    root = nn.Sequential(MLP(), MLP())
    root[1].load_state_dict(root[0].state_dict())
    pqt_compile.register(root)
    for i in range(2):
        pqt_compile.compile(root[i], inplace=True)  # must not replace the root's names
    x = torch.randn(4, 32)
    with pqt_compile.fixed_seed(9):
        y0, y1, y = root[0](x), root[1](x), root(x)
    assert not torch.allclose(y0, y1)
    assert max_rel_err(y, reference.run(root, x, seed=9)) < FP32_REL_TOL


def test_an_nn_sequential_compiled_in_place_is_sampled():
    """Module.compile compiles no frame of a module whose forward is torch.nn's own (torch 2.11-2.14:
    compat.compile_in_place), so pqt_compile.compile(nn.Sequential(...), inplace=True) trained clean
    and warned of a compile on top. Now sampled as the reference samples it, its class and its
    hooks kept; a deep copy is not compiled (as Module.compile's)."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 8))
    assert pqt_compile.compile(m, inplace=True) is m and type(m) is nn.Sequential
    x = torch.randn(4, 32)
    with pqt_compile.fixed_seed(5):
        y = m(x)
    assert max_rel_err(y, reference.run(m, x, seed=5)) < FP32_REL_TOL  # (a hook on m would hide the bug: Dynamo traces it)
    with torch.no_grad():
        assert not torch.allclose(y, copy.deepcopy(m)(x))  # the copy runs eagerly, its own weights, clean
        assert torch.equal(copy.deepcopy(m)(x), m.forward(x))
    hooked, calls = nn.Sequential(nn.Linear(32, 8)), []
    hooked.register_forward_hook(lambda mod, args, out: calls.append(1))
    pqt_compile.compile(hooked, inplace=True)
    hooked(x)
    assert calls == [1]


def test_compiled_submodule_keeps_the_plain_models_keys():
    """torchtitan-style: blocks swapped for their torch.compile wrappers (`_orig_mod` in their
    parameter names) draw the noise of the plain model's weights, and reference.run on the model
    as it stands (wrappers and all) reproduces the compiled output."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    root = nn.Sequential(MLP(), MLP())
    plain = nn.Sequential(*[MLP() for _ in range(2)])
    plain.load_state_dict(root.state_dict())
    root[1] = torch.compile(root[1], backend="pqt")
    root[0] = torch.compile(root[0], backend="pqt")
    assert "1._orig_mod.fc1.weight" in dict(root.named_parameters())
    pqt_compile.register(root)
    x = torch.randn(4, 32)
    with pqt_compile.fixed_seed(6):
        y = root(x)
    assert max_rel_err(y, reference.run(root, x, seed=6)) < FP32_REL_TOL
    assert max_rel_err(y, reference.run(plain, x, seed=6)) < FP32_REL_TOL
    assert max_rel_err(y, reference.run(plain, x, seed=7)) > 1e-3  # a wrong draw cannot pass


class _Recorded(Exception):
    pass


@pytest.mark.parametrize("fmt,patched", [("nvfp4", True), ("fp4_e2m1", False)])
def test_a_format_that_divides_gets_ieee_division_on_a_torch_without_div_rn(monkeypatch, fmt, patched):
    """torch 2.11 has no ops.div_rn (compat NOTE [division on torch 2.11], emulated here): the
    backend patches eager_numerics.division_rounding on for an NVFP4 compile only."""
    import pqt_compile.compat.inductor as compat_inductor
    import pqt_compile.compiler.backend as backend

    monkeypatch.setattr(compat_inductor, "_has_div_rn", lambda: False)
    seen = []

    def recording_compile_fx(gm, example_inputs, config_patches, **kwargs):
        seen.append(dict(config_patches))
        raise _Recorded  # the patches are what is tested: Inductor need not run

    monkeypatch.setattr(backend, "compile_fx", recording_compile_fx)
    torch._dynamo.reset()
    with pytest.raises(Exception, match="_Recorded"):  # Dynamo wraps the backend's exception
        pqt_compile.compile(nn.Linear(32, 8), PQTConfig(format=fmt))(torch.randn(2, 32))
    assert len(seen) == 1
    assert (seen[0].get("eager_numerics.division_rounding") is True) is patched
    torch._dynamo.reset()


def test_a_compiled_optimizer_step_goes_to_plain_inductor():
    """torch.compile(opt.step, backend="pqt"): the step's graph holds the parameters as attributes
    (state it updates, no matmul), and was refused naming a Dynamo setting nobody had changed."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    m, twin = MLP(), MLP()
    twin.load_state_dict(m.state_dict())
    before = m.fc1.weight.detach().clone()
    opts = [torch.optim.SGD(p.parameters(), lr=0.1, momentum=0.9) for p in (m, twin)]
    step = torch.compile(opts[0].step, backend="pqt")
    for _ in range(2):
        for model in (m, twin):
            model(torch.ones(2, 32)).sum().backward()
        step()
        opts[1].step()
    # Inductor's fused update against eager's, both plain fp32 (no sample): the project's fp32 bound.
    assert all(max_rel_err(a, b) < FP32_REL_TOL for a, b in zip(m.parameters(), twin.parameters()))
    assert not torch.equal(m.fc1.weight, before)  # the compiled step did update


_GLOBAL_MODEL = None


def test_a_compiled_training_step_that_reads_a_module_level_model_names_its_weights_in_it():
    """A compiled step function reaching the model through a global keyed its weights by the
    variable (`_GLOBAL_MODEL.fc1.weight`), never registered the model, and so never counted an
    optimizer step: every step drew micro-batch noise of step 0, unlike the reference."""
    global _GLOBAL_MODEL
    torch._dynamo.reset()
    torch.manual_seed(0)
    _GLOBAL_MODEL = MLP()
    opt = torch.optim.SGD(_GLOBAL_MODEL.parameters(), lr=0.01)

    @torch.compile(backend="pqt")
    def loss_of(x):
        return _GLOBAL_MODEL(x).square().mean()

    x = torch.randn(4, 32)
    pqt_compile.manual_seed(2)
    for step in range(2):
        snap = copy.deepcopy(_GLOBAL_MODEL)
        loss = loss_of(x)
        want = reference.run(snap, x, seed=pqt_compile.step_seed(step, 0)).square().mean()
        assert max_rel_err(loss, want) < FP32_REL_TOL, step
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert pqt_compile.seed_state()["step"] == 2
    _GLOBAL_MODEL = None
