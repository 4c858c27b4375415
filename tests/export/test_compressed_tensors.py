"""compressed-tensors export, checked with the real loader: transformers + compressed-tensors
load the directory on CPU (dequantising), every weight equals quantize_model's bit for bit,
the logits equal the quantized model's, generate() runs; and the refusals."""

import copy
import json
import math
import os
import sys
import warnings

import pytest
import torch

import pqt_compile
from models import tiny_gpt2, tiny_llama
from pqt_compile import PQTConfig
from pqt_compile.export import ExportError, write_compressed_tensors

if sys.version_info < (3, 11):  # compressed-tensors needs Python >= 3.11 (the test extra skips it there)
    pytest.skip("compressed-tensors needs Python >= 3.11", allow_module_level=True)
import compressed_tensors  # noqa: E402,F401  the test extra installs it: a missing package fails, not skips

pytestmark = pytest.mark.third_party  # goes through another library (transformers, compressed-tensors, gguf)

# (format, block, tied head, compressed-tensors format): each exact mapping once, tied and
# untied heads alternating.
CASES = [
    ("fp4_e2m1", 32, True, "mxfp4-pack-quantized"),
    ("fp4_e2m1", 32, False, "mxfp4-pack-quantized"),
    ("fp8_e4m3", 32, False, "mxfp8-quantized"),
    ("fp6_e2m3", 32, True, "mxfp6-pack-quantized"),
    ("int4", 32, False, "pack-quantized"),
    ("int8", 64, True, "pack-quantized"),
    ("int3", 32, True, "pack-quantized"),  # 3-bit codes cross the int32 words
    ("int4", "row", True, "pack-quantized"),  # strategy channel
    ("int8", "tensor", False, "pack-quantized"),  # strategy tensor
    ("nvfp4", 16, False, "nvfp4-pack-quantized"),  # E4M3 group scales, weight_global_scale 2^-k_t
]


@pytest.fixture(scope="module")
def llamas():
    return {tie: tiny_llama(tie=tie) for tie in (True, False)}


def _load(path: str) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transformers' notes on run_compressed and the like
        return AutoModelForCausalLM.from_pretrained(
            path, quantization_config=CompressedTensorsConfig(dequantize=True), dtype=torch.float32).eval()


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().float().contiguous().view(torch.int32)


@pytest.mark.parametrize("fmt,block,tie,ct_format", CASES)
def test_transformers_loads_quantize_models_weights_bit_for_bit(tmp_path, llamas, fmt, block, tie, ct_format):
    cfg = PQTConfig(format=fmt, block_size=block)
    model = llamas[tie]
    want = pqt_compile.quantize_model(copy.deepcopy(model), cfg)
    out = str(tmp_path / "ckpt")
    # NVFP4: q/k/v and gate/up under one tensor scale each (the default tensor_scale_groups), as
    # quantize_model rounds them (compressed_tensors.py NOTE [fused global scales])
    summary = write_compressed_tensors(model, out, cfg)
    assert summary.format == ct_format and len(summary.compressed) == 2 * 7 and summary.ignore == ["lm_head"]
    with open(os.path.join(out, "config.json")) as f:
        assert json.load(f)["quantization_config"]["format"] == ct_format

    loaded = _load(out)
    got = dict(loaded.named_parameters())
    assert set(got) == {n for n, _ in want.named_parameters()}
    for name, p in want.named_parameters():
        assert torch.equal(_bits(got[name]), _bits(p)), name
    assert (loaded.lm_head.weight is loaded.model.embed_tokens.weight) == tie
    tokens = torch.randint(0, 256, (1, 12))
    with torch.no_grad():
        assert torch.equal(loaded(tokens).logits, want(tokens).logits)
    generated = loaded.generate(tokens[:, :4], max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert generated.shape == (1, 8)


def test_layout_of_a_compressed_linear(tmp_path, llamas):
    from safetensors import safe_open

    out = str(tmp_path / "ckpt")
    write_compressed_tensors(llamas[True], out, PQTConfig(format="fp4_e2m1"))
    with safe_open(os.path.join(out, "model.safetensors"), "pt") as f:
        q = {k.rsplit(".", 1)[1]: f.get_tensor(k) for k in f.keys() if k.startswith("model.layers.0.self_attn.q_proj.")}
        assert "lm_head.weight" not in f.keys()  # tied: the loader ties it again
    assert q["weight_packed"].dtype == torch.uint8 and q["weight_packed"].shape == (64, 32)
    assert q["weight_scale"].dtype == torch.uint8 and q["weight_scale"].shape == (64, 2)
    assert int(q["weight_scale"][1, 1]) == 0  # tiny_llama zeroes this block: scale byte 0, codes 0


def test_layout_of_an_nvfp4_linear(tmp_path, llamas):
    from safetensors import safe_open

    out = str(tmp_path / "ckpt")
    cfg = PQTConfig(format="nvfp4", tensor_scale_groups=())  # q_proj's own tensor scale
    write_compressed_tensors(llamas[True], out, cfg, per_weight_global_scales=True)
    name = "model.layers.0.self_attn.q_proj"
    with safe_open(os.path.join(out, "model.safetensors"), "pt") as f:
        q = {k.rsplit(".", 1)[1]: f.get_tensor(k) for k in f.keys() if k.startswith(name + ".")}
    assert q["weight_packed"].dtype == torch.uint8 and q["weight_packed"].shape == (64, 32)
    assert q["weight_scale"].dtype == torch.float8_e4m3fn and q["weight_scale"].shape == (64, 4)
    assert q["weight_global_scale"].dtype == torch.float32 and q["weight_global_scale"].shape == (1,)
    assert float(q["weight_scale"][1, 2].float()) == 0.0  # tiny_llama zeroes this block: scale 0, codes 0
    w = dict(llamas[True].named_parameters())[name + ".weight"].detach()
    # the global scale is the inverse power of two of the tensor scale: 2688 2^k_t >= amax > 1344 2^k_t
    s_t = 1 / float(q["weight_global_scale"])
    assert math.log2(s_t).is_integer() and 1344 * s_t < float(w.abs().max()) <= 2688 * s_t
    lo, hi = q["weight_packed"] & 15, q["weight_packed"] >> 4  # element 2i in the low nibble
    codes = torch.stack([lo, hi], -1).reshape(64, 64).long()
    values = torch.tensor([0, .5, 1, 1.5, 2, 3, 4, 6])[codes & 7] * torch.where(codes >= 8, -1.0, 1.0)
    decoded = values * q["weight_scale"].float().repeat_interleave(16, 1) * s_t
    assert torch.equal(decoded, pqt_compile.quantize(w, axis=1, config=cfg))


def test_tokenizer_is_saved_with_the_checkpoint(tmp_path, llamas):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models as tok_models

    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(tok_models.WordLevel({"a": 0, "b": 1, "<unk>": 2}, "<unk>")))
    out = str(tmp_path / "ckpt")
    write_compressed_tensors(llamas[True], out, PQTConfig(format="int4"), tokenizer=tok)
    assert AutoTokenizer.from_pretrained(out).convert_tokens_to_ids("b") == 1


