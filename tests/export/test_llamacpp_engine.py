"""llama.cpp itself (llama-cpp-python) loads the GGUF files and computes what PyTorch computes.

Opt-in (marker `engine`): runs only where llama-cpp-python is installed (pip install -e
".[engines]", which compiles llama.cpp: README, Deploy), and is skipped with that reason
elsewhere, as in CI. `python -m pytest -m engine` runs just these.

Tolerances (docs/results.md, "llama.cpp runs the export"): llama.cpp quantizes the
activations of every matmul with a quantized weight to Q8_0, which moves its logits by up to a
few 1e-2 from PyTorch's fp32 forward. With that rounding imitated in PyTorch
(`llamacpp_cpu_numerics`) the two agree to fp32 summation order (~1e-6), except at the rare
positions where a last-bit difference in a nonlinearity flips one Q8_0 activation rounding
(up to 5.0e-3 on these models' 128 positions; up to 2.4e-2 over the 1024 positions of
benchmarks/llamacpp_agreement.py, so the max bound below holds for these fixed inputs, the
median bound in general). So:
- against the imitation: the median over positions of the max |Δ logit| <= 1e-5, and the max
  <= 2e-2; `test_one_code_step_is_caught` shows that one weight element off by one code step
  breaks the median bound;
- against plain PyTorch: max |Δ logit| <= 0.15 and |Δ mean loss| <= 2e-3 nats (measured up
  to 2.5e-2 and 3.6e-4 here, 7.4e-2 and 2.3e-4 in the benchmark, logit range ~13).
"""

import copy
import functools
import math
import importlib.util

import pytest
import torch
import torch.nn.functional as F

import pqt_compile
from models import small_bpe_tokenizer, tiny_gpt2, tiny_llama
from pqt_compile import PQTConfig
from pqt_compile.export import write_gguf
from pqt_compile.export.llamacpp import llamacpp_cpu_numerics, llamacpp_logits, llamacpp_loss

pytestmark = [
    pytest.mark.engine,
    pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                       reason="llama-cpp-python is not installed (pip install -e '.[engines]' builds it)"),
]

MODELS = {"gpt2": tiny_gpt2, "llama": tiny_llama, "llama-untied-bias": functools.partial(tiny_llama, tie=False, bias=True),
          "llama-untied": functools.partial(tiny_llama, tie=False)}
FORMATS = ["fp4_e2m1", "int8", "int4"]  # MXFP4, Q8_0, Q4_0
# NVFP4 (blocks + llama.cpp's `.scale` tensors) where write_gguf writes it: not GPT-2's FFN, not an FFN with a bias.
CASES = [(arch, fmt) for arch in ("gpt2", "llama", "llama-untied-bias") for fmt in FORMATS]
CASES += [("llama", "nvfp4"), ("llama-untied", "nvfp4")]


def _corpus() -> torch.Tensor:
    """Bytes of a few standard-library modules: text every Python has."""
    parts = []
    for name in ("argparse", "textwrap", "difflib"):
        with open(importlib.util.find_spec(name).origin, "rb") as f:
            parts.append(f.read())
    return torch.frombuffer(bytearray(b"\n".join(parts)), dtype=torch.uint8).long()


