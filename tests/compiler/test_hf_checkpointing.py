"""HF gradient checkpointing under the pqt backend: the recomputed forward sees the same sample.

transformers' `gradient_checkpointing_enable()` wraps every decoder layer's forward in
`torch.utils.checkpoint.checkpoint` (use_reentrant=False by default since transformers 4.35).
The backward then runs the layer's forward again; if that recompute drew another sample (a
new seed from the stream, or another key), the gradients would be those of a weight the
forward never used: silently wrong, as nothing fails. So a step with checkpointing must give
bit-identical gradients to the same step without it, and move the seed stream no further.
"""

import contextlib
import copy
import warnings

import pytest
import torch

import pqt_compile
from conftest import FP32_REL_TOL, max_rel_err

pytestmark = pytest.mark.private_api  # exercises private torch/Triton APIs: CI reruns it on the newest torch

transformers = pytest.importorskip("transformers")


def tiny_gpt2(width: int = 32):
    cfg = transformers.GPT2Config(vocab_size=64, n_positions=16, n_embd=width, n_layer=2, n_head=2, resid_pdrop=0.0,
                                  embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg)


@pytest.fixture
def deterministic():
    """torch.use_deterministic_algorithms for the test.

    Without it the checkpointed graph's gradient of the tied wte.weight varies in its last bits
    from call to call (~2e-8 relative), with the stock inductor backend too: Inductor's CPU
    scatter-add for the embedding's backward accumulates with atomics across OpenMP threads
    (none of it touches a sample: every other gradient is bit-stable). In deterministic mode
    Inductor falls back to aten's index_put, so bit-identity is a fair thing to ask.
    """
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(previous)


def _saved_numel(fn):
    """Run fn(); return its result and the number of elements saved for backward meanwhile."""
    total = [0]

    def pack(t):
        total[0] += t.numel()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, total[0]


@pytest.mark.parametrize(
    "ck_kwargs,pinned,width",
    # width 64: the attention and MLP weights (64 x 192, 64 x 256) exceed CPP_ONE_KERNEL_MAX_NUMEL, so
    # the forward saves their block values for the backward (NOTE [saved block values]) while the
    # checkpointed layers are recomputed there.
    [(None, True, 32), ({"use_reentrant": True}, False, 32), (None, False, 64)],
    ids=["default-fixed_seed", "reentrant-seed_stream", "default-seed_stream-saved_block_values"],
)
def test_gradient_checkpointing_gives_the_same_gradients(deterministic, ck_kwargs, pinned, width):
    torch._dynamo.reset()
    torch.manual_seed(0)
    base = tiny_gpt2(width).train()
    with_ck, without, eager = (copy.deepcopy(base) for _ in range(3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # transformers 5: an alias of activation_checkpointing_enable
        with_ck.gradient_checkpointing_enable(gradient_checkpointing_kwargs=ck_kwargs)
    idx = torch.randint(0, 64, (2, 16))
    grads, saved, streams = [], [], []
    for model in (with_ck, without):
        # inplace=True: the model keeps its HF class (what Trainer and gradient_checkpointing_enable
        # expect) and its parameter names are registered; torch.compile(model, backend="pqt")
        # gives the same gradients here, wrapped in an OptimizedModule.
        cm = pqt_compile.compile(model, inplace=True)
        pqt_compile.manual_seed(5)
        with pqt_compile.fixed_seed(5) if pinned else contextlib.nullcontext():  # pinned, or the stream's seed
            out, n = _saved_numel(lambda: cm(idx, labels=idx, use_cache=False))
        out.loss.backward()  # the recompute (with checkpointing) runs in here
        streams.append(pqt_compile.seed_state())
        saved.append(n)
        grads.append({name: p.grad for name, p in model.named_parameters()})
    eager(idx, labels=idx, use_cache=False).loss.backward()
    clean = {name: p.grad for name, p in eager.named_parameters()}
    assert grads[0].keys() == grads[1].keys() == clean.keys()
    assert saved[0] < saved[1]  # checkpointing is in effect: the forward keeps less for the backward
    # The recompute ran inside the backward: it read its forward's seed and moved the stream no
    # further than the step without checkpointing (one backward: micro-batch 1).
    assert streams[0] == streams[1] == {"base": 5, "step": 0, "micro_batch": 1}
    differ = [n for n in clean if not torch.equal(grads[0][n], grads[1][n])]
    assert not differ, {n: max_rel_err(grads[0][n], grads[1][n]) for n in differ}
    # and PQT did sample: these are not the gradients of the clean weights
    assert max(max_rel_err(grads[1][n], clean[n]) for n in clean) > 100 * FP32_REL_TOL