@pytest.mark.parametrize("config,msg", [
    (PQTConfig(format="fp8_e5m2"), "no compressed-tensors format holds fp8_e5m2"),
    (PQTConfig(format="fp4_e2m1", block_size=64), "no compressed-tensors format holds fp4_e2m1 with block_size 64"),
    (PQTConfig(format="int12"), "no compressed-tensors format holds int12"),
    (PQTConfig(format="int4", block_size=128), r"q_proj.weight: its input dimension 64 is not a multiple of block_size 128"),
])
def test_formats_compressed_tensors_cannot_hold_are_refused(tmp_path, llamas, config, msg):
    with pytest.raises(ExportError, match=msg):
        write_compressed_tensors(llamas[True], str(tmp_path / "ckpt"), config)
    assert list(tmp_path.iterdir()) == []


def test_models_compressed_tensors_cannot_hold_are_refused(tmp_path, llamas):
    with pytest.raises(ExportError, match=r"not: transformer\.h\.0\.attn\.c_attn\.weight \(of a Conv1D\).*--to gguf"):
        write_compressed_tensors(tiny_gpt2(), str(tmp_path / "ckpt"), PQTConfig(format="int4"))
    with pytest.raises(ExportError, match="input dimension 168 is not a multiple of block_size 32"):
        write_compressed_tensors(tiny_llama(intermediate=168), str(tmp_path / "ckpt"), PQTConfig(format="int4"))
    with pytest.raises(ExportError, match=r"reduction axis has 168 elements, not a multiple of 32"):
        write_compressed_tensors(tiny_llama(intermediate=168), str(tmp_path / "ckpt"), PQTConfig(format="fp4_e2m1"))
    with pytest.raises(ExportError, match=r"down_proj.weight: cannot store nvfp4 blocks: its reduction axis has 168"):
        write_compressed_tensors(tiny_llama(intermediate=168), str(tmp_path / "ckpt"), PQTConfig(format="nvfp4"))
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "ckpt").mkdir()
    with pytest.raises(ExportError, match="exists"):
        write_compressed_tensors(llamas[True], str(tmp_path / "ckpt"), PQTConfig(format="int4"))


