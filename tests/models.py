"""Tiny models shared by the tests (no downloads)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class MLP(nn.Module):
    def __init__(self, d: int = 32, h: int = 64) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d, h)
        self.fc2 = nn.Linear(h, d, bias=False)
        self.norm = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(self.norm(x))))


class TinyGPT(nn.Module):
    """nanoGPT-style: tied embedding, one attention block, an MLP stored as [K, N] (x @ W)."""

    def __init__(self, vocab: int = 64, d: int = 32, heads: int = 2, seq: int = 16) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(seq, d)
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.w_in = nn.Parameter(torch.randn(d, 4 * d) * 0.05)  # [K, N], used as x @ W
        self.w_out = nn.Parameter(torch.randn(4 * d, d) * 0.05)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.lm_head.weight = self.wte.weight  # tied
        self.heads = heads
        self.register_buffer("scale", torch.tensor(1.0))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        b, t = idx.shape
        x = self.wte(idx) + self.wpe(torch.arange(t, device=idx.device))
        q, k, v = self.qkv(self.ln1(x)).split(x.shape[-1], dim=-1)
        q, k, v = (z.view(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, -1))
        x = x + F.gelu(self.ln2(x) @ self.w_in) @ self.w_out * self.scale
        return self.lm_head(x)


class WithGraphBreak(nn.Module):
    """Two linears with a graph break between them: Dynamo compiles two graphs."""

    def __init__(self, d: int = 16) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        torch._dynamo.graph_break()
        return self.b(torch.relu(h))


def _perturb_norms_and_zero_blocks(model: nn.Module, zero_blocks: list[tuple[str, tuple]]) -> None:
    """HF initialises norm weights to 1 (a wrong mapping of one norm to another would not
    show): perturb them. And zero some 32-element blocks of matmul weights, so that writers
    meet all-zero blocks (pack's exponent -128)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
        params = dict(model.named_parameters())
        for name, index in zero_blocks:
            params[name][index] = 0.0


def tiny_gpt2(seed: int = 0, n_positions: int = 64) -> nn.Module:
    """HF GPT-2, byte vocabulary, 2 layers, d 64 (Conv1D weights [K, N], tied head), eval mode."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=256, n_positions=n_positions, n_embd=64, n_layer=2, n_head=2,
                                       resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0))
    # c_fc is [K=64, N=256]: a block runs down a column.
    _perturb_norms_and_zero_blocks(model, [("transformer.h.0.mlp.c_fc.weight", (slice(0, 32), 5))])
    return model.eval()


def tiny_llama(seed: int = 0, *, tie: bool = True, intermediate: int = 192, bias: bool = False,
               dtype: torch.dtype = torch.float32) -> nn.Module:
    """HF Llama, byte vocabulary, 2 layers, d 64, 4 heads over 2 KV heads (GQA), eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=intermediate,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=64, bos_token_id=0, eos_token_id=0, pad_token_id=0,
                                         tie_word_embeddings=tie, attention_bias=bias, mlp_bias=bias))
    if bias:  # HF initialises biases to 0
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("bias"):
                    p.normal_(0, 0.05)
    _perturb_norms_and_zero_blocks(model, [("model.layers.0.self_attn.q_proj.weight", (1, slice(32, 64))),
                                           ("model.layers.1.mlp.down_proj.weight", (0, slice(None)))])
    return model.to(dtype).eval()


def small_bpe_tokenizer(vocab_size: int = 300):
    """A byte-level BPE tokenizer of GPT-2's kind, trained here on a little text (no download)."""
    from tokenizers import Tokenizer, decoders, models as tok_models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(tok_models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<|endoftext|>"], show_progress=False)
    tok.train_from_iterator(["def f(x):\n    return x + 1\n" * 50, "the quick brown fox jumps over the lazy dog " * 50],
                            trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>")


class Block(nn.Module):
    """x + tanh(fc(x)): a residual block of BlockLoop (a class of its own: Dynamo compiles the
    frames of user modules, never those of torch.nn built-ins such as nn.Sequential)."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.fc = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.tanh(self.fc(x))


class BlockLoop(nn.Module):
    """A loop over a ModuleList of blocks with a graph break after block 1 (`broken`): Dynamo
    skips the whole forward (a break inside a loop) and compiles each block's frame, one graph
    shared by the blocks. With broken=False the same model compiles into one graph."""

    def __init__(self, d: int = 16, n: int = 4, broken: bool = True) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(d) for _ in range(n))
        self.broken = broken

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.blocks):
            x = block(x)
            if self.broken and i == 1:
                torch._dynamo.graph_break()
        return x


def _passes_args(fn):
    """A decorator taking *args, as transformers 5.x wraps its models' forwards: Dynamo's frame
    is the wrapper's, where the module is `args[0]`, not `self`."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*args, **kwargs)

    return wrapper


class Decorated(MLP):
    """MLP whose forward is wrapped by a *args decorator."""

    @_passes_args
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x)


class Attention(nn.Module):
    """Four bias-free nn.Linear(d, d) named as HF Llama's attention projections."""

    def __init__(self, d: int = 32) -> None:
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(d, d, bias=False) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.o_proj(self.q_proj(x) * torch.sigmoid(self.k_proj(x)) + self.v_proj(x))


def grouped_attention(v_scale: float = 16.0, seed: int = 0) -> nn.Module:
    """Own tensor scales 2^k_t that differ within each group: v_proj `v_scale` x the others.

    With power-of-two tensor scales, a group's scale changes a member's values only in blocks that
    it pushes below E4M3's normal range (s_b < 2^-6, amax_b < 2^-6 * 6 s_t): a v_proj 2^16 x the
    others puts all of q's and k's blocks there; 16 x changes no value, only the stored scale."""
    torch.manual_seed(seed)
    m = nn.Sequential(Attention(), nn.GELU(), Attention())
    with torch.no_grad():
        for block in (m[0], m[2]):
            block.v_proj.weight.mul_(v_scale)
    return m
