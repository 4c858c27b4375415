"""HF gradient checkpointing under PQT: the recomputed forward sees the forward's sample.

    python examples/hf_checkpointing.py --arch llama

One training step of a tiny Hugging Face model (built from a config, nothing downloaded) with
`gradient_checkpointing_enable()`, and the same step without it, both compiled with the pqt
backend under one pinned seed; then the same pair with the stock `inductor` backend. Prints the
largest relative gradient difference of each pair, and, for scale, that of a step whose seed
differs (what a recompute that drew another sample would cost).

The sample is regenerated in the backward from the call's seed and each weight's key, so the
recompute reads exactly the forward's sample. The gradients can still differ in their last
bits: Inductor compiles a checkpointed graph differently (other fusions, other reduction
orders), and the stock backend shows the same differences (see docs/results.md).
"""

from __future__ import annotations

import argparse
import copy
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import pqt_compile  # noqa: E402


def tiny(arch: str) -> torch.nn.Module:
    import transformers

    if arch == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=2,
                                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        return transformers.GPT2LMHeadModel(cfg)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=16)
    return transformers.LlamaForCausalLM(cfg)


def grads(base: torch.nn.Module, backend: str, checkpointing: bool, seed: int, ids: torch.Tensor) -> dict:
    model = copy.deepcopy(base)
    if checkpointing:
        model.gradient_checkpointing_enable()
    if backend == "pqt":
        pqt_compile.compile(model, pqt_compile.PQTConfig(format="fp4_e2m1"), inplace=True)
    else:
        model.compile(backend=backend)
    with pqt_compile.fixed_seed(seed):
        model(input_ids=ids, labels=ids).loss.backward()
    return {n: p.grad for n, p in model.named_parameters()}


def max_rel(a: dict, b: dict) -> float:
    return max(float((a[n] - b[n]).abs().max() / b[n].abs().max().clamp_min(1e-30)) for n in a)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", choices=("gpt2", "llama"), default="llama")
    a = p.parse_args()
    torch.use_deterministic_algorithms(True)  # the embedding backward's scatter-add otherwise varies
    torch.manual_seed(0)
    base = tiny(a.arch).train()
    ids = torch.randint(0, 64, (2, 16))
    pqt = grads(base, "pqt", False, 3, ids)
    print(f"pqt, checkpointing vs not:      {max_rel(grads(base, 'pqt', True, 3, ids), pqt):.3g}")
    print(f"pqt, another seed (for scale):  {max_rel(grads(base, 'pqt', False, 4, ids), pqt):.3g}")
    stock = grads(base, "inductor", False, 3, ids)
    print(f"inductor, checkpointing vs not: {max_rel(grads(base, 'inductor', True, 3, ids), stock):.3g}")


if __name__ == "__main__":
    main()
