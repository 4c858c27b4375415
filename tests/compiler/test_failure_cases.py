"""Failure cases of the compiled path: each has a clear outcome, none a silently wrong result."""

import copy
import re
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

import pqt_compile
from conftest import FP32_REL_TOL, assert_matches_reference, max_rel_err
from models import MLP
from pqt_compile import PQTConfig, key_for_name, reference, sample

pytestmark = pytest.mark.private_api  # exercises private torch/Triton APIs: CI reruns it on the newest torch


def test_nan_in_a_weight_stays_in_its_block():
    torch._dynamo.reset()
    m = nn.Linear(64, 4, bias=False)
    cm = pqt_compile.compile(m)
    cm(torch.eye(64))  # compiled while finite
    with torch.no_grad():
        m.weight[1, 40] = float("nan")  # appears mid-training
    with pqt_compile.fixed_seed(1):
        y = cm(torch.eye(64)).t()  # = the sample, row by row (a NaN fills its whole row: 0 * NaN)
    assert y[1].isnan().all() and not y[[0, 2, 3]].isnan().any()  # the NaN stays in its weight row
    want = sample(m.weight.detach(), seed=1, key=key_for_name("weight"), axis=1)
    assert torch.equal(y[[0, 2, 3]], want[[0, 2, 3]])  # the other rows are sampled as usual
    # and the sample itself keeps the NaN block as it is (no noise), the other block noised:
    assert torch.equal(want[1, 32:].nan_to_num(), m.weight[1, 32:].detach().nan_to_num())
    assert not torch.equal(want[1, :32], m.weight[1, :32].detach())


def test_fullgraph_and_non_contiguous_parameter():
    torch._dynamo.reset()

    class T(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(48, 40).t())  # [40, 48], column-major storage

        def forward(self, x):
            return torch.nn.functional.linear(x, self.w)

    m, x = T(), torch.randn(3, 48)
    cm = pqt_compile.compile(m, fullgraph=True)
    assert_matches_reference(cm, m, x, seed=2)


def test_requires_grad_change_recompiles_and_stays_correct():
    torch._dynamo.reset()
    torch.manual_seed(0)
    m, x = MLP(), torch.randn(4, 32)
    cm = pqt_compile.compile(m)
    cm(x).sum().backward()
    m.fc1.weight.requires_grad_(False)  # frozen from now on: still a Parameter, still sampled
    with pqt_compile.fixed_seed(3):
        y = cm(x)
    assert max_rel_err(y, reference.run(m, x, seed=3)) < FP32_REL_TOL
    y.sum().backward()
    assert m.fc2.weight.grad is not None


def test_a_config_change_between_two_compiles_is_honoured():
    torch._dynamo.reset()
    torch.manual_seed(0)
    m, x = MLP(), torch.randn(4, 32)
    a, b = PQTConfig(format="fp4_e2m1"), PQTConfig(format="int8")
    with pqt_compile.fixed_seed(4):
        ya = pqt_compile.compile(m, a)(x)
        yb = pqt_compile.compile(m, b)(x)
    assert max_rel_err(ya, reference.run(m, x, seed=4, config=a)) < FP32_REL_TOL
    assert max_rel_err(yb, reference.run(m, x, seed=4, config=b)) < FP32_REL_TOL


def test_activation_checkpointing_sees_the_same_sample():
    torch._dynamo.reset()

    class Ck(nn.Module):
        def __init__(self, use_checkpoint: bool) -> None:
            super().__init__()
            self.a, self.b, self.use_checkpoint = MLP(), MLP(), use_checkpoint

        def forward(self, x):
            h = checkpoint(self.a, x, use_reentrant=False) if self.use_checkpoint else self.a(x)
            return self.b(h)

    torch.manual_seed(0)
    with_ck = Ck(True)
    without = copy.deepcopy(with_ck)
    without.use_checkpoint = False
    x = torch.randn(4, 32)
    grads = []
    for model in (with_ck, without):
        with pqt_compile.fixed_seed(5):
            pqt_compile.compile(model)(x).square().sum().backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert all(torch.allclose(grads[0][n], grads[1][n], rtol=0, atol=0) for n in grads[0])


