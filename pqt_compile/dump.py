"""pqt-dump: compile a model with PQT, run one training step, print what happened, write the dumps.

    pqt-dump --preset gpt2-tiny --out dumps/
    pqt-dump --model mypkg.models:make_model --batch 2 --seq 64 --exclude lm_head --out dumps/
    python -m pqt_compile.dump --help

A factory (`module:function`) is called with no arguments and returns either a model, whose
input is a batch of token ids (`--batch` x `--seq`, vocabulary from `model.config.vocab_size`
or `--vocab`), or a tuple (model, example_args).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Any, Optional

import torch

from .config import DEFAULT_NOISE_STD, PQTConfig

__all__ = ["main", "PRESETS", "build"]


def _gpt2_tiny() -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(vocab_size=256, n_positions=128, n_embd=64, n_layer=2, n_head=2, resid_pdrop=0.0,
                                      embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0, use_cache=False))


def _llama_tiny() -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                                        bos_token_id=0, eos_token_id=0, pad_token_id=0, use_cache=False))


PRESETS = {"gpt2-tiny": _gpt2_tiny, "llama-tiny": _llama_tiny}


class UsageError(Exception):
    """A bad command line: printed as one line, exit status 2."""


def build(preset: Optional[str], factory: Optional[str], batch: int, seq: int, vocab: Optional[int]) -> tuple[torch.nn.Module, tuple]:
    """The model and its example inputs, from a preset or a `module:function` factory."""
    if factory:
        mod_name, _, fn_name = factory.partition(":")
        if not mod_name or not fn_name:
            raise UsageError(f"--model {factory!r}: expected module:function, e.g. mypkg.models:make_model")
        sys.path.insert(0, os.getcwd())
        try:
            fn = getattr(importlib.import_module(mod_name), fn_name)
        except (ImportError, AttributeError) as e:
            raise UsageError(f"--model {factory!r}: cannot import it ({type(e).__name__}: {e})") from None
        made = fn()
    elif preset:
        if preset not in PRESETS:
            raise UsageError(f"--preset {preset!r}: unknown; choose one of {sorted(PRESETS)}")
        made = PRESETS[preset]()
    else:
        raise UsageError("give --preset NAME or --model module:function")
    if isinstance(made, tuple):
        model, args = made[0], tuple(made[1])
    else:
        model = made
        v = vocab or getattr(getattr(model, "config", None), "vocab_size", None)
        if not v:
            raise UsageError("the model has no config.vocab_size: give --vocab, or return (model, example_args) from the factory")
        args = (torch.randint(0, v, (batch, seq)),)
    if not isinstance(model, torch.nn.Module):
        raise UsageError(f"the factory returned {type(model).__name__}, not an nn.Module")
    return model, args


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pqt-dump", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("model")
    src.add_argument("--preset", help=f"a built-in model: {', '.join(sorted(PRESETS))}")
    src.add_argument("--model", dest="factory", metavar="MODULE:FUNCTION", help="a factory of your own code")
    src.add_argument("--batch", type=int, default=2, help="batch size of the token input (default 2)")
    src.add_argument("--seq", type=int, default=32, help="sequence length of the token input (default 32)")
    src.add_argument("--vocab", type=int, help="vocabulary size, if the model has no config.vocab_size")
    cfg = p.add_argument_group("PQT config (PQTConfig fields)")
    cfg.add_argument("--format", default="fp6_e3m2", help="target format (default fp6_e3m2)")
    cfg.add_argument("--block-size", default="32", help="an int, 'row' or 'tensor' (default 32)")
    cfg.add_argument("--noise", default="gaussian", choices=["gaussian", "uniform"])
    cfg.add_argument("--noise-std", type=float, default=DEFAULT_NOISE_STD, help="in units of the step (default 1/sqrt(12))")
    cfg.add_argument("--seed", type=int, default=0)
    cfg.add_argument("--include", action="append", default=[], metavar="REGEX", help="sample only matching weights (repeatable)")
    cfg.add_argument("--exclude", action="append", default=[], metavar="REGEX", help="never sample matching weights (repeatable)")
    cfg.add_argument("--sample-in-eval", action="store_true")
    p.add_argument("--out", default="pqt_dump", help="directory for the dumps (default ./pqt_dump)")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    p = _parser()
    a = p.parse_args(argv)
    try:
        block: Any = a.block_size if a.block_size in ("row", "tensor") else int(a.block_size)
    except ValueError:
        print(f"pqt-dump: error: --block-size {a.block_size!r}: expected an int, 'row' or 'tensor'", file=sys.stderr)
        return 2
    try:
        config = PQTConfig(format=a.format, block_size=block, noise=a.noise, noise_std=a.noise_std, seed=a.seed,
                           include=tuple(a.include), exclude=tuple(a.exclude), sample_in_eval=a.sample_in_eval)
        model, args = build(a.preset, a.factory, a.batch, a.seq, a.vocab)
    except (ValueError, UsageError) as e:
        print(f"pqt-dump: error: {e}", file=sys.stderr)
        return 2
    from .explainer import explain

    report = explain(model, *args, config=config)
    print(report)
    paths = report.save(a.out)
    print(f"\nwrote {len(paths)} files to {a.out}/ (summary.txt, report.json, graphs per stage, output code)")
    print("tip: TORCH_TRACE=DIR pqt-dump ... then tlparse DIR shows these graphs next to PyTorch's own")
    return 0


if __name__ == "__main__":
    sys.exit(main())
