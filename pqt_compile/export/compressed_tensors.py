"""Write a PQT-trained model as a compressed-tensors checkpoint: the Hugging Face directory
(config.json with a `quantization_config`, model.safetensors) that transformers (with the
compressed-tensors package) and vLLM load.

Each sampled nn.Linear weight [N, K] is stored in the compressed-tensors format that holds the
trained grid exactly (`scheme_for`):

    fp4_e2m1, block 32   mxfp4-pack-quantized  weight_packed uint8 [N, K/2] (mx.py, pairs order),
                                               weight_scale uint8 [N, K/32] (E8M0)
    fp8_e4m3, block 32   mxfp8-quantized       weight float8_e4m3fn [N, K] (pack's E4M3 code is
                                               that dtype's bit pattern), weight_scale uint8
    fp6_e2m3, block 32   mxfp6-pack-quantized  weight_packed uint8 [N, 3K/4] (4 codes per 3
                                               bytes, code j at bit 6j), weight_scale uint8
    nvfp4 (block 16)     nvfp4-pack-quantized  weight_packed uint8 [N, K/2] (pairs order),
                                               weight_scale float8_e4m3fn [N, K/16], and
                                               weight_global_scale float32 [1] = 2^-k_t (nvfp4.py)
    int2-int8, block g   pack-quantized        weight_packed int32 [N, ceil(K*B/32)] (element i
      (g divides K),                           at bit i*B of the row's bit stream, stored as
      "row", "tensor"                          q + 2^(B-1)), weight_scale = 2^k in the model's
                                               dtype ([N, K/g], [N, 1] or [1]), weight_shape

Everything else (fp8_e5m2, fp6_e3m2, other fp formats, fp4 with another block, int9+) has no
compressed-tensors format with that grid and is refused. Tensors that are not sampled
(embeddings, norms, biases) and the output head are stored densely in the model's dtype and
listed in `ignore` (a tied head is not stored; the loader ties it again): they hold
`quantize_model`'s values exactly, only uncompressed. Only nn.Linear can be compressed
(compressed-tensors' own rule), so a sampled weight of another module is refused: GPT-2's
Conv1D (with a pointer to GGUF), MoE experts held as one 3-D Parameter, a bare x @ W Parameter.

Needs safetensors (a transformers dependency) to write; compressed-tensors only to load.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import torch

from ..blocks import ROW, TENSOR
from ..config import FUSED_SIBLINGS, PQTConfig, config_or_default
from ..naming import canonical_name, named_parameters, unwrap
from ..quantize import PackedTensor, quantize
from ..reference import sampled_axes
from ..scale_groups import group_tensor_amax
from .codes import GroupedCodes, grouped_codes
from .common import ExportError, atomic_output, check_destination, parameter_at
from .deployed import known_packing
from .mx import MX_BLOCK, NibbleOrder, e8m0_scales, pack_mxfp4, pack_nibbles
from .nvfp4 import pack_nvfp4

__all__ = ["FORMAT_VERSION", "CTSummary", "scheme_for", "compress_linear", "write_compressed_tensors"]

#: The compressed-tensors release whose loader this layout was verified against (written as "version").
FORMAT_VERSION = "0.20.0"
_MX = {"fp4_e2m1": ("mxfp4-pack-quantized", 4), "fp8_e4m3": ("mxfp8-quantized", 8), "fp6_e2m3": ("mxfp6-pack-quantized", 6)}
_HOLDS = ("fp4_e2m1, fp8_e4m3 and fp6_e2m3 with block_size 32 (MXFP4 / MXFP8 / MXFP6), nvfp4, and int2-int8 with a "
          "block_size that divides every input dimension, 'row' or 'tensor'")
_NVFP4 = "nvfp4-pack-quantized"


def scheme_for(config: PQTConfig) -> tuple[str, dict[str, Any]]:
    """(compressed-tensors format, the `weights` QuantizationArgs) that hold `config` exactly;
    ExportError naming what compressed-tensors holds otherwise."""
    fmt, spec = config.format, config.spec
    if spec.two_level:  # NVFP4A16: E4M3 group scales under a float32 global scale
        return _NVFP4, {"num_bits": 4, "type": "float", "symmetric": True, "strategy": "tensor_group", "group_size": 16,
                        "dynamic": False, "scale_dtype": "torch.float8_e4m3fn"}
    if fmt in _MX and config.block_size == MX_BLOCK:
        name, bits = _MX[fmt]
        return name, {"num_bits": bits, "type": "float", "symmetric": True, "strategy": "group", "group_size": MX_BLOCK,
                      "dynamic": False, "scale_dtype": "torch.uint8"}
    if spec.is_int and spec.bits <= 8:
        args: dict[str, Any] = {"num_bits": spec.bits, "type": "int", "symmetric": True, "dynamic": False}
        if config.block_code == ROW:
            args["strategy"] = "channel"
        elif config.block_code == TENSOR:
            args["strategy"] = "tensor"
        else:
            args.update(strategy="group", group_size=config.block_code)
        return "pack-quantized", args
    raise ExportError(f"no compressed-tensors format holds {fmt} with block_size {config.block_size} exactly; it holds "
                      f"{_HOLDS} (GGUF also holds int2-int8 with block_size a multiple of 32)")


def _pack_bits(q: torch.Tensor, bits: int) -> torch.Tensor:
    """Rows of integers in [-2^(B-1), 2^(B-1)) -> int32 words: element i at bit i*B of the row's
    little-endian bit stream (crossing word boundaries when B does not divide 32), offset by 2^(B-1)."""
    rows, k = q.shape
    u = (q.to(torch.int64) + (1 << (bits - 1))) & ((1 << bits) - 1)
    n_words = (k * bits + 31) // 32
    words = torch.zeros(rows, n_words + 1, dtype=torch.int64)  # one spare word for the last spill
    start = torch.arange(k, dtype=torch.int64) * bits
    word, shift = start // 32, start % 32
    words.scatter_add_(1, word.expand(rows, k), (u << shift) & 0xFFFFFFFF)  # bit fields never overlap: add = or
    spills = shift + bits > 32
    if bool(spills.any()):
        words.scatter_add_(1, (word[spills] + 1).expand(rows, -1), u[:, spills] >> (32 - shift[spills]))
    words = words[:, :n_words]
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)  # the same 32 bits, signed


def _int_tensors(g: GroupedCodes, config: PQTConfig, shape: tuple[int, int], dtype: torch.dtype, name: str) -> dict[str, torch.Tensor]:
    # Zero blocks get scale 1: their codes are 0, so any scale decodes them to 0.
    scale = torch.where(g.zero, torch.zeros_like(g.exponents), g.exponents).to(torch.float64).exp2()
    if not torch.equal(scale.to(dtype).to(torch.float64), scale):
        lo, hi = g.exponent_range()
        raise ExportError(f"{name}: block scales 2^{lo}..2^{hi} are not all {dtype} values, which the checkpoint stores "
                          "them in; export the model in float32 or bfloat16")
    scale = scale.to(dtype)
    if config.block_code == TENSOR:  # one scale for the tensor: strategy "tensor" stores it as [1]
        scale = scale.reshape(-1)[:1]
    return {"weight_packed": _pack_bits(g.signed(), g.spec.bits), "weight_scale": scale.contiguous(),
            "weight_shape": torch.tensor(shape, dtype=torch.int64)}


def compress_linear(w: torch.Tensor, config: PQTConfig, name: str = "weight",
                    known: Optional[PackedTensor] = None, tensor_amax: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
    """The compressed-tensors tensors of one nn.Linear weight [N, K] (suffixes of the module
    name: weight_packed / weight / weight_scale / weight_shape), per `scheme_for(config)`;
    `known`: w's packing, as `pack` takes it; `tensor_amax`: NVFP4's tensor-scale group's max |w|."""
    scheme, _ = scheme_for(config)
    n, k = w.shape
    if scheme == "mxfp4-pack-quantized":
        m = pack_mxfp4(w, axis=1, config=config, order=NibbleOrder.PAIRS, name=name, known=known)
        return {"weight_packed": m.packed, "weight_scale": m.scales}
    if scheme == _NVFP4:
        nv = pack_nvfp4(w, axis=1, config=config, name=name, known=known, tensor_amax=tensor_amax)
        # compressed-tensors decodes s_b / weight_global_scale: with 2^-k_t that is s_b 2^k_t exactly.
        return {"weight_packed": pack_nibbles(nv.codes, NibbleOrder.PAIRS), "weight_scale": nv.scales.view(torch.float8_e4m3fn),
                "weight_global_scale": torch.tensor([2.0**-nv.tensor_exponent], dtype=torch.float32)}
    if scheme == "pack-quantized":
        group = k if config.block_code in (ROW, TENSOR) else config.block_code
        if k % group:
            raise ExportError(f"{name}: its input dimension {k} is not a multiple of block_size {group}, which "
                              "compressed-tensors' group strategy needs; train with a block_size that divides it")
        g = grouped_codes(w, axis=1, config=config, group=group, name=name, known=known)
        return _int_tensors(g, config, (n, k), w.dtype, name)
    g = grouped_codes(w, axis=1, config=config, group=MX_BLOCK, name=name, known=known)
    scales = e8m0_scales(g)
    if scheme == "mxfp8-quantized":
        return {"weight": g.codes.view(torch.float8_e4m3fn), "weight_scale": scales}
    c = g.codes.to(torch.int64).reshape(n, k // 4, 4)  # mxfp6: four 6-bit codes in a 24-bit word
    word = c[..., 0] | (c[..., 1] << 6) | (c[..., 2] << 12) | (c[..., 3] << 18)
    packed = torch.stack([(word >> s) & 0xFF for s in (0, 8, 16)], dim=-1).reshape(n, 3 * k // 4)
    return {"weight_packed": packed.to(torch.uint8), "weight_scale": scales}


@dataclass(frozen=True)
class CTSummary:
    """What `write_compressed_tensors` wrote: the directory, the format, the compressed
    modules and the ignored ones, and the quantization_config as written."""

    path: str
    format: str
    compressed: list[str]
    ignore: list[str]
    quantization_config: dict[str, Any]


def _quantization_config(fmt: str, weights: dict[str, Any], ignore: list[str]) -> dict[str, Any]:
    group = {"targets": ["Linear"], "weights": weights, "input_activations": None, "output_activations": None,
             "format": fmt}
    return {"quant_method": "compressed-tensors", "format": fmt, "quantization_status": "compressed",
            "config_groups": {"group_0": group}, "ignore": ignore, "kv_cache_scheme": None,
            "global_compression_ratio": None, "sparsity_config": {}, "transform_config": {}, "version": FORMAT_VERSION}


def _refuse_other_sampled(model: torch.nn.Module, sampled: dict[int, str]) -> None:
    """Refuse a sampled Parameter that is not an nn.Linear's weight (or an embedding's, a tied
    head's, stored dense): GPT-2's Conv1D, MoE experts held as one 3-D Parameter, a bare x @ W
    Parameter. compressed-tensors has no format for them, and storing them dense would look
    deployed in the trained format and not be."""
    others = []
    for mod_name, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            if id(p) in sampled and not (pname == "weight" and isinstance(module, (torch.nn.Linear, torch.nn.Embedding))):
                others.append((sampled[id(p)], type(module).__name__))
    if not others:
        return
    listed = ", ".join(f"{n} (of a {t})" for n, t in others[:6]) + (f" and {len(others) - 6} more" if len(others) > 6 else "")
    if {t for _, t in others} == {"Conv1D"}:
        fix = "export this model --to gguf (GPT-2's Conv1D has no compressed-tensors format)"
    else:
        fix = ("write the packed file instead (pqt_compile.export.save holds every sampled weight), or keep these weights out "
               "of PQT (PQTConfig(exclude=[...])) to store them dense as trained")
    raise ExportError(f"compressed-tensors compresses nn.Linear weights only, and {len(others)} sampled weight(s) are not: "
                      f"{listed}; {fix}")


# NOTE [fused global scales]: vLLM and SGLang load these sibling nn.Linear weights (Llama, Mistral,
# Qwen) as one fused layer and apply the largest of their NVFP4 `weight_global_scale`s to every
# shard; where the siblings' tensor scales differ, those engines decode the others' shards off by a
# power of two. An nvfp4 config trains them under one tensor scale by default
# (PQTConfig.tensor_scale_groups, scale_groups.py), and the writer stores that scale for each; a
# config that gives them their own (tensor_scale_groups=()) is refused here unless
# `per_weight_global_scales` (transformers loads each weight with its own scale, exactly).
def _check_fused_global_scales(tensors: dict[str, torch.Tensor], compressed: list[str]) -> None:
    """Refuse NVFP4 siblings that a fused loader would read with one global scale (NOTE [fused global scales])."""
    done = set(compressed)
    for name in compressed:
        parent, _, leaf = name.rpartition(".")
        for group in FUSED_SIBLINGS:
            if leaf != group[0]:
                continue
            members = [n for n in (f"{parent}.{m}" if parent else m for m in group) if n in done]
            scales = {m: float(tensors[f"{m}.weight_global_scale"]) for m in members}
            if len(set(scales.values())) > 1:
                top = max(scales.values())
                off = ", ".join(f"{m.rpartition('.')[2]} {top / v:g}x too small" for m, v in scales.items() if v != top)
                raise ExportError(
                    f"NVFP4 {', '.join(m.rpartition('.')[2] for m in members)} of {parent or 'the model'} have different "
                    f"tensor scales (weight_global_scale {', '.join(f'{v:g}' for v in scales.values())}); vLLM and SGLang "
                    f"load them as one fused layer with the largest scale, so they would decode {off}. This config "
                    "gives them their own tensor scales (its tensor_scale_groups does not group them): train with "
                    "the default PQTConfig(format='nvfp4'), which shares one scale per fused group, write GGUF "
                    "(llama.cpp applies each tensor's scale), or pass per_weight_global_scales=True "
                    "(--per-weight-global-scales) for loaders that read each weight's scale (transformers)")


def write_compressed_tensors(model: torch.nn.Module, out_dir: str, config: Optional[PQTConfig] = None, *,
                             tokenizer: Any = None, example_args: Optional[tuple] = None,
                             force: bool = False, packed: Optional[Mapping[str, PackedTensor]] = None,
                             per_weight_global_scales: bool = False) -> CTSummary:
    """Write `model` (an HF PreTrainedModel trained with `config`, quantized or not: NVFP4, see `packed`) as a
    compressed-tensors checkpoint directory `out_dir` (built beside it, renamed at the end).

    `tokenizer` (optional) is saved into the directory too; `example_args` finds the sampled
    weights by tracing, as `quantize_model` takes them; `force` replaces an existing `out_dir`;
    `packed`: the sampled weights' packings as read back with the model (`write_gguf` says how).
    Raises ExportError (nothing written) for a format or block size without an exact
    compressed-tensors format, a sampled weight that is not an nn.Linear's, a Linear whose input
    dimension the group size does not divide, an existing `out_dir` without `force`, and NVFP4
    siblings that vLLM fuses whose tensor scales differ, unless `per_weight_global_scales` (NOTE
    [fused global scales]).
    """
    from safetensors.torch import save_file

    config = config_or_default(config, "pqt_compile.export.write_compressed_tensors")
    packed = packed or {}
    fmt, weights_args = scheme_for(config)
    if per_weight_global_scales and fmt != _NVFP4:
        raise ExportError(f"per_weight_global_scales applies to NVFP4 checkpoints only, not format {config.format}")
    check_destination(out_dir, force=force, directory=True)
    if tokenizer is not None and not hasattr(tokenizer, "save_pretrained"):
        raise ExportError(f"tokenizer={tokenizer!r}: give an HF tokenizer object (or None) for a compressed-tensors checkpoint")
    model = unwrap(model)
    if not hasattr(model, "config") or not hasattr(model.config, "save_pretrained"):
        raise ExportError(f"{type(model).__name__} is not a Hugging Face PreTrainedModel; compressed-tensors checkpoints "
                          "are Hugging Face model directories")
    axes = sampled_axes(model, config, example_args)
    params = named_parameters(model)
    sampled = {id(params[n]): n for n in axes}
    shared = group_tensor_amax({n: params[n] for n in axes}, config, nonfinite="refuse")  # NVFP4's tensor-scale groups
    out_emb = model.get_output_embeddings()
    tensors: dict[str, torch.Tensor] = {}
    compressed, ignore = [], []
    _refuse_other_sampled(model, sampled)
    for mod_name, module in model.named_modules():
        name = canonical_name(mod_name)
        if not isinstance(module, torch.nn.Linear):
            continue
        if module is out_emb or id(module.weight) not in sampled or axes[sampled[id(module.weight)]] != 1:
            ignore.append(name)  # stored dense: the head (as llm-compressor does), excluded weights
            continue
        weight_name = sampled[id(module.weight)]
        known = known_packing(packed, weight_name, module.weight)
        for suffix, t in compress_linear(module.weight.detach(), config, weight_name, known, shared.get(weight_name)).items():
            tensors[f"{name}.{suffix}"] = t
        compressed.append(name)
    if not compressed:
        raise ExportError(f"no nn.Linear of {type(model).__name__} is sampled with this config: nothing to compress")
    if fmt == _NVFP4 and not per_weight_global_scales:
        _check_fused_global_scales(tensors, compressed)
    skip = {f"{n}.weight" for n in compressed}
    in_emb = model.get_input_embeddings()
    if out_emb is not None and in_emb is not None and out_emb.weight is in_emb.weight:
        # A tied head is not stored (as save_pretrained does): the loader ties it again.
        skip |= {canonical_name(f"{n}.weight") for n, m in model.named_modules() if m is out_emb}
    for raw_key, t in model.state_dict().items():
        key = canonical_name(raw_key)
        if key in skip:
            continue
        param = parameter_at(model, raw_key)
        if param is not None and id(param) in sampled:  # a sampled weight stored dense (the head): its deployed values
            name = sampled[id(param)]
            t = quantize(param.detach(), axis=axes[name], config=config, known=known_packing(packed, name, param),
                         tensor_amax=shared.get(name))
        tensors[key] = t.detach().contiguous()
    qconfig = _quantization_config(fmt, weights_args, ignore)
    with atomic_output(out_dir, directory=True, force=force) as tmp:
        model.config.save_pretrained(tmp)
        cfg_path = os.path.join(tmp, "config.json")
        with open(cfg_path) as f:
            cfg = json.load(f)
        cfg["quantization_config"] = qconfig
        with open(cfg_path, "w") as f:
            json.dump(cfg, f, indent=2, sort_keys=True)
        generation = getattr(model, "generation_config", None)
        if generation is not None:
            generation.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        save_file(tensors, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
    return CTSummary(out_dir, fmt, compressed, ignore, qconfig)

