"""Tiny transformers MoE models (no downloads): Mixtral, Qwen2-MoE, Qwen3-MoE and gpt-oss with
4 experts, top-2, one layer, every parameter a well-defined random tensor (HF initialises some
routers to zero and gpt-oss's biases to empty, which would make routing trivial)."""

from __future__ import annotations

import torch

ARCHS = ("mixtral", "qwen2_moe", "qwen3_moe", "gpt_oss")


def tiny_moe(arch: str, impl: str, seed: int = 0, inter: int = 64, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    import transformers as tf

    torch.manual_seed(seed)
    common = dict(vocab_size=64, hidden_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                  max_position_embeddings=32, bos_token_id=0, eos_token_id=0, pad_token_id=0,
                  experts_implementation=impl)
    if arch == "mixtral":
        m = tf.MixtralForCausalLM(tf.MixtralConfig(intermediate_size=inter, num_local_experts=4, num_experts_per_tok=2, **common))
    elif arch == "qwen2_moe":
        m = tf.Qwen2MoeForCausalLM(tf.Qwen2MoeConfig(intermediate_size=inter, moe_intermediate_size=inter,
                                                     shared_expert_intermediate_size=32, num_experts=4,
                                                     num_experts_per_tok=2, **common))
    elif arch == "qwen3_moe":
        m = tf.Qwen3MoeForCausalLM(tf.Qwen3MoeConfig(intermediate_size=inter, moe_intermediate_size=inter, num_experts=4,
                                                     num_experts_per_tok=2, head_dim=32, **common))
    elif arch == "gpt_oss":
        m = tf.GptOssForCausalLM(tf.GptOssConfig(intermediate_size=inter, num_local_experts=4, num_experts_per_tok=2,
                                                 head_dim=32, layer_types=["full_attention"],
                                                 rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, **common))
    else:
        raise ValueError(f"unknown arch {arch!r}; choose from {ARCHS}")
    m = m.to(dtype)
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed + 1)
        for n, p in m.named_parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
            elif n.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.01)
    return m.train()


def tokens(seed: int = 0, batch: int = 2, seq: int = 8) -> torch.Tensor:
    return torch.randint(0, 64, (batch, seq), generator=torch.Generator().manual_seed(100 + seed))