class _CheckpointedBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Linear(32, 32, bias=False), nn.Tanh(), nn.Linear(32, 32, bias=False))

    def forward(self, x):
        return checkpoint(self.block, x, use_reentrant=False)


def test_a_recompute_of_a_block_compiled_alone_draws_its_forwards_seed():
    """steps.py NOTE [recompute seed]: the checkpoint calls the block's PQT graph again inside the
    backward. It drew the seed of that moment: after a forward under fixed_seed (backward outside
    it), and in a second backward through a retained graph (the first had counted its micro-batch),
    the gradients came from another sample than the forward's (9-12% off), without a word."""
    torch.manual_seed(0)
    m = _CheckpointedBlock()
    m.block = pqt_compile.compile(m.block)
    pqt_compile.register(m)
    x = torch.randn(4, 32, requires_grad=True)

    def reference_grads(seed, *losses):
        x_ref = x.detach().requires_grad_()
        y_ref = reference.run(m, x_ref, seed=seed)
        return [torch.autograd.grad(loss(y_ref), x_ref, retain_graph=True)[0] for loss in losses]

    with pqt_compile.fixed_seed(123):
        y = m(x)
    (g,) = torch.autograd.grad(y.square().sum(), x)  # the recompute runs outside the fixed_seed block
    assert max_rel_err(g, reference_grads(123, lambda t: t.square().sum())[0]) < FP32_REL_TOL
    torch._dynamo.reset()
    with torch._functorch.config.patch(donated_buffer=False):  # what retain_graph needs of AOTAutograd
        seed = pqt_compile.current_seed()
        y = m(x)
        g1 = torch.autograd.grad(y.square().sum(), x, retain_graph=True)[0]
        assert pqt_compile.current_seed() != seed  # the first backward moved the stream on
        g2 = torch.autograd.grad(y.pow(3).sum(), x)[0]
    want = reference_grads(seed, lambda t: t.square().sum(), lambda t: t.pow(3).sum())
    assert max_rel_err(g1, want[0]) < FP32_REL_TOL and max_rel_err(g2, want[1]) < FP32_REL_TOL


def test_a_block_compiled_alone_inside_a_reentrant_checkpoint_is_refused():
    """NOTE [reentrant checkpoint] (wrapper.py): per-block compilation under an eager
    checkpoint(use_reentrant=True) would train on clean weights in the forward (run under no_grad)
    and sampled ones in the recompute; refused with the fix. use_reentrant=False, the fix, samples
    the forward and its recompute alike: the same gradients as no checkpoint at all."""
    torch._dynamo.reset()

    class Outer(nn.Module):
        def __init__(self, reentrant) -> None:
            super().__init__()
            self.block, self.head, self.reentrant = MLP(), nn.Linear(32, 4), reentrant

        def forward(self, x):
            if self.reentrant is None:
                return self.head(self.block(x))
            return self.head(checkpoint(self.block, x, use_reentrant=self.reentrant))

    torch.manual_seed(0)
    x = torch.randn(4, 32, requires_grad=True)
    grads = {}
    for reentrant in (True, False, None):
        torch.manual_seed(0)
        model = Outer(reentrant)
        eager = copy.deepcopy(model)
        eager.reentrant = None
        pqt_compile.register(model)
        model.block = pqt_compile.compile(model.block)
        with pqt_compile.fixed_seed(5):
            if reentrant:
                with pytest.raises(RuntimeError, match="use_reentrant=False"):
                    model(x)
                with torch.no_grad(), pytest.warns(UserWarning, match="ran clean inside"):
                    # an evaluation in train mode: no input (an activation) requires grad, nothing is
                    # recomputed: clean, allowed, and said (it could be a frozen stem in training)
                    assert max_rel_err(model(x.detach()), eager(x)) < FP32_REL_TOL
                continue
            model(x).square().sum().backward()
        grads[reentrant] = {n: p.grad for n, p in model.named_parameters()}
    assert grads[False].keys() == grads[None].keys()
    assert all(torch.equal(grads[False][n], grads[None][n]) for n in grads[None])


