"""pqt-export: write a PQT-trained model for an inference engine, exactly in its trained format.

    pqt-export --preset llama-tiny --format fp4_e2m1 --to gguf --out model.gguf
    pqt-export --preset llama-tiny --format nvfp4 --to compressed-tensors --out model-nvfp4/
    pqt-export --model mypkg.models:make_model --checkpoint runs/pqt_model.pt --to gguf --out model.gguf
    pqt-export --checkpoint path/to/hf_model --format int4 --to compressed-tensors --out model-int4/

--to gguf writes one file for llama.cpp and Ollama (HF GPT-2 and Llama architectures);
--to compressed-tensors writes a Hugging Face model directory for transformers and vLLM.

The model comes from a preset, a factory (`module:function`, called with no arguments,
returning a model or (model, example_args)), or a checkpoint:
- a directory: a Hugging Face model (`from_pretrained`, local files only), trained with the
  PQT config given by the flags; its tokenizer, if it has one, goes into the output;
- a file: pqt_compile's packed export (`pqt_compile.export.save`, what examples/train.py
  writes), loaded into the model of --preset / --model. The file holds its config: config
  flags are not needed, and one that disagrees with the file is refused.

A format or block size the target cannot hold exactly, an architecture the GGUF writer does not
know, an existing output without --force, or a disagreeing checkpoint is refused with one line
on stderr (exit status 2); nothing is written then. The output appears only when complete.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Any, Optional

import torch

from ..config import PQTConfig
from .cli import (UsageError, add_config_arguments, add_model_arguments, build, config_from_arguments, first_line,
                  load_hf_directory)

__all__ = ["main"]

_CONFIG_FIELDS = tuple(f.name for f in dataclasses.fields(PQTConfig))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pqt-export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(p)
    p.add_argument("--checkpoint", metavar="PATH",
                   help="a Hugging Face model directory, or a pqt_compile packed file (with --preset / --model)")
    add_config_arguments(p)
    # None marks a config flag that was not given: a packed checkpoint supplies its own config.
    p.set_defaults(**{name: None for name in _CONFIG_FIELDS})
    out = p.add_argument_group("output")
    out.add_argument("--to", required=True, choices=["gguf", "compressed-tensors", "gpt-oss-mxfp4"], help="the target format")
    out.add_argument("--out", required=True, help="the output file (gguf) or directory (compressed-tensors)")
    out.add_argument("--force", action="store_true", help="replace an existing output")
    out.add_argument("--tokenizer", metavar="DIR|bytes|none",
                     help="the vocabulary: an HF tokenizer directory, 'bytes' (256 byte tokens) or 'none' (GGUF: "
                          "llama.cpp runs on token ids). Default: the checkpoint directory's tokenizer, else bytes")
    out.add_argument("--gguf-type", choices=["MXFP4", "Q4_0", "Q5_0", "Q8_0", "NVFP4"],
                     help="the GGUF type of the sampled weights (default: the smallest that holds the format)")
    out.add_argument("--per-weight-global-scales", action="store_true",
                     help="compressed-tensors NVFP4: write q/k/v and gate/up with their own tensor scales even where "
                          "they differ (exact in transformers; vLLM and SGLang fuse them under one scale)")
    out.add_argument("--trace", action="store_true",
                     help="find the sampled weights by tracing a forward on the example input (the compiler's graph "
                          "rules) instead of by module type")
    return p


def _flag_config(a: argparse.Namespace, base_config: Optional[PQTConfig] = None) -> tuple[PQTConfig, set[str]]:
    """The config of the flags (defaults where not given) and the names of the fields given. With
    `base_config` (a packed file's), an unset --format is the file's, so that a flag such as
    --tensor-scale-groups is read with the file's format (the caller compares only the fields given)."""
    defaults = argparse.ArgumentParser()
    add_config_arguments(defaults)
    base = vars(defaults.parse_args([]))
    given = {name for name in _CONFIG_FIELDS if getattr(a, name) is not None}
    merged = argparse.Namespace(**{name: getattr(a, name) if name in given else base[name] for name in _CONFIG_FIELDS})
    if base_config is not None and "format" not in given:
        merged.format = base_config.format
    return config_from_arguments(merged), given


def _hf_checkpoint(path: str) -> tuple[torch.nn.Module, Any]:
    """(model, tokenizer or None) of a local Hugging Face model directory (cli.load_hf_directory:
    its config's architecture class, so a base model is not given a fresh head)."""
    import json

    config_path = os.path.join(path, "config.json")
    if os.path.isfile(config_path):
        with open(config_path) as f:
            if "quantization_config" in json.load(f):
                raise UsageError(f"--checkpoint {path} is already quantized (its config.json has a quantization_config); "
                                 "export from the trained, unquantized checkpoint")
    model = load_hf_directory(path).eval()
    has_tokenizer = any(os.path.exists(os.path.join(path, n)) for n in ("tokenizer.json", "tokenizer_config.json"))
    return model, _load_tokenizer(path, "--checkpoint") if has_tokenizer else None


def _load_tokenizer(path: str, flag: str) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as e:  # noqa: BLE001 - one line naming why
        raise UsageError(f"{flag} {path}: its tokenizer does not load ({type(e).__name__}: {first_line(e)}); give a "
                         "directory that AutoTokenizer.from_pretrained loads, 'bytes' or 'none'") from None


def _tokenizer(value: Optional[str], default: Any, target: str) -> Any:
    if value is None:
        return default
    if value in ("bytes", "none"):
        return value if target == "gguf" else None  # a compressed-tensors directory just has no tokenizer then
    if not os.path.isdir(value):
        raise UsageError(f"--tokenizer {value!r}: give an HF tokenizer directory, 'bytes' or 'none'")
    return _load_tokenizer(value, "--tokenizer")


def _model_and_config(a: argparse.Namespace) -> tuple[torch.nn.Module, tuple, PQTConfig, Any, Optional[dict]]:
    """(model, example args, config, default tokenizer, the packed file's packings or None) from the
    model and config flags."""
    from ..export import load, read_packed, saved_config

    ckpt = a.checkpoint
    if not (ckpt and os.path.isfile(ckpt)):  # a packed file's flags are read with its config, below
        flags, given = _flag_config(a)
    if ckpt and os.path.isdir(ckpt):
        if a.preset or a.factory:
            raise UsageError(f"--checkpoint {ckpt} is a model directory: give it without --preset / --model")
        model, tokenizer = _hf_checkpoint(ckpt)
        vocab = a.vocab or model.config.vocab_size
        return model, (torch.randint(0, vocab, (a.batch, a.seq)),), flags, tokenizer, None
    model, args = build(a.preset, a.factory, a.batch, a.seq, a.vocab)
    if not ckpt:
        return model, args, flags, None, None
    if not os.path.isfile(ckpt):
        raise UsageError(f"--checkpoint {ckpt}: no such file or directory")
    try:
        saved = saved_config(ckpt)
    except ValueError as e:
        raise UsageError(str(e)) from None
    flags, given = _flag_config(a, saved)
    differ = sorted(name for name in given if getattr(flags, name) != getattr(saved, name))
    if differ:
        have = ", ".join(f"{n}={getattr(saved, n)!r}" for n in differ)
        raise UsageError(f"--checkpoint {ckpt} was saved with {have}; drop the disagreeing flag(s) "
                         f"{', '.join('--' + n.replace('_', '-') for n in differ)} (the file's config is used)")
    try:
        load(ckpt, model, saved)
    except ValueError as e:
        raise UsageError(str(e)) from None
    # The stored codes, not a second quantization of the loaded values (quantize.py NOTE [re-quantizing NVFP4]).
    return model, args, saved, None, read_packed(ckpt)


def main(argv: Optional[list[str]] = None) -> int:
    """Run pqt-export on `argv` (sys.argv[1:] if None): 0 when the output was written, 2 with
    a one-line error on stderr (and nothing left behind) when the input was refused."""
    a = _parser().parse_args(argv)
    from ..export import GGUFSummary, GptOssSummary, write
    from ..export.common import check_destination

    try:
        check_destination(a.out, force=a.force, directory=a.to != "gguf")  # before loading anything
        if a.checkpoint and os.path.realpath(a.out) == os.path.realpath(a.checkpoint):
            raise UsageError(f"--out {a.out} is the --checkpoint it reads: the export would replace the trained "
                             "model; write to another path")
        model, args, config, tokenizer, packed = _model_and_config(a)
        tokenizer = _tokenizer(a.tokenizer, tokenizer, a.to)
        summary = write(model.eval(), a.out, config, to=a.to, tokenizer=tokenizer, force=a.force,
                        example_args=args if a.trace else None, gguf_type=a.gguf_type, packed=packed,
                        per_weight_global_scales=a.per_weight_global_scales)
    except (UsageError, ValueError) as e:  # ExportError is a ValueError; so are pack's refusals (NaN weights)
        print(f"pqt-export: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the output cannot be written (no permission, a full disk): nothing is left behind
        print(f"pqt-export: error: cannot write {a.out} ({type(e).__name__}: {first_line(e)})", file=sys.stderr)
        return 2
    except ImportError as e:
        print(f"pqt-export: error: {e}; pip install -e '.[export]' (gguf) or transformers", file=sys.stderr)
        return 2
    print(f"pqt-export: wrote {a.out} ({a.to}) for format {config.format}, block_size {config.block_size}")
    if isinstance(summary, GGUFSummary):
        counts: dict[str, int] = {}
        for t in summary.types.values():
            counts[t] = counts.get(t, 0) + 1
        print(f"  {summary.arch}, {summary.bytes} bytes, vocabulary {summary.vocab}; tensors: "
              + ", ".join(f"{n} {t}" for t, n in sorted(counts.items())))
    elif isinstance(summary, GptOssSummary):
        print(f"  gpt-oss MXFP4 experts (blocks + scales): {', '.join(summary.experts)}")
    else:
        print(f"  {summary.format}: {len(summary.compressed)} nn.Linear compressed; dense (ignore): "
              f"{', '.join(summary.ignore) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
