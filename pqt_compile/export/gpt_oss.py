"""gpt-oss's own MXFP4 checkpoint: the experts as `*_blocks` + `*_scales`, the rest dense.

gpt-oss stores each expert weight (`mlp.experts.gate_up_proj` [E, H, 2I], `down_proj` [E, I, H],
contracted along axis 1) as
    <name>_blocks  uint8 [E, N, K/32, 16]   two E2M1 codes a byte, element 2j in the low nibble
    <name>_scales  uint8 [E, N, K/32]       E8M0: 2^(byte - 127)
with N the output and K the reduction axis: blocks of 32 along the Parameter's axis 1, which is
pqt's block axis for these weights (moe.expert_axes). So a model trained with fp4_e2m1 / block 32
is written through mx.pack_mxfp4 as it stands, and transformers' MXFP4 loader (which dequantises
on a machine without its GPU kernels) restores `quantize_model`'s values bit for bit. Every other
tensor is stored dense, sampled weights at their deployed (round-to-nearest) values; the
`quantization_config` lists them in `modules_to_not_convert` as gpt-oss's own checkpoints do.

Not transformers' own quantiser: its scale is 2^ceil(log2(amax / 6)) (no saturation) and it rounds
ties away from zero, so re-quantising our weights with it would not give these bytes.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Mapping, Optional

import torch

from ..config import PQTConfig, config_or_default
from ..moe import experts_modules
from ..naming import canonical_name, named_parameters, unwrap
from ..quantize import PackedTensor, quantize
from ..reference import sampled_axes
from .common import ExportError, atomic_output, check_destination, parameter_at
from .mx import MX_BLOCK, NibbleOrder, pack_mxfp4

__all__ = ["write_gpt_oss_mxfp4", "GptOssSummary"]

_NOT_CONVERTED = ["model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]


@dataclass(frozen=True)
class GptOssSummary:
    """What `write_gpt_oss_mxfp4` wrote: the directory and the expert weights packed as MXFP4."""

    path: str
    experts: list[str]


def write_gpt_oss_mxfp4(model: torch.nn.Module, out_dir: str, config: Optional[PQTConfig] = None, *,
                        force: bool = False, packed: Optional[Mapping[str, PackedTensor]] = None) -> GptOssSummary:
    """Write a transformers GptOssForCausalLM trained with `config` (fp4_e2m1, block 32) as a
    checkpoint directory in gpt-oss's MXFP4 layout (see the module docstring). ExportError, with
    nothing written, for another model, format or block size, an expert reduction axis that is
    not a multiple of 32, or an existing `out_dir` without `force`. `packed`: the sampled weights'
    packings as read back with the model (`write_gguf` says how)."""
    from safetensors.torch import save_file

    config = config_or_default(config, "pqt_compile.export.write_gpt_oss_mxfp4", PQTConfig(format="fp4_e2m1", block_size=32))
    packed = packed or {}
    if config.format != "fp4_e2m1" or config.block_size != MX_BLOCK:
        raise ExportError(f"gpt-oss's MXFP4 checkpoint holds fp4_e2m1 in blocks of 32; this model was trained for "
                          f"{config.format} / block {config.block_size}: train with PQTConfig(format='fp4_e2m1', "
                          "block_size=32), or export --to gguf or compressed-tensors")
    check_destination(out_dir, force=force, directory=True)
    model = unwrap(model)
    if getattr(getattr(model, "config", None), "model_type", None) != "gpt_oss":
        raise ExportError(f"{type(model).__name__} is not a gpt-oss model (config.model_type 'gpt_oss')")
    axes = sampled_axes(model, config)
    params = named_parameters(model)
    experts: dict[int, str] = {}
    for mod_name, (module, _) in experts_modules(model).items():
        for pname, p in module.named_parameters(recurse=False):
            name = canonical_name(f"{mod_name}.{pname}")
            if p.dim() != 3:
                continue
            if axes.get(name) != 1:
                raise ExportError(f"{name} is not sampled along axis 1 (excluded?); gpt-oss's checkpoint stores every "
                                  "expert weight as MXFP4: train it with PQT or export --to compressed-tensors")
            if p.shape[1] % MX_BLOCK:
                raise ExportError(f"{name} {tuple(p.shape)}: its reduction axis ({p.shape[1]}) is not a multiple of 32, "
                                  "which gpt-oss's MXFP4 layout needs (no partial block)")
            experts[id(params[name])] = name
    if not experts:
        raise ExportError(f"{type(model).__name__} has no expert weights to write as MXFP4")
    tensors: dict[str, torch.Tensor] = {}
    for raw_key, t in model.state_dict().items():
        key = canonical_name(raw_key)
        param = parameter_at(model, raw_key)
        if param is not None and id(param) in experts:
            mx = pack_mxfp4(param.detach(), axis=1, config=config, order=NibbleOrder.PAIRS, name=key,
                            known=packed.get(experts[id(param)]))
            tensors[f"{key}_blocks"] = mx.blocks().contiguous()
            tensors[f"{key}_scales"] = mx.scales.contiguous()
            continue
        if param is not None and canonical_name(raw_key) in axes:  # sampled, stored dense: deployed values
            t = quantize(param.detach(), axis=axes[key], config=config, known=packed.get(key))
        tensors[key] = t.detach().contiguous()
    with atomic_output(out_dir, directory=True, force=force) as tmp:
        model.config.save_pretrained(tmp)
        cfg_path = os.path.join(tmp, "config.json")
        with open(cfg_path) as f:
            cfg = json.load(f)
        cfg["quantization_config"] = {"quant_method": "mxfp4", "modules_to_not_convert": _NOT_CONVERTED}
        with open(cfg_path, "w") as f:
            json.dump(cfg, f, indent=2, sort_keys=True)
        save_file(tensors, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
    return GptOssSummary(out_dir, sorted(experts.values()))