class _Bmm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 32, 1) * 0.3)

    def forward(self, x):
        return torch.bmm(x, self.w)


class _MatVec(nn.Module):
    """W @ v with a 1-D v (aten.mv, which Inductor decomposes into a multiply and a sum), and a
    batch-summed product (aten.addbmm): both trained clean, without a word, before."""

    def __init__(self) -> None:
        super().__init__()
        self.w, self.experts = nn.Parameter(torch.randn(48, 64) * 0.1), nn.Parameter(torch.randn(2, 24, 40) * 0.1)

    def forward(self, v):
        return torch.addbmm(torch.zeros(1, 40), (self.w @ v).view(2, 1, 24), self.experts)


class _AddMatVec(nn.Module):
    """b + W @ v with scaling (aten.addmv, which Inductor decomposes like mv)."""

    def __init__(self) -> None:
        super().__init__()
        self.w, self.b = nn.Parameter(torch.randn(48, 64) * 0.1), nn.Parameter(torch.randn(48))

    def forward(self, v):
        return torch.addmv(self.b, self.w, v, beta=0.5, alpha=2.0)


@pytest.mark.parametrize("make,x_shape", [
    (lambda: nn.Linear(32, 1), (1, 32)),             # addmm, one row times one column
    (lambda: nn.Linear(16, 16), (1, 16)),            # addmm, one row, tiny
    (lambda: nn.Linear(1, 16, bias=False), (5, 1)),  # mm, K = 1
    (_Bmm, (4, 1, 32)),                              # bmm, one row times one column
    (_MatVec, (64,)),                                # mv, addbmm
    (_AddMatVec, (64,)),                             # addmv
], ids=["addmm_1x1", "addmm_one_row", "mm_k1", "bmm_1x1", "mv_addbmm", "addmv"])
def test_small_matmuls_are_sampled_as_the_reference_samples_them(make, x_shape, monkeypatch, tmp_path):
    """backend.py NOTE [matmuls stay matmuls]: Inductor decomposes these products into multiplies
    and sums while tracing; the pass saw no matmul and the weight trained clean (no warning).
    Compiled cold with CI set, as CI services set it: Inductor then refuses to fall back to an
    ATen kernel it has a decomposition for (aten.mv: passes/matvec_as_matmul.py)."""
    monkeypatch.setenv("CI", "1")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))  # cold: the lowering runs
    torch._dynamo.reset()
    torch.manual_seed(0)
    m, x = make(), torch.randn(x_shape)
    with pqt_compile.fixed_seed(21):
        out = pqt_compile.compile(m)(x)
    out.sum().backward()
    want = reference.run(m, x, seed=21)
    assert max_rel_err(out, want) < FP32_REL_TOL
    assert max_rel_err(out, m(x)) > 100 * FP32_REL_TOL  # sampled, not clean


class _SplitQKV(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(16, 48, bias=False)

    def forward(self, x):
        q, k, v = self.qkv.weight.split(16)
        return torch.nn.functional.linear(x, q) * torch.nn.functional.linear(x, k) + torch.nn.functional.linear(x, v)


class _CrossAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)

    def forward(self, x):
        memory = x.flip(1)
        return self.attn(x, memory, memory, need_weights=False)[0]