def test_moe_experts_held_as_one_parameter_are_refused_not_written_dense(tmp_path):
    from support.moe_models import tiny_moe

    m = tiny_moe("mixtral", "batched_mm")
    # Before: the experts (an MoE's bulk) were stored dense in fp32, in no list and with no word.
    with pytest.raises(ExportError, match=r"2 sampled weight\(s\) are not: model\.layers\.0\.mlp\.experts\.gate_up_proj "
                                          r"\(of a MixtralExperts\), model\.layers\.0\.mlp\.experts\.down_proj .*export\.save"):
        write_compressed_tensors(m, str(tmp_path / "ckpt"), PQTConfig(format="fp4_e2m1"))
    assert list(tmp_path.iterdir()) == []
    excluded = PQTConfig(format="fp4_e2m1", exclude=("experts",))  # the fix it names: stored dense as trained
    summary = write_compressed_tensors(m, str(tmp_path / "ckpt"), excluded)
    assert "model.layers.0.self_attn.q_proj" in summary.compressed


def test_nvfp4_siblings_share_one_global_scale_by_default(tmp_path, llamas):
    """NOTE [fused global scales]: vLLM and SGLang read q/k/v (gate/up) with one weight_global_scale.
    By default (PQTConfig(format="nvfp4").tensor_scale_groups) each fused group is stored under the
    scale its max |w| gives, whatever the members' own: here v_proj is 16x larger than q and k, and
    gate_proj 8x smaller than up_proj, so their own scales would differ."""
    from safetensors import safe_open

    model = copy.deepcopy(llamas[False])
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.v_proj.weight.mul_(16.0)
            layer.mlp.gate_proj.weight.div_(8.0)
    cfg = PQTConfig(format="nvfp4")
    out = str(tmp_path / "ckpt")
    write_compressed_tensors(model, out, cfg)
    params = dict(model.named_parameters())
    with safe_open(os.path.join(out, "model.safetensors"), "pt") as f:
        scales = {k.removesuffix(".weight_global_scale"): float(f.get_tensor(k)) for k in f.keys()
                  if k.endswith(".weight_global_scale")}
    for i in range(2):
        for group in (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj")):
            parent = f"model.layers.{i}.{'self_attn' if group[0] == 'q_proj' else 'mlp'}"
            got = {scales[f"{parent}.{m}"] for m in group}
            amax = max(float(params[f"{parent}.{m}.weight"].abs().max()) for m in group)
            assert len(got) == 1 and 1344 < amax * got.pop() <= 2688, (parent, group)  # the group amax's 2^-k_t
        assert scales[f"model.layers.{i}.self_attn.o_proj"] != scales[f"model.layers.{i}.self_attn.q_proj"]
    # The stored weights are quantize_model's, which rounds each group under its shared scale.
    want = dict(pqt_compile.quantize_model(copy.deepcopy(model), cfg).named_parameters())
    got = dict(_load(out).named_parameters())
    for name in params:
        assert torch.equal(_bits(got[name]), _bits(want[name])), name


def test_nvfp4_siblings_with_their_own_scales_are_refused(tmp_path, llamas):
    """A config that gives each weight its own tensor scale (tensor_scale_groups=()): where the
    siblings' scales differ, vLLM's fused layer would decode some shards a power of two off, with
    no word. Refused, naming the shards; same-scale siblings are written, and
    per_weight_global_scales writes the others for loaders that read each weight's scale."""
    model = copy.deepcopy(llamas[False])
    attn = model.model.layers[0].self_attn
    with torch.no_grad():
        for m in (attn.k_proj, attn.v_proj):  # q/k/v under one tensor scale
            m.weight.copy_(m.weight / m.weight.abs().max() * attn.q_proj.weight.abs().max())
        for layer in model.model.layers:  # gate/up too
            layer.mlp.up_proj.weight.copy_(layer.mlp.gate_proj.weight[: layer.mlp.up_proj.weight.shape[0]])
        for layer in model.model.layers[1:]:
            for m in (layer.self_attn.k_proj, layer.self_attn.v_proj):
                m.weight.copy_(m.weight / m.weight.abs().max() * layer.self_attn.q_proj.weight.abs().max())
    cfg = PQTConfig(format="nvfp4", tensor_scale_groups=())
    write_compressed_tensors(model, str(tmp_path / "same"), cfg)  # one scale per fused group: written
    with torch.no_grad():
        attn.v_proj.weight.mul_(4.0)
    with pytest.raises(ExportError, match=r"q_proj, k_proj, v_proj of model\.layers\.0\.self_attn have different "
                                          r"tensor scales .* decode v_proj 4x too small\. This config gives them "
                                          r"their own tensor scales"):
        write_compressed_tensors(model, str(tmp_path / "ckpt"), cfg)
    assert not (tmp_path / "ckpt").exists()
    write_compressed_tensors(model, str(tmp_path / "own"), cfg, per_weight_global_scales=True)
