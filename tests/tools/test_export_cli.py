"""pqt-export: the command line (the writers themselves are tested in tests/export/)."""

import copy
import os

import pytest
import torch

import pqt_compile
from models import small_bpe_tokenizer, tiny_llama
from pqt_compile import PQTConfig
from pqt_compile.export import read_gguf
from pqt_compile.tools import export as export_cli
from pqt_compile.tools.cli import PRESETS

pytestmark = pytest.mark.third_party  # goes through another library (transformers, compressed-tensors, gguf)


def _run(argv, capsys):
    rc = export_cli.main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err.strip()


def test_preset_to_gguf_and_compressed_tensors(tmp_path, capsys):
    rc, out, _ = _run(["--preset", "llama-tiny", "--format", "fp4_e2m1", "--to", "gguf", "--out", str(tmp_path / "m.gguf")],
                      capsys)
    assert rc == 0 and "15 MXFP4" in out and (tmp_path / "m.gguf").is_file()
    rc, out, _ = _run(["--preset", "llama-tiny", "--format", "int4", "--to", "compressed-tensors", "--out",
                       str(tmp_path / "ct")], capsys)
    assert rc == 0 and "pack-quantized: 14 nn.Linear compressed" in out
    assert sorted(os.listdir(tmp_path / "ct")) == ["config.json", "generation_config.json", "model.safetensors"]


def test_nvfp4_to_gguf_and_compressed_tensors(tmp_path, capsys):
    rc, out, _ = _run(["--preset", "gpt2-tiny", "--format", "nvfp4", "--exclude", r"mlp\.c_", "--to", "gguf", "--out",
                       str(tmp_path / "m.gguf")], capsys)
    assert rc == 0 and "block_size 16" in out and "4 NVFP4" in out  # the attention weights, each with its F32 .scale
    rc, out, _ = _run(["--preset", "llama-tiny", "--format", "nvfp4", "--to", "compressed-tensors", "--out",
                       str(tmp_path / "ct"), "--per-weight-global-scales"], capsys)  # compressed_tensors.py NOTE [fused global scales]
    assert rc == 0 and "nvfp4-pack-quantized: 14 nn.Linear compressed" in out
    # llama-tiny's down_proj reads 160 inputs: not a multiple of GGUF NVFP4's 64-element blocks
    rc, _, err = _run(["--preset", "llama-tiny", "--format", "nvfp4", "--to", "gguf", "--out", str(tmp_path / "l.gguf")],
                      capsys)
    assert rc == 2 and "has 160, not a multiple of 64" in err and not (tmp_path / "l.gguf").exists()


def test_packed_checkpoint_brings_its_config(tmp_path, capsys):
    torch.manual_seed(3)
    trained = PRESETS["gpt2-tiny"]()  # stands for a trained model: other weights than a fresh preset
    cfg = PQTConfig(format="fp4_e2m1", block_size=64, exclude=("lm_head",))
    ckpt = str(tmp_path / "pqt_model.pt")
    pqt_compile.export.save(trained, ckpt, cfg)
    out = str(tmp_path / "m.gguf")
    rc, printed, _ = _run(["--preset", "gpt2-tiny", "--checkpoint", ckpt, "--to", "gguf", "--out", out], capsys)
    assert rc == 0 and "fp4_e2m1, block_size 64" in printed
    want = pqt_compile.quantize_model(copy.deepcopy(trained), cfg)
    got = read_gguf(out)
    assert torch.equal(got["blk.0.ffn_up.weight"], want.transformer.h[0].mlp.c_fc.weight.t())
    assert torch.equal(got["token_embd.weight"], trained.transformer.wte.weight)  # excluded: kept as trained
    # A flag that disagrees with the file is refused; one that agrees is fine.
    rc, _, err = _run(["--preset", "gpt2-tiny", "--checkpoint", ckpt, "--format", "int8", "--to", "gguf", "--out",
                       str(tmp_path / "x.gguf")], capsys)
    assert rc == 2 and len(err.splitlines()) == 1 and "saved with format='fp4_e2m1'" in err and "--format" in err
    rc, _, _ = _run(["--preset", "gpt2-tiny", "--checkpoint", ckpt, "--block-size", "64", "--to", "gguf", "--out",
                     str(tmp_path / "y.gguf")], capsys)
    assert rc == 0