class _LearnedQuery(nn.Module):
    """A learned query (BLIP-2, Perceiver): a Parameter through a norm and its own projection, then
    attending over the data: an activation there, not a weight the pass skipped."""

    def __init__(self) -> None:
        super().__init__()
        self.query, self.ln, self.proj = nn.Parameter(torch.randn(1, 4, 16)), nn.LayerNorm(16), nn.Linear(16, 16)

    def forward(self, x):
        q = self.proj(self.ln(self.query.expand(x.shape[0], -1, -1)))
        return torch.softmax(q @ x.transpose(1, 2), -1) @ x


class _EmbedThenLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb, self.fc = nn.Embedding(10, 16), nn.Linear(16, 4)

    def forward(self, idx):
        return self.fc(self.emb(idx))


@pytest.mark.parametrize("make,weight,op", [
    (_SplitQKV, "qkv.weight", "aten::split"),
    (_CrossAttention, "attn.in_proj_weight", "aten::split_with_sizes"),
], ids=["fused_qkv_split", "cross_attention"])
def test_a_weight_reaching_a_matmul_through_an_op_not_followed_warns(make, weight, op):
    """weight_edges.py NOTE [ops not followed]: such a weight trains without noise (compiled and
    in the reference alike); before, nothing said so. An embedding, whose lookup feeds matmuls
    as activations, and a learned query are not such paths: no warning."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    m, x = make(), torch.randn(2, 5, 16)
    with pytest.warns(UserWarning, match=rf"weight '{re.escape(weight)}' reaches a matmul through {op}"):
        with pqt_compile.fixed_seed(3):
            out = pqt_compile.compile(m)(x)
    assert max_rel_err(out, reference.run(m, x, seed=3)) < FP32_REL_TOL
    for make_other, inputs in ((_EmbedThenLinear, torch.randint(0, 10, (2, 5))), (_LearnedQuery, x)):
        torch._dynamo.reset()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pqt_compile.compile(make_other())(inputs).sum().backward()
        assert not [w for w in caught if str(w.message).startswith("pqt:")], make_other.__name__


class _MaskedAndDirect(nn.Module):
    """One weight read by a matmul directly and, pruned by a mask buffer, by another."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(64, 64) * 0.1)
        self.register_buffer("mask", (torch.rand(64, 64) > 0.5).float())

    def forward(self, x):
        return torch.cat([F.linear(x, self.w), F.linear(x, self.w * self.mask)])


def test_a_weight_also_read_clean_through_an_op_not_followed_warns():
    """weight_edges.py NOTE [partly clean]: the direct product was sampled, the masked one read the
    clean weight, and nothing said so (the op was looked for only when no matmul read the weight)."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    m, x = _MaskedAndDirect(), torch.randn(8, 64)
    with pytest.warns(UserWarning, match=r"weight 'w' is sampled where a matmul reads it directly, but it also "
                                         r"reaches a matmul through aten::mul"):
        with pqt_compile.fixed_seed(7):
            out = pqt_compile.compile(m)(x)
    assert max_rel_err(out, reference.run(m, x, seed=7)) < FP32_REL_TOL  # the reference reads it the same way
    w_hat = sample(m.w.detach(), seed=7, key=key_for_name("w"), axis=1)
    direct, masked = out.detach().split(8)
    assert max_rel_err(direct, F.linear(x, w_hat)) < FP32_REL_TOL
    assert max_rel_err(masked, F.linear(x, m.w * m.mask)) < FP32_REL_TOL  # clean, as warned
    (edge,) = reference.trace_weight_edges(m, x)[0]
    assert edge.clean_via == "aten::mul.Tensor" and "also reaches a matmul through" in edge.notes[-1]


def test_a_spectral_norm_weight_trains_clean_with_a_warning_and_its_buffers_move_as_in_eager():
    """spectral_norm's power iteration multiplies the weight by its buffers (mv); its Linear reads
    W / sigma. The pass sampled the power iteration only: the Linear ran clean, the buffer u moved
    from the noisy weight (2.5% off eager), explain listed the weight as sampled and nothing warned.
    Now it is not sampled, as a weight_norm weight is not, and the compile warns."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    m, x = nn.utils.parametrizations.spectral_norm(nn.Linear(64, 64, bias=False)), torch.randn(8, 64)
    eager = copy.deepcopy(m)
    with pytest.warns(UserWarning, match=r"weight 'parametrizations.weight.original' reaches a matmul through "
                                         r"aten::div"):
        with pqt_compile.fixed_seed(7):
            out = pqt_compile.compile(m)(x)
    want = eager(x)
    assert max_rel_err(out, want) < FP32_REL_TOL
    assert max_rel_err(m.parametrizations.weight[0]._u, eager.parametrizations.weight[0]._u) < FP32_REL_TOL
    edges, skipped = reference.trace_weight_edges(m, x)
    assert not edges and [(s.name, s.trains_clean) for s in skipped] == [("parametrizations.weight.original", True)]


