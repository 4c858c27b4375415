"""What llama.cpp needs to know about an architecture: its metadata keys and tensor names.

Two Hugging Face architectures are known, the ones pqt_compile's main job trains and the most
common `from_pretrained` families of that shape:

- `GPT2LMHeadModel` -> llama.cpp "gpt2". HF's Conv1D stores [K, N] (x @ W); llama.cpp wants
  [N, K], so those weights are transposed (a sampled one is packed along K, which the writer
  puts last anyway). All biases are required. llama.cpp's gpt2 graph uses the tanh GELU and
  1/sqrt(head_dim) attention scaling, so other settings are refused.
- `LlamaForCausalLM` -> llama.cpp "llama". HF applies RoPE to two halves of each head
  (rotate-half); GGML's "norm" RoPE rotates adjacent pairs, so the rows of Q and K are
  permuted within each head (the permutation llama.cpp's own converter applies). It moves
  whole rows, so quantized rows move as bytes and stay exact. RoPE scaling other than the
  default and activations other than SiLU are refused.

A tied output embedding is not written: llama.cpp uses token_embd when output.weight is absent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Union

import torch

from .common import ExportError

__all__ = ["TensorPlan", "ArchPlan", "KNOWN_ARCHITECTURES", "arch_plan"]

Metadata = dict[str, Union[int, float]]


def _rope_permute(t: torch.Tensor, n_head: int) -> torch.Tensor:
    """Rows of each head reordered from HF's (first half, second half) to GGML's interleaved pairs."""
    rows = t.shape[0]
    return t.reshape(n_head, 2, rows // n_head // 2, *t.shape[1:]).transpose(1, 2).reshape(t.shape)


@dataclass(frozen=True)
class TensorPlan:
    """Where one HF tensor goes in the GGUF file and how it is laid out there.

    Attributes:
        name: the GGUF tensor name.
        conv1d: an HF Conv1D weight ([K, N]); llama.cpp stores it [N, K].
        rope_heads: for Llama's Q/K weights and biases, the number of heads whose rows are
            permuted for GGML's RoPE (0: none).
    """

    name: str
    conv1d: bool = False
    rope_heads: int = 0

    def dense(self, t: torch.Tensor) -> torch.Tensor:
        """The tensor as llama.cpp lays it out (rows = outputs, the reduction axis last)."""
        if self.conv1d and t.dim() == 2:
            t = t.t()
        return self.rows(t)

    def rows(self, t: torch.Tensor) -> torch.Tensor:
        """Reorder the rows (dim 0) of an already laid-out tensor (or of its encoded bytes)."""
        return _rope_permute(t, self.rope_heads) if self.rope_heads else t


@dataclass(frozen=True)
class ArchPlan:
    """An architecture as GGUF holds it.

    Attributes:
        arch: llama.cpp's architecture name (general.architecture and the key prefix).
        metadata: {key without the "arch." prefix: value}; ints are written uint32, floats float32.
        tensors: {HF state_dict key: plan}.
        ignored: regular expressions of state_dict keys llama.cpp does not use (buffers).
        bos, eos: the model config's special token ids (None if it has none).
    """

    arch: str
    metadata: Metadata
    tensors: dict[str, TensorPlan]
    ignored: tuple[str, ...] = field(default_factory=tuple)
    bos: Any = None
    eos: Any = None

    def is_ignored(self, key: str) -> bool:
        """Whether the state_dict `key` is one llama.cpp does not read (matches `ignored`)."""
        return any(re.search(p, key) for p in self.ignored)


def _gpt2(model: torch.nn.Module) -> ArchPlan:
    c = model.config
    if c.activation_function not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ExportError(f"GPT-2 with activation_function={c.activation_function!r}: llama.cpp's gpt2 graph computes "
                          "the tanh GELU (gelu_new) only")
    if getattr(c, "scale_attn_by_inverse_layer_idx", False) or not getattr(c, "scale_attn_weights", True):
        raise ExportError("GPT-2 with scale_attn_by_inverse_layer_idx=True or scale_attn_weights=False: llama.cpp's gpt2 "
                          "graph scales attention by 1/sqrt(head_dim) only")
    tensors = {
        "transformer.wte.weight": TensorPlan("token_embd.weight"),
        "transformer.wpe.weight": TensorPlan("position_embd.weight"),
        "transformer.ln_f.weight": TensorPlan("output_norm.weight"),
        "transformer.ln_f.bias": TensorPlan("output_norm.bias"),
        "lm_head.weight": TensorPlan("output.weight"),
    }
    layer = {"ln_1": "attn_norm", "attn.c_attn": "attn_qkv", "attn.c_proj": "attn_output", "ln_2": "ffn_norm",
             "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down"}
    for i in range(c.n_layer):
        for hf, gg in layer.items():
            tensors[f"transformer.h.{i}.{hf}.weight"] = TensorPlan(f"blk.{i}.{gg}.weight", conv1d=not hf.startswith("ln_"))
            tensors[f"transformer.h.{i}.{hf}.bias"] = TensorPlan(f"blk.{i}.{gg}.bias")
    metadata: Metadata = {
        "context_length": c.n_positions,
        "embedding_length": c.n_embd,
        "feed_forward_length": c.n_inner if c.n_inner is not None else 4 * c.n_embd,
        "block_count": c.n_layer,
        "attention.head_count": c.n_head,
        "attention.layer_norm_epsilon": float(c.layer_norm_epsilon),
    }
    # attn.bias / attn.masked_bias: the causal-mask buffers of older transformers versions.
    return ArchPlan("gpt2", metadata, tensors, (r"\.attn\.(masked_)?bias$",), c.bos_token_id, c.eos_token_id)


def _llama(model: torch.nn.Module) -> ArchPlan:
    c = model.config
    if getattr(c, "hidden_act", "silu") != "silu":
        raise ExportError(f"Llama with hidden_act={c.hidden_act!r}: llama.cpp's llama graph uses SiLU (SwiGLU) only")
    # transformers >= 5 keeps RoPE settings in rope_parameters; 4.x in rope_theta / rope_scaling.
    rope = dict(getattr(c, "rope_parameters", None) or getattr(c, "rope_scaling", None) or {})
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise ExportError(f"Llama with rope_type {rope_type!r}: the GGUF writer handles the default RoPE only "
                          "(llama.cpp's convert_hf_to_gguf.py converts the scaled variants)")
    theta = float(rope.get("rope_theta", getattr(c, "rope_theta", 10000.0)))
    n_head = c.num_attention_heads
    n_kv = getattr(c, "num_key_value_heads", None) or n_head
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // n_head
    metadata: Metadata = {
        "context_length": c.max_position_embeddings,
        "embedding_length": c.hidden_size,
        "block_count": c.num_hidden_layers,
        "feed_forward_length": c.intermediate_size,
        "attention.head_count": n_head,
        "attention.head_count_kv": n_kv,
        "attention.layer_norm_rms_epsilon": float(c.rms_norm_eps),
        "rope.freq_base": theta,
        "rope.dimension_count": head_dim,
        "vocab_size": c.vocab_size,
    }
    if head_dim * n_head != c.hidden_size:
        metadata["attention.key_length"] = head_dim
        metadata["attention.value_length"] = head_dim
    tensors = {
        "model.embed_tokens.weight": TensorPlan("token_embd.weight"),
        "model.norm.weight": TensorPlan("output_norm.weight"),
        "lm_head.weight": TensorPlan("output.weight"),
    }
    layer = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    heads = {"self_attn.q_proj": n_head, "self_attn.k_proj": n_kv}
    for i in range(c.num_hidden_layers):
        for hf, gg in layer.items():
            for kind in ("weight", "bias"):
                tensors[f"model.layers.{i}.{hf}.{kind}"] = TensorPlan(f"blk.{i}.{gg}.{kind}", rope_heads=heads.get(hf, 0))
    return ArchPlan("llama", metadata, tensors, (r"rotary_emb\.",), c.bos_token_id, c.eos_token_id)


_PLANS: dict[str, Callable[[torch.nn.Module], ArchPlan]] = {"GPT2LMHeadModel": _gpt2, "LlamaForCausalLM": _llama}
#: The model classes the GGUF writer knows.
KNOWN_ARCHITECTURES = tuple(_PLANS)


def arch_plan(model: torch.nn.Module) -> ArchPlan:
    """The GGUF plan of `model` (an HF model of a known class); ExportError naming the known ones."""
    cls = type(model).__name__
    if cls not in _PLANS or not hasattr(model, "config"):
        raise ExportError(f"the GGUF writer knows the architectures {', '.join(KNOWN_ARCHITECTURES)} (Hugging Face "
                          f"transformers), not {cls}; export other Hugging Face models --to compressed-tensors (their "
                          "nn.Linear weights), and any model to pqt_compile's packed file (pqt_compile.export.save)")
    return _PLANS[cls](model)
