"""What the command-line tools share: a model from a preset or a factory, and the PQT config
as flags (one flag per PQTConfig field, derived from the dataclass so none can be missing).

Conventions: a bad command line is one line on stderr and exit status 2 (`UsageError`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import os
import sys
from typing import Any, Callable, ContextManager, Optional

import torch

from ..config import PQTConfig

__all__ = ["PRESETS", "UsageError", "build", "load_hf_directory", "add_model_arguments", "add_config_arguments",
           "positive_int", "pqt_refusal", "first_line",
           "config_from_arguments"]


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


def first_line(e: BaseException) -> str:
    """The first line of an exception's message: what a one-line error quotes of another library's."""
    return (str(e).strip().splitlines() or [""])[0]


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
        try:
            made = fn()
        except Exception as e:  # noqa: BLE001 - the user's code: one line, not a traceback
            raise UsageError(f"--model {factory!r}: the factory raised {type(e).__name__}: {first_line(e)}; fix the factory "
                             f"(try it in Python: from {mod_name} import {fn_name}; {fn_name}())") from None
    elif preset:
        if preset not in PRESETS:
            raise UsageError(f"--preset {preset!r}: unknown; choose one of {sorted(PRESETS)}")
        made = PRESETS[preset]()
    else:
        raise UsageError("give --preset NAME or --model module:function")
    if isinstance(made, tuple) and not (len(made) == 2 and isinstance(made[1], (tuple, list))):
        raise UsageError(f"the factory returned a tuple of {len(made)} ({', '.join(type(x).__name__ for x in made)}); "
                         "return the model, or (model, example_args) with example_args a tuple")
    model = made[0] if isinstance(made, tuple) else made
    if not isinstance(model, torch.nn.Module):
        raise UsageError(f"the factory returned {type(model).__name__}, not an nn.Module (or (model, example_args))")
    if isinstance(made, tuple):
        return model, tuple(made[1])
    v = vocab or getattr(getattr(model, "config", None), "vocab_size", None)
    if not v:
        raise UsageError("the model has no config.vocab_size: give --vocab, or return (model, example_args) from the factory")
    return model, (torch.randint(0, v, (batch, seq)),)


def eager_outputs(model: torch.nn.Module, args: tuple, kwargs: Optional[dict] = None,
                  amp: Callable[[], ContextManager] = contextlib.nullcontext) -> Any:
    """The model's outputs on `args` in eager mode (eval, no_grad; the model's state restored after).
    The tools run this before compiling: inputs the model cannot take (a token past its positions)
    fail here, in Python, where compiled code would index out of bounds and abort the process.
    UsageError (one line) if the model raises."""
    from .restore import model_state_restored

    try:
        with model_state_restored(model), torch.no_grad(), amp():
            model.eval()
            return model(*args, **(kwargs or {}))
    except Exception as e:  # noqa: BLE001 - the user's model and inputs: one line, not a traceback
        raise UsageError(f"the model fails on these inputs in eager mode ({type(e).__name__}: {first_line(e)}); give inputs it "
                         "takes (--seq, --batch, --vocab), or fix the model") from None


def load_hf_directory(path: str) -> torch.nn.Module:
    """The model of a local Hugging Face model directory (its config's architecture class, local
    files only: nothing is downloaded). UsageError naming the problem if it does not load."""
    import json

    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        raise UsageError(f"--checkpoint {path}: no config.json there; give a Hugging Face model directory "
                         "(what save_pretrained writes)")
    try:
        import transformers
    except ImportError:
        raise UsageError("--checkpoint DIR needs transformers: pip install transformers") from None
    try:
        with open(config_path) as f:
            archs = json.load(f).get("architectures") or []
        cls = getattr(transformers, archs[0], None) if archs else None
        cls = cls or transformers.AutoModelForCausalLM
        return cls.from_pretrained(path, local_files_only=True)
    except Exception as e:  # noqa: BLE001 - a checkpoint that does not load: one line naming why
        raise UsageError(f"--checkpoint {path}: it does not load ({type(e).__name__}: {first_line(e)}); check that "
                         "from_pretrained(path, local_files_only=True) loads it") from None


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1 (argparse's one-line error, exit 2, otherwise)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return value


def pqt_refusal(e: BaseException) -> Optional[str]:
    """The first line of a refusal by pqt (a ValueError whose message starts with 'pqt') that `e`
    is or wraps: torch.compile reraises a backend's error as BackendCompilerFailed, whose ~170-line
    traceback buries it. None if `e` is something else (a bug: its traceback is worth seeing)."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, ValueError) and str(e).startswith("pqt"):
            return first_line(e)
        e = e.__cause__ or getattr(e, "inner_exception", None) or e.__context__
    return None


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_argument_group("model")
    src.add_argument("--preset", help=f"a built-in model: {', '.join(sorted(PRESETS))}")
    src.add_argument("--model", dest="factory", metavar="MODULE:FUNCTION", help="a factory of your own code")
    src.add_argument("--batch", type=positive_int, default=2, help="batch size of the token input (default 2)")
    src.add_argument("--seq", type=positive_int, default=32, help="sequence length of the token input (default 32)")
    src.add_argument("--vocab", type=positive_int, help="vocabulary size, if the model has no config.vocab_size")