class _ReadButNotSamplable(nn.Module):
    """Two matrices a matmul reads that pqt cannot sample: one contracted over two of its axes, one
    in float64."""

    def __init__(self) -> None:
        super().__init__()
        self.W_o = nn.Parameter(torch.randn(4, 8, 16) * 0.1)  # per head: [h, d, m]
        self.fc64 = nn.Linear(16, 16, dtype=torch.float64)
        self.bil = nn.Bilinear(16, 16, 4, bias=False)  # its weight [4, 16, 16] contracted along two axes

    def forward(self, a):  # a: [b, h, d]
        y = self.fc64(torch.einsum("bhd,hdm->bm", a, self.W_o).double()).float()
        return self.bil(y, y)


def test_a_matrix_a_matmul_reads_but_pqt_cannot_sample_warns():
    """Both trained clean without a word (the reasons showed only in explain); an excluded one, a
    bias and a weight no matmul reads stay quiet."""
    torch.manual_seed(0)
    m, a = _ReadButNotSamplable(), torch.randn(2, 4, 8)
    _, skipped = reference.trace_weight_edges(m, a)
    assert {s.name: s.trains_clean for s in skipped} == {"W_o": True, "fc64.weight": True, "fc64.bias": False,
                                                         "bil.weight": True}
    _, skipped = reference.trace_weight_edges(m, a, config=PQTConfig(exclude=("W_o", "fc64", "bil")))
    assert not any(s.trains_clean for s in skipped)
    torch._dynamo.reset()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = pqt_compile.compile(m)(a)
    said = sorted(str(w.message) for w in caught if str(w.message).startswith("pqt:"))
    assert len(said) == 3, said
    assert re.match(r"pqt: weight 'W_o' feeds a matmul that contracts several of its axes at once .* trains without "
                    r"noise. Store it with those axes as one", said[0])
    assert re.match(r"pqt: weight 'bil.weight' feeds a matmul that contracts several of its axes", said[1])
    assert re.match(r"pqt: weight 'fc64.weight' feeds a matmul but has an unsupported dtype torch.float64 .* Train in "
                    r"one of those", said[2])
    with torch.no_grad():
        # What the warnings say: clean (a sample would move it by ~1e-2; Inductor may order a reduction
        # differently from eager: the compiled-vs-eager fp32 bound, not bit equality).
        assert max_rel_err(out, m(a)) < FP32_REL_TOL
    # A float64 model: the dtype is named, not the include/exclude patterns (the guard said "Fix the patterns").
    torch._dynamo.reset()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pqt_compile.compile(nn.Sequential(nn.Linear(8, 8)).double())(torch.randn(2, 8, dtype=torch.float64)).sum().backward()
    said = [str(w.message) for w in caught if str(w.message).startswith("pqt:")]
    assert len(said) == 1 and "'0.weight' feeds a matmul but has an unsupported dtype torch.float64" in said[0], said


