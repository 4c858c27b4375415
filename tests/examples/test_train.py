"""The training example's pieces, on tiny settings (the full run is the README's main job)."""

import json
import os

import pytest
import torch

import pqt_compile
from examples import train

pytestmark = pytest.mark.private_api  # exercises private torch/Triton APIs: CI reruns it on the newest torch


def test_corpus_is_the_fixed_stdlib_list_and_splits():
    data = train.load_corpus()
    assert len(data) > 500_000 and data == train.load_corpus()  # stable
    tr, va = train.split(data)
    assert tr.dtype == torch.long and int(tr.max()) < 256
    assert len(va) == int(len(data) * 0.1) and len(tr) + len(va) == len(data)


def test_own_data_file(tmp_path):
    p = tmp_path / "t.txt"
    p.write_bytes(b"hello world " * 200)
    assert train.load_corpus(str(p)) == b"hello world " * 200
    (tmp_path / "small.txt").write_bytes(b"hi")
    with pytest.raises(SystemExit, match="at least 1 KiB"):
        train.load_corpus(str(tmp_path / "small.txt"))


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_models_build_from_configs(arch):
    m = train.build_model(arch, "tiny", 64)
    out = m(torch.randint(0, 256, (2, 64)), use_cache=False).logits
    assert out.shape == (2, 64, 256)


def test_a_short_run_end_to_end(tmp_path):
    torch._dynamo.reset()
    res = train.main(["--size", "tiny", "--steps", "8", "--eval-every", "4", "--eval-batches", "2", "--batch", "4",
                      "--out", str(tmp_path), "--no-progress"])
    with open(tmp_path / "results.json") as f:
        saved = json.load(f)
    for k in ("baseline", "pqt"):
        assert len(saved["train_loss"][k]) == 8
        assert set(saved["eval"][k]) == {"clean", "fp4_e2m1", "int3"}
        assert saved["eval"][k]["clean"] == pytest.approx(res["eval"][k]["clean"])
    assert saved["train_loss"]["baseline"] != saved["train_loss"]["pqt"]  # PQT changed training
    assert saved["train_loss"]["baseline"][0] == pytest.approx(saved["train_loss"]["pqt"][0], rel=0.02)  # same init
    assert set(saved["verdict"]) >= {"clean_within_2pct", "pqt_loses_at_most_half"}
    # The exported PQT model loads back to its round-to-nearest weights.
    m = train.build_model("gpt2", "tiny", 64)
    pqt_compile.export.load(saved["export"]["path"], m)
    assert os.path.getsize(saved["export"]["path"]) == saved["export"]["bytes"]
    # Both models as GGUF files in the target format (llama.cpp's loss where llama-cpp-python is installed).
    for k in ("baseline", "pqt"):
        g = saved["gguf"][k]
        assert os.path.getsize(g["path"]) == g["bytes"] > 0
        if "llamacpp_val_loss" in g:
            assert g["llamacpp_val_loss"] == pytest.approx(saved["eval"][k]["fp4_e2m1"], abs=0.01)


@pytest.mark.parametrize("d,width", [(64, 160), (128, 320), (256, 672)])
def test_llama_ffn_width_is_a_multiple_of_32(d, width):
    size = next(name for name, s in train.SIZES.items() if s[1] == d)
    assert train.build_model("llama", size, 64).config.intermediate_size == width
