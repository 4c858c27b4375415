"""Write a PQT-trained model as a GGUF file that llama.cpp (and Ollama) load and run.

Every weight the compiler samples is written in the GGUF block type that holds the trained
format exactly (gguf_blocks.py: MXFP4 for fp4_e2m1, Q4_0 / Q5_0 / Q8_0 for int2-int8, block
size 32 or a multiple, NVFP4 for nvfp4), so llama.cpp dequantises it to `quantize_model`'s
values bit for bit. NVFP4 keeps its tensor scale 2^k_t in llama.cpp's separate F32 tensor
`<name>.scale` (shape [1]), which llama.cpp applies to the matmul's result; an embedding lookup
has no such scale, so a sampled token embedding (a tied head) is written dense, holding
`quantize_model`'s values (exact in the model's dtype: they have at most 6 significant bits).
Where llama.cpp would not apply the scale as trained (GPT-2's FFN; an FFN weight with a bias,
on which it aborts) NVFP4 is refused (`_nvfp4_refusal`).
The other tensors are written as they are: vectors (norms, biases) F32, matrices
(embeddings) in the model's dtype (F32, F16 or BF16), which is exact too. Architecture
metadata and tensor names come from gguf_arch.py, the vocabulary from gguf_vocab.py.

Needs the `gguf` package (pip install gguf, or the `export` extra); imported here on use only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Union

import torch

from ..config import PQTConfig, config_or_default
from ..naming import canonical_name, named_parameters, unwrap
from ..quantize import PackedTensor, quantize
from ..reference import sampled_axes
from ..scale_groups import group_tensor_amax
from .common import ExportError, atomic_output, check_destination, parameter_at
from .deployed import known_packing
from .gguf_arch import ArchPlan, arch_plan
from .gguf_blocks import encode_weight, gguf_type_for, nvfp4_blocks
from .nvfp4 import pack_nvfp4
from .gguf_vocab import BYTE_VOCAB_SIZE, add_byte_vocab, add_hf_bpe_vocab, add_no_vocab

__all__ = ["GGUFSummary", "write_gguf", "read_gguf"]

# general.file_type: llama.cpp's name for the type most weights have (informational).
_FILE_TYPE = {"MXFP4": "MOSTLY_MXFP4_MOE", "Q4_0": "MOSTLY_Q4_0", "Q5_0": "MOSTLY_Q5_0", "Q8_0": "MOSTLY_Q8_0",
              "NVFP4": "MOSTLY_NVFP4"}
#: GGUF names whose tensor llama.cpp reads without a `.scale` (an embedding lookup): dense for NVFP4.
_NO_TENSOR_SCALE = ("token_embd.weight",)
_FFN = ("ffn_up", "ffn_gate", "ffn_down")


def _nvfp4_refusal(arch: str, gguf_name: str, written: set[str]) -> Optional[str]:
    """Why llama.cpp would not run `gguf_name` as NVFP4 with its `.scale` as trained (None if it
    would). Found by running the files in llama.cpp (llama-cpp-python 0.3.36, its opt-in engine
    tests): its gpt2 graph passes no tensor scale to the FFN, and its FFN builder aborts
    (GGML_ASSERT) on an NVFP4 weight that has both a tensor scale and a bias."""
    base = gguf_name.rsplit(".", 1)[0]
    kind = base.rsplit(".", 1)[-1]
    if kind not in _FFN:
        return None
    if arch == "gpt2":
        return (f"llama.cpp's gpt2 graph does not apply the NVFP4 tensor scale of {kind} (llama-cpp-python 0.3.36): "
                "the file would run with that weight 2^-k_t too large. Keep the MLP out of PQT "
                r"(PQTConfig(exclude=(r'mlp\.c_(fc|proj)',))), or train fp4_e2m1 (MXFP4)")
    if base + ".bias" in written:
        return (f"llama.cpp aborts on an NVFP4 {kind} weight that has both a tensor scale and a bias (GGML_ASSERT in its "
                "FFN builder, llama-cpp-python 0.3.36). Export --to compressed-tensors, or keep the MLP out of PQT")
    return None
_DENSE = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}

#: None, "bytes", "none", or an HF fast tokenizer (see write_gguf).
Tokenizer = Union[str, Any, None]


@dataclass(frozen=True)
class GGUFSummary:
    """What `write_gguf` wrote.

    Attributes:
        path: the file.
        arch: llama.cpp's architecture name.
        types: {GGUF tensor name: GGUF type name}, in file order.
        vocab: "bytes", "none" or "hf-bpe".
        bytes: the file size.
    """

    path: str
    arch: str
    types: dict[str, str]
    vocab: str
    bytes: int


def _add_vocab(writer: Any, model: torch.nn.Module, plan: ArchPlan, vocab: Tokenizer) -> str:
    n_vocab = int(model.config.vocab_size)
    if vocab is None:
        if n_vocab != BYTE_VOCAB_SIZE:
            raise ExportError(f"the model has {n_vocab} tokens: pass its HF tokenizer (tokenizer=..., --tokenizer DIR), "
                              "or tokenizer='none' to run llama.cpp on token ids; 'bytes' fits 256-token byte models only")
        vocab = "bytes"
    if vocab == "bytes":
        add_byte_vocab(writer, n_vocab, plan.bos, plan.eos)
        return "bytes"
    if vocab == "none":
        add_no_vocab(writer)
        return "none"
    if isinstance(vocab, str):
        raise ExportError(f"tokenizer={vocab!r}: give 'bytes', 'none' or an HF tokenizer object")
    add_hf_bpe_vocab(writer, vocab, n_vocab)
    return "hf-bpe"


def _dense_array(t: torch.Tensor) -> tuple[Any, Optional[str]]:
    """(numpy array, raw GGML type name or None) of a tensor written unquantized."""
    t = t.detach().cpu().contiguous()
    if t.dim() <= 1 or t.dtype not in _DENSE:  # ggml wants norms and biases in F32 (exact from any float dtype)
        return t.float().numpy(), None
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16: hand gguf the raw bytes
        return t.view(torch.uint8).numpy(), "BF16"
    return t.numpy(), None


def write_gguf(model: torch.nn.Module, path: str, config: Optional[PQTConfig] = None, *, tokenizer: Tokenizer = None,
               gguf_type: Optional[str] = None, example_args: Optional[tuple] = None, force: bool = False,
               packed: Optional[Mapping[str, PackedTensor]] = None) -> GGUFSummary:
    """Write `model` (trained with `config`; quantized or not: NVFP4, see `packed`) to the GGUF file `path`.

    Args:
        model: an HF `GPT2LMHeadModel` or `LlamaForCausalLM` (a torch.compile wrapper is looked through).
        path: the output file; written under a temporary name beside it and renamed at the end.
        config: the PQT config the model was trained with (default PQTConfig()).
        tokenizer: the vocabulary: None (bytes for a 256-token model), "bytes", "none" (llama.cpp
            runs on token ids only), or an HF fast tokenizer of GPT-2's kind (gguf_vocab.py).
        gguf_type: the GGUF type for the sampled weights (default: gguf_blocks.DEFAULT_GGUF_TYPE).
        example_args: inputs to trace the forward with, to find the sampled weights by the
            compiler's graph rules instead of by module type (as `quantize_model` takes them).
        force: replace an existing `path`.
        packed: the sampled weights' packings by name, as read back with the model
            (`export.read_packed` of the file it was loaded from): a weight that holds exactly its
            packing's values is written from its codes (quantize.py NOTE [re-quantizing NVFP4]).

    Raises ExportError (nothing written) for a format, block size, architecture, weight shape,
    block scale or vocabulary that the file cannot hold exactly, and for an existing `path`
    without `force`.
    """
    import gguf

    config = config_or_default(config, "pqt_compile.export.write_gguf")
    packed = packed or {}
    qtype = gguf_type_for(config, gguf_type)
    check_destination(path, force=force, directory=False)
    model = unwrap(model)
    plan = arch_plan(model)
    axes = sampled_axes(model, config, example_args)
    if not axes:  # a file of dense tensors only would pass for a quantized export
        raise ExportError(f"no weight of {type(model).__name__} is sampled with this config (its include/exclude "
                          "patterns admit none): nothing to quantize")
    params = named_parameters(model)
    # Sampled weights by object: a tied weight is sampled under one of its names, and must be
    # recognised under the state_dict key the plan maps (token_embd, not lm_head).
    sampled = {id(params[name]): (name, axis) for name, axis in axes.items()}
    shared = group_tensor_amax({n: params[n] for n in axes}, config, nonfinite="refuse")  # NVFP4's tensor-scale groups
    out_emb, in_emb = model.get_output_embeddings(), model.get_input_embeddings()
    tied = out_emb is not None and in_emb is not None and out_emb.weight is in_emb.weight

    tensors: list[tuple[str, Any, Optional[str]]] = []
    written = {plan.tensors[canonical_name(k)].name for k in model.state_dict() if canonical_name(k) in plan.tensors}
    for raw_key, t in model.state_dict().items():
        key = canonical_name(raw_key)
        if key not in plan.tensors:
            if plan.is_ignored(key):
                continue
            raise ExportError(f"{type(model).__name__}: the GGUF writer has no llama.cpp name for tensor {key!r}")
        if key == "lm_head.weight" and tied:
            continue  # llama.cpp uses token_embd as the output when output.weight is absent
        target = plan.tensors[key]
        param = parameter_at(model, raw_key)
        if param is not None and id(param) in sampled and qtype == "NVFP4" and target.name in _NO_TENSOR_SCALE:
            name, axis = sampled[id(param)]
            deployed = quantize(param.detach(), axis=axis, config=config, known=known_packing(packed, name, param),
                                tensor_amax=shared.get(name))
            tensors.append((target.name, *_dense_array(target.dense(deployed))))
        elif param is not None and id(param) in sampled:
            name, axis = sampled[id(param)]
            if qtype == "NVFP4":
                why = _nvfp4_refusal(plan.arch, target.name, written)
                if why is not None:
                    raise ExportError(f"{name}: {why}")
                nv = pack_nvfp4(param, axis=axis, config=config, name=name, known=known_packing(packed, name, param),
                                tensor_amax=shared.get(name))
                data = nvfp4_blocks(nv, name)
            else:
                data = encode_weight(param, axis=axis, config=config, qtype=qtype, name=name,
                                     known=known_packing(packed, name, param))
            if data.shape[0] != target.dense(t).shape[0]:
                raise ExportError(f"{name}: sampled along axis {axis}, which is not the reduction axis of llama.cpp's "
                                  f"layout for {target.name}")
            tensors.append((target.name, target.rows(data).contiguous().cpu().numpy(), qtype))
            if qtype == "NVFP4":  # llama.cpp's tensor scale: `<base>.scale`, F32 [1]
                tensors.append((target.name.rsplit(".", 1)[0] + ".scale", nv.tensor_scale.numpy(), None))
        else:
            tensors.append((target.name, *_dense_array(target.dense(t))))

    types: dict[str, str] = {}
    with atomic_output(path, directory=False, force=force) as tmp:
        writer = gguf.GGUFWriter(tmp, plan.arch)
        writer.add_name(str(getattr(model.config, "name_or_path", "") or f"pqt-{plan.arch}"))
        for key, value in {**plan.metadata, "vocab_size": int(model.config.vocab_size)}.items():
            if isinstance(value, float):
                writer.add_float32(f"{plan.arch}.{key}", value)
            else:
                writer.add_uint32(f"{plan.arch}.{key}", int(value))
        writer.add_file_type(int(getattr(gguf.LlamaFileType, _FILE_TYPE[qtype])))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        vocab_kind = _add_vocab(writer, model, plan, tokenizer)
        for name, array, raw in tensors:
            writer.add_tensor(name, array, raw_dtype=None if raw is None else gguf.GGMLQuantizationType[raw])
            types[name] = raw or ("F16" if str(array.dtype) == "float16" else "F32")
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return GGUFSummary(path=path, arch=plan.arch, types=types, vocab=vocab_kind, bytes=os.path.getsize(path))


def read_gguf(path: str, *, apply_scales: bool = True) -> dict[str, torch.Tensor]:
    """{tensor name: float32 values} of a GGUF file, dequantised by the gguf package's reader
    (which mirrors llama.cpp's dequantisers), in llama.cpp's layout (rows = outputs).

    With `apply_scales`, an NVFP4 tensor `<base>.weight` is multiplied by its `<base>.scale` (as
    llama.cpp applies it to the matmul's result) and the `.scale` entries are left out; without,
    every tensor comes back as stored."""
    import gguf
    from gguf.quants import dequantize

    out, types = {}, {}
    for t in gguf.GGUFReader(path).tensors:
        shape = [int(n) for n in reversed(t.shape)]
        out[t.name] = torch.from_numpy(dequantize(t.data, t.tensor_type).astype("float32").reshape(shape).copy())
        types[t.name] = t.tensor_type
    if apply_scales:
        for name in [n for n in out if n.endswith(".scale") and n[: -len(".scale")] + ".weight" in out]:
            weight = name[: -len(".scale")] + ".weight"
            if types[weight] == gguf.GGMLQuantizationType.NVFP4:
                out[weight] = out[weight] * out.pop(name)
    return out