class _ExpertsIterated(nn.Module):
    def __init__(self, how: str) -> None:
        super().__init__()
        self.how, self.W = how, nn.Parameter(torch.randn(3, 16, 32) * 0.1)

    def forward(self, x):
        ws = self.W if self.how == "iterate" else self.W.unbind(0)
        return sum(torch.nn.functional.linear(x, w) for w in ws)


@pytest.mark.parametrize("how", ["iterate", "unbind"])
def test_experts_read_one_by_one_are_sampled_alike_compiled_and_in_the_reference(how):
    """`for w in W` (Dynamo: select per expert; make_fx: unbind) and W.unbind(0): each item is an
    expert of one sampled weight, blocks along its K. Before, the reference (and pqt-check) did not
    see through unbind, and W.unbind(0) trained clean in both."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    m, x = _ExpertsIterated(how), torch.randn(5, 32)
    with pqt_compile.fixed_seed(21):
        out = pqt_compile.compile(m)(x)
    with torch.no_grad():
        ws = sample(m.W, seed=21, key=key_for_name("W"), axis=2)
        oracle = sum(torch.nn.functional.linear(x, w) for w in ws)
    assert max_rel_err(out, oracle) < FP32_REL_TOL
    assert max_rel_err(reference.run(m, x, seed=21), oracle) < FP32_REL_TOL


class RaggedK(nn.Module):
    """fc1 reduces over K (the case under test), fc2 over 24: both shorter than or not a
    multiple of the block. Returns fc1's output too: for an identity batch it is W1_hat^T."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(k, 24, bias=False)
        self.fc2 = nn.Linear(24, k)

    def forward(self, x):
        h = self.fc1(x)
        return h, self.fc2(torch.nn.functional.gelu(h))


