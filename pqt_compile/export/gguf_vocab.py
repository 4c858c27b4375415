"""The vocabulary part of a GGUF file (tokenizer.ggml.*): what llama.cpp tokenizes text with.

Three kinds:

- `bytes`: a model whose token ids are raw bytes (vocabulary 256, as pqt_compile's main job
  trains). Written as a byte-level BPE vocabulary ("gpt2" model) of the 256 byte symbols in
  byte order and no merge that can ever apply, so llama.cpp's tokenizer maps UTF-8 text to its
  bytes and any ids back to bytes. (A lone byte 128-255 is not valid UTF-8 text; llama.cpp
  tokenizes it as U+FFFD, which is why feeding ids is the exact way to evaluate such a model.)
- an HF byte-level BPE tokenizer with GPT-2's pre-tokenizer (`tokenizers` ByteLevel with its
  regex): tokens, token types, merges and special ids, pre-tokenizer "gpt-2". Other
  tokenizers (SentencePiece, Llama 3's regex) need llama.cpp's convert_hf_to_gguf.py, which
  identifies pre-tokenizers by hashing their output; they are refused with that advice.
- `none`: no tokenizer (tokenizer.ggml.model "none"); llama.cpp then runs on token ids only.

`writer` is a `gguf.GGUFWriter`; gguf is imported by the caller (gguf.py), not here.
"""

from __future__ import annotations

import json
from typing import Any, Optional

from .common import ExportError

__all__ = ["BYTE_VOCAB_SIZE", "byte_symbols", "add_byte_vocab", "add_no_vocab", "add_hf_bpe_vocab"]

#: The vocabulary size of a byte-token model.
BYTE_VOCAB_SIZE = 256
# A merge of two 2-character symbols: llama.cpp's BPE loader wants a non-empty merges list (and
# gguf-py drops an empty array), but a byte vocabulary has only 1-character symbols, so this
# merge never applies.
_INERT_MERGE = "\u0100\u0100 \u0100\u0100"


def byte_symbols() -> list[str]:
    """The byte-level BPE alphabet: byte b -> one printable character (bytes that are printable
    Latin-1 map to themselves, the others to 256 + n in byte order). The same table that GPT-2's
    tokenizer, `tokenizers`' ByteLevel and llama.cpp's BPE decoder use."""
    printable = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAC + 1)) | set(range(0xAE, 0xFF + 1))
    symbols, shifted = [], 0
    for b in range(256):
        if b in printable:
            symbols.append(chr(b))
        else:
            symbols.append(chr(256 + shifted))
            shifted += 1
    return symbols


def add_byte_vocab(writer: Any, n_vocab: int, bos: Optional[int], eos: Optional[int]) -> None:
    """Write the byte vocabulary (see the module docstring); the model must have 256 token rows."""
    import gguf

    if n_vocab != BYTE_VOCAB_SIZE:
        raise ExportError(f"a byte vocabulary needs vocab_size {BYTE_VOCAB_SIZE}, the model has {n_vocab}; "
                          "pass its HF tokenizer, or vocab='none'")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(byte_symbols())
    writer.add_token_types([gguf.TokenType.NORMAL] * BYTE_VOCAB_SIZE)
    writer.add_token_merges([_INERT_MERGE])
    for kind, token_id, add in (("bos", bos, writer.add_bos_token_id), ("eos", eos, writer.add_eos_token_id)):
        if isinstance(token_id, (list, tuple)):  # Llama 3's configs list several EOS ids
            raise ExportError(f"model.config.{kind}_token_id is {list(token_id)}, but a GGUF holds one {kind.upper()} id; "
                              f"set model.config.{kind}_token_id to the one to write")
        if token_id is not None:
            add(int(token_id))
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)


def add_no_vocab(writer: Any) -> None:
    """No tokenizer: llama.cpp sizes the vocabulary from {arch}.vocab_size and runs on ids."""
    writer.add_tokenizer_model("none")


def _pre_tokenizers(spec: dict) -> list[dict]:
    pre = spec.get("pre_tokenizer") or {}
    return list(pre.get("pretokenizers", [])) if pre.get("type") == "Sequence" else [pre]


def add_hf_bpe_vocab(writer: Any, tokenizer: Any, n_vocab: int) -> None:
    """Write an HF fast tokenizer of GPT-2's kind (byte-level BPE) as a llama.cpp vocabulary of
    `n_vocab` entries (the model's embedding rows; rows beyond the tokenizer are UNUSED pads).

    Preconditions: `tokenizer` is a transformers PreTrainedTokenizerFast whose model is BPE
    with merges and whose pre-tokenizer is one ByteLevel with GPT-2's regex and no prefix space.
    """
    import gguf

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ExportError(f"{type(tokenizer).__name__} is not a fast (tokenizers-backed) tokenizer; load it with "
                          "AutoTokenizer.from_pretrained(..., use_fast=True)")
    spec = json.loads(backend.to_str())
    model = spec.get("model") or {}
    pres = _pre_tokenizers(spec)
    gpt2_kind = (len(pres) == 1 and pres[0].get("type") == "ByteLevel" and pres[0].get("use_regex", True)
                 and not pres[0].get("add_prefix_space", False))
    if model.get("type") != "BPE" or not gpt2_kind:
        raise ExportError("the GGUF writer's vocabulary handles byte-level BPE tokenizers with GPT-2's pre-tokenizer only; "
                          "for this tokenizer write vocab='none' and convert the vocabulary with llama.cpp's "
                          "convert_hf_to_gguf.py, or use its converter for the whole model")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    if not merges:
        raise ExportError("the tokenizer has no merges; for a pure byte vocabulary use vocab='bytes'")
    n_tok = len(tokenizer)
    if n_tok > n_vocab:
        raise ExportError(f"the tokenizer has {n_tok} tokens but the model only {n_vocab} embedding rows")
    added = {t.content: t.special for t in tokenizer.added_tokens_decoder.values()}
    tokens, types = [], []
    for i in range(n_vocab):
        token = tokenizer.convert_ids_to_tokens(i) if i < n_tok else None
        if token is None:  # past the tokenizer, or a hole in its ids
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif token in added:
            tokens.append(token)
            types.append(gguf.TokenType.CONTROL if added[token] else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(token)
            types.append(gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for kind, add in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id),
                      ("unk", writer.add_unk_token_id), ("pad", writer.add_pad_token_id)):
        token_id = getattr(tokenizer, f"{kind}_token_id", None)
        if token_id is not None:
            add(int(token_id))
    writer.add_add_bos_token(bool(getattr(tokenizer, "add_bos_token", False)))
    writer.add_add_eos_token(False)
