"""quantize_model and the packed file: export.save / export.load."""

import copy
import os
import warnings

import pytest
import torch

import pqt_compile
from models import MLP, TinyGPT
from pqt_compile import PQTConfig, export, quantize, quantize_model

pytestmark = pytest.mark.private_api  # exercises private torch/Triton APIs: CI reruns it on the newest torch


def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0))


def test_quantize_model_replaces_exactly_the_sampled_weights():
    torch.manual_seed(0)
    m = MLP()
    cfg = PQTConfig(format="int4")
    q = quantize_model(copy.deepcopy(m), cfg)
    assert torch.equal(q.fc1.weight, quantize(m.fc1.weight, axis=1, config=cfg))
    assert torch.equal(q.fc1.bias, m.fc1.bias) and torch.equal(q.norm.weight, m.norm.weight)


def test_quantize_model_with_example_args_follows_the_compiler_rules():
    torch.manual_seed(0)
    m = TinyGPT()
    idx = torch.randint(0, 64, (2, 16))
    # Without example inputs the module rules cannot place the bare x @ W Parameters: said, not silent.
    with pytest.warns(UserWarning, match=r"cannot tell whether a matmul reads 2 matrix weight\(s\) of TinyGPT: w_in, w_out\."):
        unsure = quantize_model(copy.deepcopy(m), PQTConfig(format="fp4_e2m1"))
    assert torch.equal(unsure.w_in, m.w_in)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # traced: nothing left to guess
        q = quantize_model(copy.deepcopy(m), PQTConfig(format="fp4_e2m1"), example_args=(idx,))
    assert torch.equal(q.w_in, quantize(m.w_in, axis=0, config=PQTConfig(format="fp4_e2m1")))  # x @ W, axis 0
    assert q.lm_head.weight is q.wte.weight  # still tied


@pytest.mark.parametrize("fmt", ["fp4_e2m1", "fp8_e4m3", "int8", "nvfp4"])
def test_save_load_round_trip_equals_quantize_model(tmp_path, fmt):
    torch.manual_seed(0)
    m = _gpt2()
    cfg = PQTConfig(format=fmt, block_size=16)
    want = quantize_model(copy.deepcopy(m), cfg)
    path = str(tmp_path / "m.pt")
    export.save(m, path, cfg)
    torch.manual_seed(1)
    fresh = _gpt2()
    export.load(path, fresh)
    for (k, a), b in zip(want.state_dict().items(), fresh.state_dict().values()):
        assert a.dtype == b.dtype and torch.equal(a.view(torch.int32), b.view(torch.int32)), k  # bit for bit
    assert fresh.lm_head.weight is fresh.transformer.wte.weight


def test_load_refuses_another_format_and_damaged_files(tmp_path):
    m = MLP()
    path = str(tmp_path / "m.pt")
    export.save(m, path, PQTConfig(format="fp4_e2m1"))
    with pytest.raises(ValueError, match="fp4_e2m1.*int8"):
        export.load(path, MLP(), PQTConfig(format="int8"))
    blob = torch.load(path, weights_only=True)
    blob["tensors"]["codes/fc1.weight"][0, 0] ^= 1  # one flipped bit
    torch.save(blob, path)
    with pytest.raises(ValueError, match="damaged"):
        export.load(path, MLP())
    with open(path, "wb") as f:
        f.write(b"not a model")
    with pytest.raises(ValueError, match="damaged or not a pqt_compile export"):
        export.load(path, MLP())
    export.save(m, path, force=True)
    with pytest.raises(ValueError, match="does not fit|no parameter"):
        export.load(path, TinyGPT())


def test_save_load_holds_a_0d_tensor(tmp_path):
    m = MLP()
    m.scale = torch.nn.Parameter(torch.tensor(2.5))  # a 0-d Parameter (CLIP's logit_scale)
    path = str(tmp_path / "m.pt")
    export.save(m, path, PQTConfig(format="int8"))
    fresh = MLP()
    fresh.scale = torch.nn.Parameter(torch.tensor(0.0))
    export.load(path, fresh)
    assert fresh.scale.item() == 2.5