@pytest.mark.parametrize(
    "k,how",
    [(20, "default"), (70, "options_block_32"), (70, "config_block_64")],
    ids=["K20_shorter_than_block", "K70_ragged_last_block", "K70_shorter_than_block_64"],
)
def test_reduction_axis_shorter_than_or_not_a_multiple_of_the_block(k, how):
    # The Inductor lowering clamps the reduction index of a partial last block (NOTE [partial
    # block] in lowering/sample.py); the eager op pads. Both must give the same bits, and the op
    # itself is held to an independent formula on partial blocks in test_formula.py.
    torch._dynamo.reset()
    torch.manual_seed(0)
    m = RaggedK(k)
    if how == "default":  # PQTConfig's default block_size is 32
        cfg, cm = PQTConfig(), pqt_compile.compile(m)
    elif how == "options_block_32":  # the same block, given explicitly through torch.compile's options
        cfg, cm = PQTConfig(block_size=32), torch.compile(m, backend="pqt", options={"block_size": 32})
    else:
        cfg = PQTConfig(block_size=64, format="fp4_e2m1")
        cm = pqt_compile.compile(m, cfg)
    x = torch.cat([torch.eye(k), torch.randn(5, k)])  # rows :k of fc1's output are W1_hat^T, exactly
    with pqt_compile.fixed_seed(7):
        h, y = cm(x)
    (h.sum() + y.square().sum()).backward()
    grads = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad()
    want = sample(m.fc1.weight.detach(), seed=7, key=key_for_name("fc1.weight"), axis=1, config=cfg)
    assert torch.equal(h[:k].t(), want)
    # The compiled sample used this block size (given three ways above), not another one.
    other = sample(m.fc1.weight.detach(), seed=7, key=key_for_name("fc1.weight"), axis=1, config=cfg.replace(block_size=2))
    assert not torch.equal(h[:k].t(), other)
    tail = (k // cfg.block_size) * cfg.block_size  # where the partial (or only) block starts
    assert not torch.equal(want[:, tail:], m.fc1.weight.detach()[:, tail:])  # which is sampled too
    rh, ry = reference.run(m, x, seed=7, config=cfg)
    (rh.sum() + ry.square().sum()).backward()
    assert max_rel_err(h, rh) < FP32_REL_TOL and max_rel_err(y, ry) < FP32_REL_TOL
    for n, p in m.named_parameters():
        assert max_rel_err(grads[n], p.grad) < FP32_REL_TOL, n
    assert max_rel_err(y, m(x)[1]) > 100 * FP32_REL_TOL  # fc2 (K = 24) was sampled too


def _init_mlp(model: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    for mod in model.modules():
        if hasattr(mod, "reset_parameters"):
            mod.reset_parameters()
    return model


def _train_two_steps(cm, model, x):
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for step in range(2):
        with pqt_compile.fixed_seed(10 + step):
            cm(x).square().mean().backward()
        opt.step()
        opt.zero_grad()


def test_meta_device_parameters_materialised_after_compile():
    torch._dynamo.reset()
    with torch.device("meta"):
        meta = MLP()
    cm = pqt_compile.compile(meta)  # compiled while its parameters hold no data
    meta.to_empty(device="cpu")  # new Parameter objects (meta -> cpu cannot swap storage in place)
    _init_mlp(meta)
    plain = _init_mlp(MLP())
    assert all(torch.equal(a, b) for a, b in zip(meta.parameters(), plain.parameters()))
    x = torch.randn(4, 32)
    _train_two_steps(cm, meta, x)
    _train_two_steps(pqt_compile.compile(plain), plain, x)
    # The same computation on the same values: bit-identical, and not the initial weights.
    for (n, a), b in zip(meta.named_parameters(), plain.parameters()):
        assert torch.equal(a, b), n
    assert not torch.equal(meta.fc1.weight, _init_mlp(MLP()).fc1.weight)
    out = assert_matches_reference(cm, meta, x, seed=12)
    assert max_rel_err(out, meta(x)) > 100 * FP32_REL_TOL


def test_meta_device_blocks_compiled_one_by_one_keep_the_root_names():
    # register(root) keys each weight by its root name; compiling the blocks one by one on the
    # meta device, then materialising, must keep those keys (else the blocks share keys: the
    # same noise pattern in every block, and reference.run(root) disagrees).
    torch._dynamo.reset()
    with torch.device("meta"):
        root = nn.Sequential(MLP(), MLP())
    pqt_compile.register(root)
    for block in root:
        pqt_compile.compile(block, inplace=True)
    root.to_empty(device="cpu")
    _init_mlp(root)
    x = torch.randn(4, 32)
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pqt_compile.fixed_seed(5):
            y = root(x)
    assert max_rel_err(y, reference.run(root, x, seed=5)) < FP32_REL_TOL  # (was ~0.1 before the fix)
    # and no "two different weights were compiled under the name ..." warning
    assert not [str(w.message) for w in caught if str(w.message).startswith("pqt")]


def test_weight_dtype_change_between_steps_recompiles_and_stays_correct():
    torch._dynamo.reset()
    torch.manual_seed(0)
    m = RaggedK(40)
    from pqt_compile.compiler.backend import pqt_backend

    compiles = [0]

    def counting(gm, example_inputs):
        compiles[0] += 1
        return pqt_backend(gm, example_inputs)

    pqt_compile.register(m)
    cm = torch.compile(m, backend=counting)
    x = torch.cat([torch.eye(40), torch.randn(6, 40)])  # rows :40 of fc1's output are W1_hat^T
    for step, dtype in enumerate([torch.float32, torch.bfloat16, torch.float32]):
        m.to(dtype)  # the same Parameter objects, new data in the new dtype
        xs, seed = x.to(dtype), 30 + step
        with pqt_compile.fixed_seed(seed):
            h, y = cm(xs)
        (h.float().sum() + y.float().square().sum()).backward()
        grads = {n: p.grad.clone() for n, p in m.named_parameters()}
        m.zero_grad(set_to_none=True)
        assert h.dtype == y.dtype == dtype and all(g.dtype == dtype for g in grads.values())
        # The sample is taken in the weight's dtype: bit-exact with the reference's sample.
        want = reference.sampled_weights(m, seed=seed, example_args=(xs,))
        assert want["fc1.weight"].dtype == dtype and torch.equal(h[:40].t(), want["fc1.weight"])
        rh, ry = reference.run(m, xs, seed=seed)
        (rh.float().sum() + ry.float().square().sum()).backward()
        # bf16: with the same sampled weights, compiled and eager may differ only by where Inductor
        # rounds intermediates to bf16 (8 significant bits): a rounding flip is one bf16 ulp,
        # <= 2^-8 of the largest magnitude, and a flip in h carries through fc2 into y; 2^-7
        # leaves room for two and is still 6x below the PQT noise (~5% of the output here).
        # (Today they agree exactly; a wrong sample is caught bit-exactly just above anyway.)
        tol = FP32_REL_TOL if dtype == torch.float32 else 2.0**-7
        assert max_rel_err(y, ry) < tol and max_rel_err(h, rh) < tol
        for n, p in m.named_parameters():
            assert max_rel_err(grads[n], p.grad) < tol, n
        m.zero_grad(set_to_none=True)
        assert max_rel_err(y, m(xs)[1]) > 4 * tol  # sampled
    assert compiles[0] == 2  # fp32, then bf16; back to fp32 reuses the first graph


def test_train_and_eval_back_and_forth(monkeypatch):
    # test_backend.py checks one eval and one no_grad call; this toggles repeatedly, with grad on
    # and off in both modes, and checks every kind of call after each toggle.
    torch._dynamo.reset()
    import torch._inductor.compile_fx as compile_fx

    compiles = [0]
    real = compile_fx.compile_fx

    def counting(*args, **kwargs):
        compiles[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(compile_fx, "compile_fx", counting)
    torch.manual_seed(0)
    m, x = MLP(), torch.randn(4, 32)
    clean = m(x)
    clean.square().sum().backward()
    clean_grads = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad(set_to_none=True)
    cm = pqt_compile.compile(m)

    def training_calls(i):
        m.train()
        streamed = cm(x)  # the seed stream's current micro-batch
        streamed.square().sum().backward()  # ends the micro-batch: the next call draws afresh
        m.zero_grad(set_to_none=True)
        with pqt_compile.fixed_seed(40 + i):
            pinned = cm(x)
        return streamed.detach(), pinned.detach()

    pqt_compile.manual_seed(9)
    straight = [training_calls(i) for i in range(3)]  # never evaluates
    pqt_compile.manual_seed(9)
    after_first_cycle = None
    for i in range(3):
        streamed, pinned = training_calls(i)
        assert torch.equal(streamed, straight[i][0]) and torch.equal(pinned, straight[i][1]), i
        assert max_rel_err(pinned, reference.run(m, x, seed=40 + i)) < FP32_REL_TOL, i
        m.eval()
        y = cm(x)  # eval with grad enabled: clean weights, and a usable backward
        assert max_rel_err(y, clean) < FP32_REL_TOL, i
        y.square().sum().backward()
        for n, p in m.named_parameters():
            assert max_rel_err(p.grad, clean_grads[n]) < FP32_REL_TOL, (i, n)
        m.zero_grad(set_to_none=True)
        with torch.no_grad():
            assert max_rel_err(cm(x), clean) < FP32_REL_TOL, i
        m.train()
        with torch.no_grad():
            assert max_rel_err(cm(x), clean) < FP32_REL_TOL, i
        if after_first_cycle is None:
            after_first_cycle = compiles[0]
    assert compiles[0] == after_first_cycle  # toggling again compiles nothing new
    assert not torch.equal(straight[0][0], straight[1][0])  # the stream did move: fresh noise per micro-batch
    assert max_rel_err(straight[0][0], clean) > 100 * FP32_REL_TOL