def test_hugging_face_directory_with_its_tokenizer(tmp_path, capsys):
    from transformers import GPT2Config, GPT2LMHeadModel

    hf = str(tmp_path / "hf")
    GPT2LMHeadModel(GPT2Config(vocab_size=320, n_positions=32, n_embd=32, n_layer=1, n_head=2)).save_pretrained(hf)
    small_bpe_tokenizer().save_pretrained(hf)
    rc, out, _ = _run(["--checkpoint", hf, "--format", "int8", "--to", "gguf", "--out", str(tmp_path / "m.gguf")], capsys)
    assert rc == 0 and "gpt2" in out and "vocabulary hf-bpe" in out
    rc, _, err = _run(["--checkpoint", hf, "--preset", "gpt2-tiny", "--to", "gguf", "--out", str(tmp_path / "n.gguf")],
                      capsys)
    assert rc == 2 and "without --preset" in err


def test_already_quantized_directory_is_refused(tmp_path, capsys):
    ct = str(tmp_path / "ct")
    pqt_compile.export.write_compressed_tensors(tiny_llama(), ct, PQTConfig(format="int4"))
    rc, _, err = _run(["--checkpoint", ct, "--to", "gguf", "--out", str(tmp_path / "m.gguf")], capsys)
    assert rc == 2 and "already quantized" in err


@pytest.mark.parametrize("argv,msg", [
    (["--preset", "gpt2-tiny", "--format", "fp8_e4m3", "--to", "gguf"], "no GGUF type holds format fp8_e4m3"),
    (["--preset", "gpt2-tiny", "--format", "fp4_e2m1", "--block-size", "16", "--to", "gguf"], "block_size 16"),
    (["--preset", "gpt2-tiny", "--format", "fp6_e3m2", "--to", "compressed-tensors"],
     "no compressed-tensors format holds fp6_e3m2"),
    (["--preset", "gpt2-tiny", "--format", "int4", "--to", "compressed-tensors"], "Conv1D"),
    (["--model", "models:MLP", "--vocab", "32", "--format", "int4", "--to", "gguf"], "knows the architectures"),
    (["--preset", "gpt2-tiny", "--checkpoint", "no/such/file.pt", "--to", "gguf"], "no such file"),
    (["--preset", "gpt2-tiny", "--tokenizer", "no_such_dir", "--to", "gguf"], "--tokenizer"),
    (["--preset", "nope", "--to", "gguf"], "unknown"),
])
def test_bad_input_is_one_line_and_leaves_nothing(tmp_path, capsys, argv, msg):
    out = tmp_path / "out"
    rc, _, err = _run([*argv, "--out", str(out)], capsys)
    assert rc == 2 and msg in err and len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_existing_output_needs_force(tmp_path, capsys):
    out = tmp_path / "m.gguf"
    out.write_bytes(b"old")
    argv = ["--preset", "gpt2-tiny", "--format", "int8", "--to", "gguf", "--out", str(out)]
    rc, _, err = _run(argv, capsys)
    assert rc == 2 and "exists" in err and "--force" in err and out.read_bytes() == b"old"
    rc, _, _ = _run([*argv, "--force"], capsys)
    assert rc == 0 and out.read_bytes()[:4] == b"GGUF"


def test_config_flags_reach_the_config():
    a = export_cli._parser().parse_args(["--preset", "gpt2-tiny", "--to", "gguf", "--out", "x", "--format", "int4",
                                         "--block-size", "row", "--exclude", "lm_head", "--noise-std", "0.5"])
    config, given = export_cli._flag_config(a)
    assert config == PQTConfig(format="int4", block_size="row", exclude=("lm_head",), noise_std=0.5)
    assert given == {"format", "block_size", "exclude", "noise_std"}


def test_flags_on_a_packed_file_are_read_with_its_format():
    """--tensor-scale-groups alone, on an nvfp4 file, was read with the default format and refused
    ("applies to format 'nvfp4' only") though it agreed with the file."""
    saved = PQTConfig(format="nvfp4")

    def flags(*argv):
        a = export_cli._parser().parse_args(["--preset", "llama-tiny", "--checkpoint", "m.pt", "--to", "gguf",
                                             "--out", "x", *argv])
        return export_cli._flag_config(a, saved)

    config, given = flags("--tensor-scale-groups", "q_proj,k_proj,v_proj", "--tensor-scale-groups", "gate_proj,up_proj")
    assert given == {"tensor_scale_groups"} and config.tensor_scale_groups == saved.tensor_scale_groups
    config, _ = flags("--tensor-scale-groups", "none")
    assert config.tensor_scale_groups == () != saved.tensor_scale_groups  # a disagreement the caller names
    with pytest.raises(export_cli.UsageError, match="applies to format 'nvfp4' only"):
        flags("--format", "int4", "--tensor-scale-groups", "q_proj,k_proj")  # a given format is the flags' own


