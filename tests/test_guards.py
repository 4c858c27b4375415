"""The safety nets (guards.py), through both entry points: torch.compile(model, backend="pqt")
and pqt_compile.compile(model)."""

import warnings

import pytest
import torch
import torch.nn as nn

import pqt_compile
from models import MLP
from pqt_compile import PQTConfig

pytestmark = pytest.mark.private_api  # exercises private torch/Triton APIs: CI reruns it on the newest torch


def _compile(entry: str, model: nn.Module, config: PQTConfig = PQTConfig()) -> nn.Module:
    if entry == "torch.compile":
        return torch.compile(model, backend="pqt", options=config.to_options())
    return pqt_compile.compile(model, config)


def _train(call, model: nn.Module, x: torch.Tensor, steps: int = 2) -> list[str]:
    """Train a few steps; return the texts of pqt's warnings."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(steps):
            call(x).sum().backward()
            opt.step()
            opt.zero_grad()
    return [str(w.message) for w in caught if str(w.message).startswith("pqt:")]


class EagerHead(nn.Linear):
    @torch._dynamo.disable  # stands for any eager island (a frame Dynamo skipped)
    def forward(self, x):
        return super().forward(x)


class WithHead(nn.Module):
    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.body, self.head = MLP(), head

    def forward(self, x):
        return self.head(self.body(x))


ENTRIES = ["torch.compile", "pqt_compile.compile"]


@pytest.mark.parametrize("entry", ENTRIES)
def test_weights_that_never_reach_a_graph_are_named_once_after_a_step(entry):
    torch._dynamo.reset()
    x = torch.randn(4, 32)
    for head, excluded, expect in ((EagerHead(32, 8), (), True), (EagerHead(32, 8), ("head",), False), (nn.Linear(32, 8), (), False)):
        torch.manual_seed(0)
        model = WithHead(head)
        named = [w for w in _train(_compile(entry, model, PQTConfig(exclude=excluded)), model, x) if "never reached" in w]
        assert len(named) == int(expect), (excluded, named)  # once per model
        if expect:
            assert ": head.weight." in named[0] and "body." not in named[0]


@pytest.mark.parametrize("entry", ENTRIES)
def test_blocks_keyed_alike_warn_at_the_optimizer_step(entry):
    """Blocks compiled one by one without register(root) name their weights relative to themselves:
    two weights of one optimizer would draw the same noise. Each block gets a graph of its own here
    (block 1 sees an input that requires grad), so they do not share the '#n' naming of a shared graph."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    root = nn.Sequential(MLP(), MLP())
    for i in range(2):
        root[i] = _compile(entry, root[i])
    shared = [w for w in _train(root, root, torch.randn(4, 32)) if "draw the same noise" in w]
    assert len(shared) == 1 and "fc1.weight" in shared[0] and "register" in shared[0]
    assert "bias" not in shared[0]  # biases draw no noise: their names are not listed
    # Registering the root first keys every weight by its full name: no warning.
    torch._dynamo.reset()
    root = nn.Sequential(MLP(), MLP())
    pqt_compile.register(root)
    for i in range(2):
        root[i] = _compile(entry, root[i])
    assert not [w for w in _train(root, root, torch.randn(4, 32)) if "draw the same noise" in w]


def test_two_models_with_the_same_names_are_not_a_collision():
    """Separate models (each with its own optimizer) are separate runs: same names, no warning."""
    torch._dynamo.reset()
    x = torch.randn(4, 32)
    warned = []
    for _ in range(2):
        torch.manual_seed(0)
        m = MLP()
        warned += _train(torch.compile(m, backend="pqt"), m, x)
    assert not warned, warned


def test_a_module_called_many_times_in_a_step_is_not_mistaken_for_a_step():
    """A weight-shared cell called three times before the head's first call: the head is compiled
    and sampled, and must not be reported as unseen (the check waits for the optimizer step)."""
    torch._dynamo.reset()

    class Recurrent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cell, self.head = nn.Linear(32, 32), nn.Linear(32, 4)

        def forward(self, x):
            for _ in range(3):
                x = torch.tanh(self.cell(x))
            return self.head(x)

    torch.manual_seed(0)
    m = Recurrent()
    pqt_compile.register(m)
    m.cell = torch.compile(m.cell, backend="pqt")
    m.head = torch.compile(m.head, backend="pqt")
    assert not [w for w in _train(m, m, torch.randn(2, 32)) if "never reached" in w]


