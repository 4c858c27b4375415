"""The main job's data and models: byte corpora found on every machine with Python, the train /
validation split, batches, and GPT-2 / Llama models built from transformers configs (nothing is
downloaded)."""

from __future__ import annotations

import importlib.util
import os
import sysconfig
from typing import Optional

import torch

__all__ = ["STDLIB_MODULES", "CORPORA", "SIZES", "load_corpus", "stdlib_files", "split", "build_model", "get_batch"]

# A fixed list, so that the corpus is the same on every run (for a given Python version).
STDLIB_MODULES = (
    "argparse", "ast", "bisect", "calendar", "collections", "configparser", "contextlib", "copy", "csv",
    "dataclasses", "difflib", "enum", "fractions", "functools", "heapq", "inspect", "json.decoder",
    "json.encoder", "logging", "pprint", "random", "shutil", "statistics", "string", "textwrap",
    "threading", "typing", "zipfile",
)
#: --corpus: "stdlib", the modules above (about 0.9 MB: the tiny models' corpus); "stdlib-all",
#: every Python source file of the standard library but its tests and codec tables (about 8-9 MB,
#: so that a 124M-parameter model's pretraining sees most bytes about once, not twenty times).
CORPORA = ("stdlib", "stdlib-all")
_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "encodings", "__pycache__"}
_MIN_ALL_BYTES = 2_000_000

SIZES = {  # name: (layers, d_model, heads, seq)
    "tiny": (2, 64, 2, 64),
    "small": (4, 128, 4, 128),
    "medium": (6, 256, 4, 256),
    "gpt2-124m": (12, 768, 12, 1024),
}


def stdlib_files(root: Optional[str] = None) -> list[str]:
    """Every .py file under the standard library's directory, in a fixed order, but site-packages,
    tests and the codec tables (encodings/): paths relative to `root`, sorted; then every tenth
    file moved to the end, so that the validation split (the last tenth of the bytes) is drawn from
    across the library rather than from the last packages in alphabetical order."""
    root = root or sysconfig.get_paths()["stdlib"]
    found = []
    for d, dirs, files in os.walk(root):
        dirs[:] = sorted(x for x in dirs if x not in _SKIP_DIRS)
        found += [os.path.relpath(os.path.join(d, f), root) for f in files if f.endswith(".py")]
    found.sort()
    return [f for i, f in enumerate(found) if i % 10 != 9] + found[9::10]


def load_corpus(path: Optional[str] = None, corpus: str = "stdlib") -> bytes:
    """The training text as bytes: `path`, or the standard-library corpus named `corpus`."""
    if path is not None:
        with open(path, "rb") as f:
            data = f.read()
        if len(data) < 1024:
            raise SystemExit(f"--data {path}: only {len(data)} bytes; give at least 1 KiB of text")
        return data
    if corpus == "stdlib-all":
        root = sysconfig.get_paths()["stdlib"]
        parts = []
        for rel in stdlib_files(root):
            with open(os.path.join(root, rel), "rb") as f:
                parts.append(f.read())
        data = b"\n".join(parts)
        if len(data) < _MIN_ALL_BYTES:
            raise SystemExit(f"--corpus stdlib-all: only {len(data)} bytes of Python source under {root} "
                             f"(this Python ships without most of its sources); use --data FILE or --corpus stdlib")
        return data
    if corpus != "stdlib":
        raise SystemExit(f"--corpus {corpus!r}: choose from {', '.join(CORPORA)}")
    parts = []
    for name in STDLIB_MODULES:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.origin or not spec.origin.endswith(".py"):
            raise SystemExit(f"the standard-library module {name} has no source here; use --data FILE")
        with open(spec.origin, "rb") as f:
            parts.append(f.read())
    return b"\n".join(parts)


def split(data: bytes, val_fraction: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Byte tokens, split into train (first part) and validation (last part)."""
    tokens = torch.frombuffer(bytearray(data), dtype=torch.uint8).long()
    n_val = max(int(len(tokens) * val_fraction), 2)
    return tokens[:-n_val], tokens[-n_val:]


def build_model(arch: str, size: str, seq: int) -> torch.nn.Module:
    """A randomly initialised GPT-2 or Llama from a transformers config (no downloads)."""
    layers, d, heads, _ = SIZES[size]
    if arch == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        return GPT2LMHeadModel(GPT2Config(vocab_size=256, n_positions=seq, n_embd=d, n_layer=layers, n_head=heads,
                                          resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0))
    if arch == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        # SwiGLU's usual 8/3 d, rounded down to a multiple of 32: every sampled weight's reduction
        # axis then holds whole 32-element blocks, which GGUF and MX formats need (160 for d 64).
        return LlamaForCausalLM(LlamaConfig(vocab_size=256, hidden_size=d, intermediate_size=int(d * 8 / 3) // 32 * 32,
                                            num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                                            max_position_embeddings=seq, bos_token_id=0, eos_token_id=0, pad_token_id=0,
                                            tie_word_embeddings=True))
    raise SystemExit(f"--arch {arch!r}: choose gpt2 or llama")


def get_batch(tokens: torch.Tensor, batch: int, seq: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    starts = torch.randint(0, len(tokens) - seq - 1, (batch,), generator=g)
    x = torch.stack([tokens[s : s + seq] for s in starts.tolist()])
    y = torch.stack([tokens[s + 1 : s + seq + 1] for s in starts.tolist()])
    return x, y