def test_load_refuses_other_shapes_before_changing_the_model(tmp_path):
    torch.manual_seed(0)
    path = str(tmp_path / "m.pt")
    export.save(torch.nn.Sequential(torch.nn.Linear(64, 1)), path, PQTConfig(format="int8"))
    wider = torch.nn.Sequential(torch.nn.Linear(64, 32))  # copy_ would broadcast the [1, 64] weight into it
    before = copy.deepcopy(wider.state_dict())
    with pytest.raises(ValueError, match=r"other shapes than this model \(0\.weight: file \[1, 64\], model \[32, 64\]; "
                                         r"0\.bias: file \[1\], model \[32\]\)"):
        export.load(path, wider)
    assert all(torch.equal(before[k], v) for k, v in wider.state_dict().items())  # nothing half-loaded
    export.save(torch.nn.Sequential(torch.nn.Linear(64, 1), torch.nn.LayerNorm(1)), path, PQTConfig(format="int8"), force=True)
    with pytest.raises(ValueError, match=r"the model lacks \['1\.weight', '1\.bias'\], the file lacks \[\]"):
        export.load(path, torch.nn.Sequential(torch.nn.Linear(64, 1)))


def test_a_tied_head_loads_into_an_untied_model(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    m = _gpt2()
    cfg = PQTConfig(format="fp4_e2m1")
    want = quantize_model(copy.deepcopy(m), cfg)
    path = str(tmp_path / "m.pt")
    export.save(m, path, cfg)
    untied = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=2, bos_token_id=0,
                                        eos_token_id=0, tie_word_embeddings=False))
    assert untied.lm_head.weight is not untied.transformer.wte.weight
    export.load(path, untied)
    assert torch.equal(untied.lm_head.weight, want.lm_head.weight)  # was: its random init, without a word
    assert torch.equal(untied.transformer.wte.weight, want.transformer.wte.weight)


def test_save_names_a_weight_it_cannot_store(tmp_path):
    m = MLP()
    with torch.no_grad():
        m.fc2.weight[0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"fc2\.weight holds NaN or Inf"):
        export.save(m, str(tmp_path / "m.pt"), PQTConfig(format="int8"))
    with torch.no_grad():
        m.fc2.weight[0].fill_(2.0**-140)  # finite, but a block scale below the packed int8 exponent's range
    with pytest.raises(ValueError, match=r"of fc2\.weight has scale 2\^-1"):
        export.save(m, str(tmp_path / "m.pt"), PQTConfig(format="int8"))


def test_save_refuses_an_existing_file_and_a_failed_save_leaves_it_as_it_was(tmp_path):
    """It overwrote any file without a word (a training checkpoint), and wrote in place."""
    path = str(tmp_path / "ckpt.pt")
    torch.save({"model": MLP().state_dict(), "step": 1000}, path)
    with pytest.raises(ValueError, match=r"ckpt\.pt exists; .*force=True"):
        export.save(MLP(), path, PQTConfig(format="int8"))
    assert torch.load(path, weights_only=True)["step"] == 1000
    bad = MLP()
    with torch.no_grad():
        bad.fc1.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        export.save(bad, path, PQTConfig(format="int8"), force=True)
    assert torch.load(path, weights_only=True)["step"] == 1000 and os.listdir(tmp_path) == ["ckpt.pt"]  # no partial file
    export.save(MLP(), path, PQTConfig(format="int8"), force=True)
    assert export.saved_config(path).format == "int8"


def test_a_wrapped_model_saves_and_loads_under_its_own_names(tmp_path):
    """save(DDP(model)) stored every key under `module.` as a 'tied' alias and the norms as state:
    no model, wrapped or not, could load the file. DataParallel stands for DDP (the same prefix)."""
    torch.manual_seed(0)
    m = MLP()
    cfg = PQTConfig(format="fp4_e2m1")
    want = quantize_model(copy.deepcopy(m), cfg)
    path = str(tmp_path / "m.pt")
    export.save(torch.nn.DataParallel(m), path, cfg)
    assert export.read_packed(path).keys() == {"fc1.weight", "fc2.weight"}
    for target in (MLP(), torch.nn.DataParallel(MLP())):
        assert export.load(path, target) is target
        got = target.module if isinstance(target, torch.nn.DataParallel) else target
        assert all(torch.equal(a, b) for a, b in zip(want.state_dict().values(), got.state_dict().values()))


def test_one_example_input_may_be_given_bare():
    """example_args=x instead of (x,) died in the trace with 'Boolean value of Tensor ... is ambiguous'."""
    torch.manual_seed(0)
    m, x, cfg = MLP(), torch.randn(2, 32), PQTConfig(format="int4")
    bare = quantize_model(copy.deepcopy(m), cfg, example_args=x)
    assert all(torch.equal(a, b) for a, b in zip(bare.state_dict().values(),
                                                  quantize_model(copy.deepcopy(m), cfg, example_args=(x,)).state_dict().values()))
    assert not torch.equal(bare.fc1.weight, m.fc1.weight)
