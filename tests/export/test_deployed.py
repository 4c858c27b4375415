"""deployed.py NOTE [deployed packings]: a model quantized in place (`quantize_model`) or loaded
from a packed file (`load`) is written with exactly the values it holds, in NVFP4 too, where
packing those values again can give others."""

import copy

import pytest
import torch

import pqt_compile
from models import tiny_llama
from pqt_compile import PQTConfig
from pqt_compile.export import load, read_packed, save

pytestmark = pytest.mark.third_party  # builds an HF model (transformers)

NV = PQTConfig(format="nvfp4")
Q = "model.layers.0.self_attn.q_proj.weight"


def _model() -> torch.nn.Module:
    """q_proj's row 1 block 0 needs a subnormal E4M3 scale and deploys with largest code 4:
    packed again, its deployed values pick a smaller scale and other values (test_quantize.py)."""
    m = tiny_llama(tie=False)
    with torch.no_grad():
        q = dict(m.named_parameters())[Q]
        q[0, 0] = 3.0  # the tensor amax: s_t = 2^-9
        q[1, :16] = 1e-6
        q[1, 0] = 3.5e-5
    return m


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().float().contiguous().view(torch.int32)


def _ct_values(out: str, name: str, shape) -> torch.Tensor:
    """compressed-tensors' NVFP4 decode of one weight, as its loader computes it."""
    from safetensors import safe_open

    with safe_open(f"{out}/model.safetensors", "pt") as f:
        t = {k.rsplit(".", 1)[1]: f.get_tensor(k) for k in f.keys() if k.startswith(name.removesuffix("weight"))}
    lo, hi = t["weight_packed"] & 15, t["weight_packed"] >> 4  # element 2i in the low nibble
    codes = torch.stack([lo, hi], -1).reshape(shape).long()
    values = torch.tensor([0, .5, 1, 1.5, 2, 3, 4, 6])[codes & 7] * torch.where(codes >= 8, -1.0, 1.0)
    return values * t["weight_scale"].float().repeat_interleave(16, 1) / t["weight_global_scale"]


def test_a_quantized_model_is_written_with_the_values_it_holds(tmp_path):
    qm = pqt_compile.quantize_model(_model(), NV)
    want = dict(qm.named_parameters())[Q].detach().clone()
    assert not torch.equal(pqt_compile.quantize(want, axis=1, config=NV), want)  # the case: not idempotent
    save(qm, str(tmp_path / "m.pt"), NV)
    assert torch.equal(_bits(pqt_compile.unpack(read_packed(str(tmp_path / "m.pt"))[Q])), _bits(want))
    pqt_compile.export.write_compressed_tensors(qm, str(tmp_path / "ct"), NV)
    assert torch.equal(_bits(_ct_values(str(tmp_path / "ct"), Q, want.shape)), _bits(want))


def test_a_loaded_model_is_written_with_the_values_it_holds(tmp_path):
    trained = _model()
    save(trained, str(tmp_path / "m.pt"), NV)
    loaded = load(str(tmp_path / "m.pt"), tiny_llama(tie=False, seed=1))
    want = dict(loaded.named_parameters())[Q].detach().clone()
    pqt_compile.export.write_compressed_tensors(loaded, str(tmp_path / "ct"), NV)  # no packed=
    assert torch.equal(_bits(_ct_values(str(tmp_path / "ct"), Q, want.shape)), _bits(want))


def test_a_weight_changed_after_quantizing_is_packed_afresh(tmp_path):
    qm = pqt_compile.quantize_model(_model(), NV)
    q = dict(qm.named_parameters())[Q]
    with torch.no_grad():
        q.mul_(1.5)  # trained further: the remembered packing no longer holds its values
    save(qm, str(tmp_path / "m.pt"), NV)
    got = pqt_compile.unpack(read_packed(str(tmp_path / "m.pt"))[Q])
    assert torch.equal(_bits(got), _bits(pqt_compile.quantize(q, axis=1, config=NV)))
    # A copy is other Parameters: it holds no remembered packing, and is packed afresh too.
    copied = copy.deepcopy(pqt_compile.quantize_model(_model(), NV))
    save(copied, str(tmp_path / "c.pt"), NV)
    values = dict(copied.named_parameters())[Q]
    got = pqt_compile.unpack(read_packed(str(tmp_path / "c.pt"))[Q])
    assert torch.equal(_bits(got), _bits(pqt_compile.quantize(values, axis=1, config=NV)))
