"""Tiny transformers models of the architectures pqt is tested on (no downloads): 2 layers,
d 64, byte-sized vocabularies, dropout off, every parameter a well-defined random tensor
(HF initialises norms to 1 and biases to 0, under which a wrong mapping would not show).

Each factory takes `attn` (the attn_implementation: "eager", "sdpa", "flex_attention").
`ZOO` lists them by name; `inputs(name)` gives token ids (and BERT's attention mask stays
implicit); `KWARGS` holds the call's keyword arguments (no KV cache: the reference returns
tensors only).
"""

from __future__ import annotations

from typing import Callable

import torch

VOCAB, D, LAYERS, HEADS, KV_HEADS, SEQ = 96, 64, 2, 4, 2, 12


def _randomise(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.08)
            else:  # norms around 1, biases around 0
                base = 1.0 if ("norm" in name or "ln" in name) and name.endswith("weight") else 0.0
                p.copy_(base + 0.05 * torch.randn(p.shape, generator=g))
    return model


def _common(attn: str) -> dict:
    return dict(vocab_size=VOCAB, num_hidden_layers=LAYERS, num_attention_heads=HEADS, max_position_embeddings=64,
                bos_token_id=0, eos_token_id=0, pad_token_id=0, attn_implementation=attn)


def gpt2(attn: str = "sdpa", seed: int = 0) -> torch.nn.Module:
    import transformers as tf

    torch.manual_seed(seed)
    cfg = tf.GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=D, n_layer=LAYERS, n_head=HEADS, resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0, attn_implementation=attn)
    return _randomise(tf.GPT2LMHeadModel(cfg), seed)  # Conv1D weights [K, N]; lm_head tied to wte


def _decoder(cls_name: str, cfg_name: str, **extra) -> Callable[..., torch.nn.Module]:
    def make(attn: str = "sdpa", seed: int = 0) -> torch.nn.Module:
        import transformers as tf

        torch.manual_seed(seed)
        cfg = getattr(tf, cfg_name)(hidden_size=D, intermediate_size=2 * D, num_key_value_heads=KV_HEADS,
                                    **_common(attn), **extra)
        return _randomise(getattr(tf, cls_name)(cfg), seed)

    make.__name__ = cls_name
    return make


llama = _decoder("LlamaForCausalLM", "LlamaConfig", tie_word_embeddings=False)
mistral = _decoder("MistralForCausalLM", "MistralConfig", sliding_window=8)
qwen2 = _decoder("Qwen2ForCausalLM", "Qwen2Config")  # q/k/v biases
phi3 = _decoder("Phi3ForCausalLM", "Phi3Config")  # fused qkv_proj and gate_up_proj
gemma = _decoder("GemmaForCausalLM", "GemmaConfig", head_dim=16)  # tied head, scaled embedding


def gpt_neox(attn: str = "sdpa", seed: int = 0) -> torch.nn.Module:
    import transformers as tf

    torch.manual_seed(seed)
    cfg = tf.GPTNeoXConfig(hidden_size=D, intermediate_size=2 * D, hidden_dropout=0.0, attention_dropout=0.0,
                           **_common(attn))
    return _randomise(tf.GPTNeoXForCausalLM(cfg), seed)


def opt(attn: str = "sdpa", seed: int = 0) -> torch.nn.Module:
    import transformers as tf

    torch.manual_seed(seed)
    cfg = tf.OPTConfig(vocab_size=VOCAB, hidden_size=D, ffn_dim=2 * D, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                       max_position_embeddings=64, word_embed_proj_dim=D, dropout=0.0, attention_dropout=0.0,
                       bos_token_id=0, eos_token_id=0, pad_token_id=1, attn_implementation=attn)
    return _randomise(tf.OPTForCausalLM(cfg), seed)


def bert(attn: str = "sdpa", seed: int = 0) -> torch.nn.Module:
    import transformers as tf

    torch.manual_seed(seed)
    cfg = tf.BertConfig(vocab_size=VOCAB, hidden_size=D, intermediate_size=2 * D, num_hidden_layers=LAYERS,
                        num_attention_heads=HEADS, max_position_embeddings=64, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0, pad_token_id=0, attn_implementation=attn)
    return _randomise(tf.BertForMaskedLM(cfg), seed)  # decoder tied to the word embeddings


ZOO: dict[str, Callable[..., torch.nn.Module]] = {
    "gpt2": gpt2, "llama": llama, "mistral": mistral, "qwen2": qwen2, "phi3": phi3, "gemma": gemma,
    "gpt_neox": gpt_neox, "opt": opt, "bert": bert,
}

#: keyword arguments of each model's call (BERT has no KV cache)
KWARGS: dict[str, dict] = {name: ({} if name == "bert" else {"use_cache": False}) for name in ZOO}


def inputs(name: str, seed: int = 0, batch: int = 2, seq: int = SEQ) -> tuple[torch.Tensor]:
    """Token ids (avoiding the pad ids 0 and 1, so that no model masks them)."""
    g = torch.Generator().manual_seed(100 + seed)
    return (torch.randint(2, VOCAB, (batch, seq), generator=g),)


def logits(out) -> torch.Tensor:
    return out.logits if hasattr(out, "logits") else out