_HELP = {
    "format": "target storage format",
    "block_size": "elements per scale block: an int, 'row' or 'tensor' (default: the format's, 32; 16 for nvfp4)",
    "mode": "'sample' (PQT noise) or 'ste' (round to nearest, straight-through gradient)",
    "noise": "'gaussian', 'uniform' or 'rounded_gaussian'",
    "noise_std": "noise std in units of the step (default: the noise's own, 1/sqrt(12) or 1/2 before rounding)",
    "include": "sample only weights whose name matches (repeatable)",
    "exclude": "never sample weights whose name matches (repeatable)",
    "tensor_scale_groups": ("nvfp4: sibling modules whose weights share one tensor scale, comma-separated, one group "
                            "per flag (repeatable), or 'none' for a scale per weight (default: q_proj,k_proj,v_proj "
                            "and gate_proj,up_proj, which vLLM fuses)"),
}


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    """One flag per PQTConfig field (--block-size for block_size ...), defaults from the dataclass."""
    group = p.add_argument_group("PQT config (PQTConfig fields)")
    for f in dataclasses.fields(PQTConfig):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        text = _HELP.get(f.name, f.name.replace("_", " "))
        if isinstance(default, bool):
            group.add_argument(flag, dest=f.name, action="store_true", help=f"{text} (default off)")
        elif isinstance(default, tuple):
            group.add_argument(flag, dest=f.name, action="append", default=[], metavar="REGEX", help=text)
        elif f.name == "tensor_scale_groups":  # None: resolved by PQTConfig (the format's default)
            group.add_argument(flag, dest=f.name, action="append", default=None, metavar="M1,M2[,...]", help=text)
        elif f.name in ("noise_std", "block_size"):  # None: resolved by PQTConfig (the noise's / format's default)
            group.add_argument(flag, dest=f.name, type=float if f.name == "noise_std" else str, default=None, help=text)
        elif isinstance(default, float):
            group.add_argument(flag, dest=f.name, type=float, default=default, help=f"{text} (default {default:.4g})")
        else:
            group.add_argument(flag, dest=f.name, default=str(default), help=f"{text} (default {default})")


def _scale_groups(flags: list[str]) -> tuple[tuple[str, ...], ...]:
    """--tensor-scale-groups values: each a comma-separated group, or a lone 'none' (no groups)."""
    if [f.strip().lower() for f in flags] == ["none"]:
        return ()
    if any(f.strip().lower() == "none" for f in flags):
        raise UsageError("--tensor-scale-groups none stands alone: it gives every weight its own tensor scale")
    return tuple(tuple(m.strip() for m in f.split(",")) for f in flags)


def config_from_arguments(a: argparse.Namespace) -> PQTConfig:
    """The PQTConfig of parsed flags; UsageError naming the flag for a bad value."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(PQTConfig):
        v = getattr(a, f.name)
        if f.name == "block_size" and v not in ("row", "tensor", None):
            try:
                v = int(v)
            except ValueError:
                raise UsageError(f"--block-size {v!r}: expected an int, 'row' or 'tensor'") from None
        if f.name == "tensor_scale_groups" and v is not None:
            v = _scale_groups(v)
        values[f.name] = tuple(v) if isinstance(v, list) else v
    try:
        return PQTConfig(**values)
    except ValueError as e:
        raise UsageError(str(e)) from None