@pytest.fixture(scope="module")
def trained():
    """Each model after 60 AdamW steps on text, so that its logits have a realistic range. One
    thread: a d-64 model gains nothing from two, and on a busy 2-core machine two threads can
    run 40x slower (measured here: 54 s against 1.4 s for 20 steps)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    data = _corpus()
    g = torch.Generator().manual_seed(0)
    out = {}
    for name, build in MODELS.items():
        model = build().train()
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        for _ in range(60):
            starts = torch.randint(0, len(data) - 65, (8,), generator=g).tolist()
            x = torch.stack([data[s : s + 64] for s in starts])
            y = torch.stack([data[s + 1 : s + 65] for s in starts])
            loss = F.cross_entropy(model(x, use_cache=False).logits.flatten(0, 1), y.flatten())
            opt.zero_grad()
            loss.backward()
            opt.step()
        out[name] = model.eval()
    torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="module")
def sequences():
    """Two 64-token windows of text (GPT-2's context is 64) and their next tokens."""
    data = _corpus()
    x = torch.stack([data[-3000:-2936], data[-1500:-1436]])
    y = torch.stack([data[-2999:-2935], data[-1499:-1435]])
    return x, y


@pytest.mark.parametrize("arch,fmt", CASES)
def test_llamacpp_logits_match_the_quantized_model(tmp_path, trained, sequences, arch, fmt):
    cfg = PQTConfig(format=fmt)
    model = pqt_compile.quantize_model(copy.deepcopy(trained[arch]), cfg)
    path = str(tmp_path / "m.gguf")
    write_gguf(model, path, cfg)
    x, y = sequences
    got = torch.stack(llamacpp_logits(path, x.tolist(), n_threads=2))
    with torch.no_grad():
        ref = model(x).logits
        with llamacpp_cpu_numerics(model, cfg):
            emulated = model(x).logits
    assert float(ref.max() - ref.min()) > 5  # trained: a realistic logit range
    per_position = (got - emulated).abs().amax(-1)
    assert float(per_position.median()) <= 1e-5 and float(per_position.max()) <= 2e-2
    assert float((got - ref).abs().max()) <= 0.15
    loss_cpp = F.cross_entropy(got.flatten(0, 1), y.flatten())
    loss_torch = F.cross_entropy(ref.flatten(0, 1), y.flatten())
    assert abs(float(loss_cpp - loss_torch)) <= 2e-3
    assert llamacpp_loss(path, x, y, n_threads=2) == pytest.approx(float(loss_cpp), abs=1e-6)


def test_byte_vocabulary_tokenizes_text_to_its_bytes(tmp_path, trained):
    from llama_cpp import Llama

    path = str(tmp_path / "m.gguf")
    write_gguf(trained["llama"], path, PQTConfig(format="fp4_e2m1"))
    llm = Llama(model_path=path, n_ctx=64, verbose=False)
    try:
        for text in ["def f(x):\n    return x  # café ☃ 日本語", "\tTab  two  spaces\r\n", "".join(map(chr, range(1, 128)))]:
            data = text.encode()
            assert llm.tokenize(data, add_bos=False, special=False) == list(data)
        assert llm.detokenize(list(range(256))) == bytes(range(256))  # any ids, also lone bytes >= 128
        assert llm.n_vocab() == 256
    finally:
        llm.close()


def test_hf_tokenizer_tokenizes_as_in_transformers(tmp_path):
    from llama_cpp import Llama
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = small_bpe_tokenizer()
    model = GPT2LMHeadModel(GPT2Config(vocab_size=320, n_positions=32, n_embd=32, n_layer=1, n_head=2)).eval()
    path = str(tmp_path / "m.gguf")
    write_gguf(model, path, PQTConfig(format="int8"), tokenizer=tok)
    llm = Llama(model_path=path, n_ctx=32, verbose=False)
    try:
        for text in ["def f(x):\n    return x + 1", "the quick brown fox, café ☃", "<|endoftext|>", "  two  spaces"]:
            ids = llm.tokenize(text.encode(), add_bos=False, special=True)
            assert ids == tok.encode(text, add_special_tokens=False), text
            assert llm.detokenize(ids, special=True).decode() == text
    finally:
        llm.close()


def test_no_vocabulary_runs_on_token_ids(tmp_path, trained, sequences):
    cfg = PQTConfig(format="int4")
    paths = {v: str(tmp_path / f"{v}.gguf") for v in ("bytes", "none")}
    for vocab, path in paths.items():
        write_gguf(trained["gpt2"], path, cfg, tokenizer=vocab)
    ids = sequences[0][:1].tolist()
    a, b = (llamacpp_logits(p, ids, n_threads=2)[0] for p in paths.values())
    assert torch.equal(a, b)


def test_one_code_step_is_caught(tmp_path, trained, sequences):
    """The sensitivity of the bound above: the file holds quantize_model's weights, but the
    PyTorch side moves one element of one weight by one int4 step; the median breaks 1e-5."""
    cfg = PQTConfig(format="int4")
    model = pqt_compile.quantize_model(copy.deepcopy(trained["llama"]), cfg)
    path = str(tmp_path / "m.gguf")
    write_gguf(model, path, cfg)
    x = sequences[0][:1]
    got = llamacpp_logits(path, x.tolist(), n_threads=2)[0]
    w = model.model.layers[0].mlp.up_proj.weight
    with torch.no_grad():
        amax = float(w[0, :32].abs().max())
        w[0, 0] += 2.0 ** (math.floor(math.log2(amax)) - 2)  # int4: the step is 2^(floor(log2 amax) - 2)
        with llamacpp_cpu_numerics(model, cfg):
            emulated = model(x).logits[0]
    assert float((got - emulated).abs().amax(-1).median()) > 1e-5