def test_a_packed_nvfp4_checkpoint_is_written_with_its_stored_codes(tmp_path, capsys):
    """The loaded weights are deployed values, which NVFP4 cannot always quantize back to themselves
    (quantize.py NOTE [re-quantizing NVFP4]): the writer takes the file's codes."""
    from safetensors import safe_open

    trained = PRESETS["llama-tiny"]()
    q_proj = trained.model.layers[0].self_attn.q_proj.weight
    with torch.no_grad():
        q_proj[0, 0] = 3.0  # the tensor amax: s_t = 2^-9
        q_proj[1, :16] = 1e-6
        q_proj[1, 0] = 3.5e-5  # a block whose largest code is 4 under a subnormal E4M3 scale (test_quantize.py)
    cfg = PQTConfig(format="nvfp4")
    ckpt = str(tmp_path / "pqt_model.pt")
    pqt_compile.export.save(trained, ckpt, cfg)
    want = pqt_compile.quantize_model(copy.deepcopy(trained), cfg).model.layers[0].self_attn.q_proj.weight
    assert not torch.equal(pqt_compile.quantize(want, axis=1, config=cfg), want)  # the case: not idempotent
    rc, _, _ = _run(["--preset", "llama-tiny", "--checkpoint", ckpt, "--to", "compressed-tensors", "--out",
                     str(tmp_path / "ct")], capsys)
    assert rc == 0  # q/k/v were packed under their group's scale: the fused loader's check passes
    name = "model.layers.0.self_attn.q_proj"
    with safe_open(str(tmp_path / "ct" / "model.safetensors"), "pt") as f:
        t = {k.rsplit(".", 1)[1]: f.get_tensor(k) for k in f.keys() if k.startswith(name + ".")}
    lo, hi = t["weight_packed"] & 15, t["weight_packed"] >> 4  # element 2i in the low nibble
    codes = torch.stack([lo, hi], -1).reshape(want.shape).long()
    values = torch.tensor([0, .5, 1, 1.5, 2, 3, 4, 6])[codes & 7] * torch.where(codes >= 8, -1.0, 1.0)
    decoded = values * t["weight_scale"].float().repeat_interleave(16, 1) / t["weight_global_scale"]
    assert torch.equal(decoded, want)


def test_output_paths_that_cannot_be_written_are_refused_before_any_work(tmp_path, capsys):
    """Each was a traceback after the whole export (an IsADirectoryError, an OSError), or worse."""
    hf = tmp_path / "hf"
    PRESETS["llama-tiny"]().save_pretrained(hf)
    before = sorted(os.listdir(hf))
    (tmp_path / "adir").mkdir()
    cases = [
        # the trained checkpoint replaced by its own export (with --force: its files are all the export's names)
        (["--checkpoint", str(hf), "--format", "int4", "--to", "compressed-tensors", "--out", str(hf), "--force"],
         "is the --checkpoint it reads"),
        (["--preset", "llama-tiny", "--format", "int4", "--to", "gguf", "--out", str(tmp_path / "adir"), "--force"],
         "is a directory, but this output is a file"),
        (["--preset", "llama-tiny", "--format", "int4", "--to", "gguf", "--out", str(tmp_path / "new") + os.sep],
         "is a directory, but this output is a file"),
        (["--preset", "llama-tiny", "--format", "int4", "--to", "gguf", "--out", ""], "the output path is empty"),
        # a file of dense tensors only, written as if quantized (compressed-tensors refused it)
        (["--preset", "llama-tiny", "--format", "int4", "--include", "nomatch", "--to", "gguf", "--out",
          str(tmp_path / "x.gguf")], "nothing to quantize"),
    ]
    capsys.readouterr()  # save_pretrained's progress bar
    for argv, words in cases:
        rc, _, err = _run(argv, capsys)
        assert rc == 2 and words in err and len(err.splitlines()) == 1, (argv, err)
    assert sorted(os.listdir(hf)) == before and sorted(os.listdir(tmp_path)) == ["adir", "hf"]


def test_a_checkpoint_directory_that_does_not_load_is_one_line(tmp_path, capsys):
    hf = tmp_path / "hf"
    PRESETS["llama-tiny"]().save_pretrained(hf)
    (hf / "model.safetensors").write_bytes((hf / "model.safetensors").read_bytes()[:100])  # truncated
    capsys.readouterr()  # save_pretrained's progress bar
    rc, _, err = _run(["--checkpoint", str(hf), "--format", "int4", "--to", "gguf", "--out", str(tmp_path / "m.gguf")],
                      capsys)
    assert rc == 2 and "it does not load (SafetensorError: " in err and len(err.splitlines()) == 1, err