class Skipped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    @torch._dynamo.disable
    def forward(self, x):
        return self.fc(x)


def test_a_training_call_that_compiles_nothing_warns_through_pqt_compile():
    """Only pqt_compile.compile holds the model when Dynamo compiles nothing at all (torch.compile
    never calls the backend then: guards.py says why)."""
    torch._dynamo.reset()
    cm = pqt_compile.compile(Skipped())
    with pytest.warns(UserWarning, match="no PQT-compiled graph"):
        cm(torch.randn(2, 8))
    ok = pqt_compile.compile(MLP())
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        ok(torch.randn(2, 32))  # a model that does compile: no warning


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x):
        return self.fc2(self.fc1(x))


class _EmbeddedBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb, self.blk = nn.Embedding(10, 8), _Block()

    def forward(self, idx):
        return self.blk(self.emb(idx))


def test_include_patterns_that_admit_no_weight_warn_through_pqt_compile():
    """A graph ran but no weight was switched on (include matches no name): the model would train
    without noise; the warning names the patterns' target, qualified names. A pattern that admits
    one weight does not warn."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    seq, x = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)), torch.randn(2, 8)
    cm = pqt_compile.compile(seq, PQTConfig(include=[r"mlp\.", "proj"]))
    with pytest.warns(UserWarning, match=r"sampled no weight.*'0\.weight'"):
        cm(x)
    assert torch.equal(cm(x), seq(x))  # what the warning is about: no noise
    torch._dynamo.reset()
    ok = pqt_compile.compile(seq, PQTConfig(include=[r"^2\."]))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        ok(x)
    # Blocks compiled one by one, one excluded on purpose: its model is sampled, no warning.
    torch._dynamo.reset()
    root = nn.Sequential(MLP(), MLP())
    pqt_compile.register(root)
    cfg = PQTConfig(exclude=[r"^0\."])
    for i in range(2):
        root[i] = pqt_compile.compile(root[i], cfg)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        root(torch.randn(2, 32))
    assert not [w for w in caught if str(w.message).startswith("pqt:")]
    # Patterns matched against the registered model's names (a block compiled alone: 'blk.fc1...',
    # not 'fc1...'), and an embedding, which no matmul reads, does not count as admitted.
    for cfg, whole in ((PQTConfig(include=[r"^fc1\."]), False), (PQTConfig(exclude=["fc"]), True)):
        torch._dynamo.reset()
        model = _EmbeddedBlock()
        pqt_compile.register(model)
        if whole:
            model = pqt_compile.compile(model, cfg)
        else:
            model.blk = pqt_compile.compile(model.blk, cfg)
        with pytest.warns(UserWarning, match="sampled no weight"):
            model(torch.randint(0, 10, (2, 3)))


def test_the_nothing_sampled_hooks_go_after_the_first_training_call():
    """A module with forward hooks takes Module.__call__'s slow path at every call: the check's
    hooks stay through eval and no-grad calls and leave after the first training call."""
    torch._dynamo.reset()
    cm = pqt_compile.compile(MLP())
    x = torch.randn(2, 32)
    with torch.no_grad():
        cm(x)
    cm.eval()
    cm(x)
    assert len(cm._forward_pre_hooks) == 1 and len(cm._forward_hooks) == 1
    cm.train()
    cm(x)
    assert len(cm._forward_pre_hooks) == 0 and len(cm._forward_hooks) == 0


def test_a_root_whose_frame_compiles_but_whose_weights_run_eagerly_warns_through_torch_compile():
    """Through torch.compile, nothing-sampled is the extreme case of unseen weights: the backend
    registers the module it compiles, and its weights that no graph received are named."""
    torch._dynamo.reset()

    class Outer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner, self.scale = Skipped(), nn.Parameter(torch.ones(8, 8))

        def forward(self, x):
            return self.inner(x) @ self.scale  # the frame compiles (scale is sampled), inner.fc does not

    torch.manual_seed(0)
    m = Outer()
    named = [w for w in _train(torch.compile(m, backend="pqt"), m, torch.randn(2, 8)) if "never reached" in w]
    assert len(named) == 1 and "inner.fc.weight" in named[0] and "scale" not in named[0]


def test_a_stage_past_dynamos_recompile_limit_warns_instead_of_training_clean():
    """Switching one model's forward between configs (PQT then STE, an annealed noise) adds a
    Dynamo cache entry per config; past the recompile limit Dynamo runs the frame eagerly."""
    torch._dynamo.reset()
    m = MLP()
    x = torch.randn(2, 3, 32)
    with pqt_compile.compat.dynamo_recompile_limit(1):
        pqt_compile.compile(m, PQTConfig(format="fp4_e2m1"))(x).sum().backward()
        with pytest.warns(UserWarning, match="recompile limit was reached"):
            pqt_compile.compile(m, PQTConfig(format="fp4_e2m1", mode="ste"))(x).sum().backward()


@pytest.mark.parametrize("entry", ENTRIES)
def test_a_pattern_that_matches_no_weight_name_warns_once_after_a_step(entry):
    """exclude=["_orig_mod.head"] (a state_dict key of the compiled wrapper, not a weight name) kept
    nothing clean, and include=["body", "_orig_mod.head"] left the head clean, without a word."""
    x = torch.randn(4, 32)
    for cfg, bad in ((PQTConfig(exclude=("_orig_mod.head",)), ["exclude pattern '_orig_mod.head'"]),
                     (PQTConfig(include=("body", "_orig_mod.head"), exclude=(r"\.norm",)), ["include pattern '_orig_mod.head'"]),
                     (PQTConfig(include=("body", "head"), exclude=("fc2",)), [])):
        torch._dynamo.reset()
        torch.manual_seed(0)
        model = WithHead(nn.Linear(32, 8))
        said = [w for w in _train(_compile(entry, model, cfg), model, x, steps=3) if "matches no parameter name" in w]
        assert [s.split(" matches")[0].split("PQTConfig's ")[1] for s in said] == bad, said  # once each
        if bad:
            assert "such as 'body.fc1.weight'" in said[0] and "'_orig_mod.' prefix is not part of them" in said[0]


@pytest.mark.parametrize("how", ["wrapped", "compiled_again"])
def test_a_pqt_compiled_model_compiled_over_by_another_backend_is_named_at_the_step(how):
    """guards.py NOTE [compiled over]: torch.compile(pqt_compile.compile(model)), or an in-place pqt
    compile followed by model.compile() (transformers' Trainer with torch_compile=True), trains with
    Inductor alone: Dynamo traces through the inner compile. Clean, with no word, before."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model, x = MLP(), torch.randn(4, 32)
    if how == "wrapped":
        call = torch.compile(pqt_compile.compile(model))
    else:
        pqt_compile.compile(model, inplace=True)
        model.compile()
        call = model
    said = _train(call, model, x, steps=3)
    assert len(said) == 1 and "an optimizer step trained 2 weight(s) of MLP, given to pqt_compile.compile, but no " \
        "PQT-compiled graph received any of its weights" in said[0], said
    assert pqt_compile.seed_state()["step"] == 0  # what it says: no sampling call, the stream never moved
    # Compiled once with pqt, the same training says nothing.
    torch._dynamo.reset()
    model = MLP()
    assert _train(pqt_compile.compile(model), model, x, steps=3) == []


def test_dcps_initialising_optimizer_step_is_not_training_and_leaves_the_check_armed():
    """torch.distributed.checkpoint's get_state_dict steps a fresh optimizer with zero gradients at
    lr 0 (the README's resume recipe): that step was named as clean training, with the compiled-over
    advice, and dropped the model from the check, so a real compile over it went unnamed."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    torch._dynamo.reset()
    torch.manual_seed(0)
    model, x = MLP(), torch.randn(4, 32)
    outer = torch.compile(pqt_compile.compile(model), backend="eager")  # compiled over: trains clean
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        get_state_dict(model, opt)
    assert not [w for w in caught if str(w.message).startswith("pqt:")]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            outer(x).sum().backward()
            opt.step()
            opt.zero_grad()
    said = [str(w.message) for w in caught if str(w.message).startswith("pqt:")]
    assert len(said) == 1 and "no PQT-compiled graph received any of its weights" in said[0], said


def test_a_tied_head_admitted_alone_is_sampled_and_no_pattern_warning_says_otherwise():
    """The nothing-sampled guard skipped every embedding table, one tied to a head included, and
    told a model whose tied head trains with noise to fix its patterns."""
    torch._dynamo.reset()
    torch.manual_seed(0)

    class TiedLM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb, self.mlp, self.head = nn.Embedding(50, 32), nn.Linear(32, 32), nn.Linear(32, 50, bias=False)
            self.head.weight = self.emb.weight

        def forward(self, x):
            return self.head(torch.relu(self.mlp(self.emb(x))))

    model, x = TiedLM(), torch.randint(0, 50, (8,))
    cfg = PQTConfig(include=(r"^head\.",))
    assert _train(pqt_compile.compile(model, cfg), model, x, steps=1) == []
    assert list(pqt_compile.reference.sampled_axes(model, cfg, (x,))) == ["emb.weight"]


class _AroundLSTM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj, self.rnn, self.head = nn.Linear(8, 8), nn.LSTM(8, 8, batch_first=True), nn.Linear(8, 4)

    def forward(self, x):
        return self.head(self.rnn(self.proj(x))[0])


def test_a_model_that_calls_an_lstm_runs_eagerly_and_the_warnings_name_the_lstm():
    """Dynamo runs a whole frame that calls a torch.nn RNN, GRU or LSTM eagerly (allow_rnn off, its
    default), so the model trained clean, and both warnings named a wrong cause (a recompile limit, a
    compile on top)."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = _AroundLSTM()
    said = _train(pqt_compile.compile(model), model, torch.randn(2, 5, 8))
    # torch 2.13 runs the whole forward eagerly (nothing sampled: two warnings), 2.15 the LSTM alone
    # (its weights never reach a graph: one warning); each names the LSTM, and nothing else.
    assert said, said
    for text in said:
        assert "'rnn' (LSTM)" in text and "allow_rnn" in text, text
        assert "recompile limit" not in text and "applied on top" not in text, text
    assert any("rnn.weight_ih_l0" in t for t in said) or pqt_compile.seed_state()["step"] == 0, said


def test_an_lstms_weights_left_out_of_the_compiled_blocks_are_named_with_the_lstm():
    """The warning's first remedy: the modules around the LSTM compiled on their own. Its weights
    then never reach a graph, and the unseen-weights warning names the LSTM as the cause."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = _AroundLSTM()
    pqt_compile.register(model)
    model.proj, model.head = pqt_compile.compile(model.proj), pqt_compile.compile(model.head)
    said = [w for w in _train(model, model, torch.randn(2, 5, 8)) if "never reached" in w]
    assert len(said) == 1 and "rnn.weight_ih_l0, rnn.weight_hh_l0." in said[0] and "'rnn' (LSTM)" in said[0], said
    assert pqt_compile.guards.keyed_name(model.proj.weight) == "proj.weight"


def test_with_allow_rnn_a_gru_traced_as_matmuls_is_sampled():
    """The warning's other remedy, as it says: Dynamo traces the layer, and where torch writes it as
    matmuls (a GRU on the CPU) pqt samples its weights."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    gru = nn.GRU(8, 8, batch_first=True)
    with torch._dynamo.config.patch(allow_rnn=True):
        report = pqt_compile.explain(gru, torch.randn(2, 3, 8), config=PQTConfig())
    assert {"weight_ih_l0", "weight_hh_l0"} <= {w.name for w in report.sampled}, report
