"""gpt-oss's MXFP4 checkpoint layout (export/gpt_oss.py): a tiny gpt-oss trained a few PQT steps
with fp4_e2m1 / block 32, written with its experts as blocks + scales, loads in transformers
(dequantised on CPU) to exactly quantize_model's weights."""

import json
import os

import pytest
import torch

import pqt_compile
from pqt_compile import PQTConfig, reference
from pqt_compile.export import ExportError
from pqt_compile.export.gpt_oss import write_gpt_oss_mxfp4
from support.moe_models import tiny_moe, tokens

pytestmark = pytest.mark.third_party  # goes through another library (transformers, compressed-tensors, gguf)

CFG = PQTConfig(format="fp4_e2m1", block_size=32)


def trained_gpt_oss() -> torch.nn.Module:
    """Three PQT steps through the eager reference (the compiled path's math, without a compile),
    with a zero block and a saturating block planted in the experts."""
    m = tiny_moe("gpt_oss", "grouped_mm")
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    for step in range(3):
        loss = reference.run(m, tokens(step), seed=step, config=CFG, use_cache=False).logits.square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
    with torch.no_grad():
        e = m.model.layers[0].mlp.experts
        e.gate_up_proj[1, :32, 3] = 0.0
        e.down_proj[2, :32, 5] = torch.tensor([7.5] + [1.0] * 31)  # amax / 2^k in (6, 8): saturates to 6 2^k
    return m


def test_transformers_loads_the_checkpoint_to_quantize_models_weights(tmp_path):
    from transformers import AutoModelForCausalLM, Mxfp4Config

    m = trained_gpt_oss()
    out = tmp_path / "ckpt"
    summary = write_gpt_oss_mxfp4(m, str(out), CFG)
    assert summary.experts == ["model.layers.0.mlp.experts.down_proj", "model.layers.0.mlp.experts.gate_up_proj"]
    with open(out / "config.json") as f:
        assert json.load(f)["quantization_config"]["quant_method"] == "mxfp4"
    from safetensors.torch import load_file

    sd = load_file(str(out / "model.safetensors"))
    assert sd["model.layers.0.mlp.experts.gate_up_proj_blocks"].shape == (4, 128, 2, 16)  # [E, 2I, H/32, 16]
    assert sd["model.layers.0.mlp.experts.gate_up_proj_scales"].dtype == torch.uint8
    assert "model.layers.0.mlp.experts.gate_up_proj" not in sd
    # Offline, on the CPU: dequantize=True (transformers >= 5.25 otherwise fetches gpt-oss's
    # Triton kernels from the hub for its MXFP4 layers). README, Deploy.
    loaded = AutoModelForCausalLM.from_pretrained(
        str(out), dtype=torch.float32, local_files_only=True, quantization_config=Mxfp4Config(dequantize=True))
    want = pqt_compile.quantize_model(m, CFG)
    got = dict(loaded.named_parameters())
    for n, p in want.named_parameters():
        assert torch.equal(got[n], p), n  # experts dequantised from MXFP4, the rest stored at deployed values
    e = got["model.layers.0.mlp.experts.down_proj"]
    assert e[2, :32, 5].abs().max() == 6.0 * 2.0 ** (torch.floor(torch.log2(torch.tensor(7.5))) - 2)  # saturated


def test_what_the_layout_cannot_hold_is_refused(tmp_path):
    m = tiny_moe("gpt_oss", "grouped_mm")
    with pytest.raises(ExportError, match="fp4_e2m1 in blocks of 32"):
        write_gpt_oss_mxfp4(m, str(tmp_path / "a"), CFG.replace(format="int4"))
    with pytest.raises(ExportError, match="not a multiple of 32"):
        write_gpt_oss_mxfp4(tiny_moe("gpt_oss", "grouped_mm", inter=48), str(tmp_path / "b"), CFG)
    with pytest.raises(ExportError, match="not a gpt-oss model"):
        write_gpt_oss_mxfp4(tiny_moe("mixtral", "grouped_mm"), str(tmp_path / "c"), CFG)
    assert not os.listdir(tmp_path)  # nothing written
