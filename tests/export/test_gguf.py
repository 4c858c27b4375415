"""GGUF export, checked with the gguf package's own reader: every tensor it dequantises equals
quantize_model's value bit for bit, for each GGUF type; metadata, vocabulary and refusals."""

import copy
import functools
import math

import gguf  # the test extra installs it (scripts/test.sh): a missing package fails, not skips
import pytest
import torch

import pqt_compile
from models import MLP, small_bpe_tokenizer, tiny_gpt2, tiny_llama
from pqt_compile import PQTConfig
from pqt_compile.export import ExportError, read_gguf, write_gguf
from pqt_compile.export.gguf_arch import arch_plan
from pqt_compile.export.gguf_blocks import encode_weight
from pqt_compile.export.gguf_vocab import byte_symbols

pytestmark = pytest.mark.third_party  # goes through another library (transformers, compressed-tensors, gguf)

MODELS = {
    "gpt2": tiny_gpt2,  # Conv1D [K, N] weights, tied head
    "llama": tiny_llama,  # tied head, GQA (Q and K rows permuted for GGML's RoPE)
    "llama-untied-bias": functools.partial(tiny_llama, tie=False, bias=True),  # output.weight, q/k/v/o/mlp biases
}


@pytest.fixture(scope="module")
def models():
    return {name: build() for name, build in MODELS.items()}


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().float().contiguous().view(torch.int32)


def _expected(model: torch.nn.Module, config: PQTConfig) -> dict[str, torch.Tensor]:
    """quantize_model's tensors as llama.cpp lays them out, by GGUF name."""
    q = pqt_compile.quantize_model(copy.deepcopy(model), config)
    plan = arch_plan(q)
    tied = q.get_output_embeddings().weight is q.get_input_embeddings().weight
    return {plan.tensors[k].name: plan.tensors[k].dense(t) for k, t in q.state_dict().items()
            if k in plan.tensors and not (tied and k == "lm_head.weight")}


def _check_round_trip(model, path, config, qtype, **kwargs):
    summary = write_gguf(model, str(path), config, **kwargs)
    got, want = read_gguf(str(path)), _expected(model, config)
    assert set(got) == set(want)
    for name in want:
        assert got[name].shape == want[name].shape, name
        assert torch.equal(_bits(got[name]), _bits(want[name])), name
    quantized = {n for n, t in summary.types.items() if t == qtype}
    assert quantized and set(summary.types.values()) <= {qtype, "F32", "BF16"}
    return summary, quantized


@pytest.mark.parametrize("arch", list(MODELS))
@pytest.mark.parametrize("fmt,qtype", [("fp4_e2m1", "MXFP4"), ("int8", "Q8_0"), ("int4", "Q4_0"), ("int5", "Q5_0")])
def test_gguf_reader_dequantises_to_quantize_model_bit_for_bit(tmp_path, models, arch, fmt, qtype):
    model = models[arch]
    summary, quantized = _check_round_trip(model, tmp_path / "m.gguf", PQTConfig(format=fmt), qtype)
    # Which tensors are quantized: the matmul weights, the tied embedding, an untied head.
    if arch == "gpt2":
        assert quantized == {"token_embd.weight"} | {f"blk.{i}.{t}.weight" for i in range(2)
                                                    for t in ("attn_qkv", "attn_output", "ffn_up", "ffn_down")}
    else:
        assert len(quantized) == 2 * 7 + 1 and ("output.weight" in quantized) == (arch == "llama-untied-bias")
    assert summary.arch == arch.split("-")[0] and summary.vocab == "bytes"


@pytest.mark.parametrize("fmt,block,gguf_type,qtype", [
    ("fp4_e2m1", 64, None, "MXFP4"), ("fp4_e2m1", "row", None, "MXFP4"), ("int4", "tensor", None, "Q4_0"),
    ("int3", 32, "MXFP4", "MXFP4"), ("int3", 32, None, "Q4_0"), ("int6", 32, None, "Q8_0"), ("int2", 128, "Q8_0", "Q8_0"),
])
def test_other_blocks_and_exact_mappings(tmp_path, models, fmt, block, gguf_type, qtype):
    _check_round_trip(models["llama"], tmp_path / "m.gguf", PQTConfig(format=fmt, block_size=block), qtype,
                      gguf_type=gguf_type)


NVFP4_MODELS = {"llama": tiny_llama, "llama-untied": functools.partial(tiny_llama, tie=False)}


@pytest.mark.parametrize("arch", list(NVFP4_MODELS))
def test_nvfp4_reads_back_bit_for_bit_with_its_tensor_scales(tmp_path, arch):
    """GGUF NVFP4: codes and E4M3 scales in the blocks, 2^k_t in `<name>.scale`; the gguf reader's
    blocks times that scale are quantize_model's values. A sampled token embedding (tied head) is
    written dense: llama.cpp's embedding lookup applies no tensor scale."""
    path = tmp_path / "m.gguf"
    summary, quantized = _check_round_trip(NVFP4_MODELS[arch](), path, PQTConfig(format="nvfp4"), "NVFP4")
    assert len(quantized) == 2 * 7 + (arch == "llama-untied")
    scales = {n for n in summary.types if n.endswith(".scale")}
    assert scales == {n.rsplit(".", 1)[0] + ".scale" for n in quantized} and "token_embd.weight" not in quantized
    raw = read_gguf(str(path), apply_scales=False)
    for name in scales:  # F32 [1], a power of two
        assert raw[name].shape == (1,) and math.log2(float(raw[name])).is_integer()
    reader = gguf.GGUFReader(str(path))
    assert reader.fields["general.file_type"].contents() == int(gguf.LlamaFileType.MOSTLY_NVFP4)


def test_nvfp4_where_llama_cpp_would_not_apply_the_tensor_scale_is_refused(tmp_path, models):
    """Found by running the files in llama.cpp (the opt-in engine tests): its gpt2 graph ignores
    the FFN's `.scale`, and it aborts on an NVFP4 FFN weight with a bias."""
    cfg = PQTConfig(format="nvfp4")
    with pytest.raises(ExportError, match=r"mlp.c_fc.weight: llama.cpp's gpt2 graph does not apply the NVFP4 tensor scale"):
        write_gguf(models["gpt2"], str(tmp_path / "a.gguf"), cfg)
    with pytest.raises(ExportError, match=r"mlp.gate_proj.weight: llama.cpp aborts on an NVFP4 ffn_gate weight that has "
                                          r"both a tensor scale and a bias"):
        write_gguf(models["llama-untied-bias"], str(tmp_path / "b.gguf"), cfg)
    assert list(tmp_path.iterdir()) == []
    # GPT-2 with its MLP kept out of PQT: the attention weights go to NVFP4 (llama.cpp scales them)
    attn_only = PQTConfig(format="nvfp4", exclude=(r"mlp\.c_(fc|proj)",))
    summary, quantized = _check_round_trip(models["gpt2"], tmp_path / "c.gguf", attn_only, "NVFP4")
    assert quantized == {f"blk.{i}.{t}.weight" for i in range(2) for t in ("attn_qkv", "attn_output")}


def test_nvfp4_block_layout():
    """Byte j of each 16-element group holds elements j and j + 8; the 4 scale bytes lead the 64."""
    from gguf.quants import dequantize

    cfg = PQTConfig(format="nvfp4")
    w = torch.randn(3, 128) * torch.logspace(-3, 0, 128)
    data = encode_weight(w, axis=1, config=cfg, qtype="NVFP4")
    assert data.shape == (3, 2 * 36)
    got = torch.from_numpy(dequantize(data.numpy(), gguf.GGMLQuantizationType.NVFP4).reshape(3, 128).copy())
    from pqt_compile.export.nvfp4 import pack_nvfp4

    s_t = float(pack_nvfp4(w, axis=1, config=cfg).tensor_scale)
    assert torch.equal(_bits(got * s_t), _bits(pqt_compile.quantize(w, axis=1, config=cfg)))
    with pytest.raises(ExportError, match=r"fc.weight: GGUF's NVFP4 blocks hold 64 elements, .* has 48"):
        encode_weight(torch.randn(2, 48), axis=1, config=cfg, qtype="NVFP4", name="fc.weight")


def test_bf16_model_keeps_bf16_matrices_exact(tmp_path):
    model = tiny_llama(dtype=torch.bfloat16)
    summary, _ = _check_round_trip(model, tmp_path / "m.gguf", PQTConfig(format="fp4_e2m1"), "MXFP4")
    assert summary.types["blk.0.attn_norm.weight"] == "F32"  # vectors: F32 for ggml, exact from bf16


def test_metadata_llama_cpp_reads(tmp_path, models):
    path = str(tmp_path / "m.gguf")
    write_gguf(models["llama"], path, PQTConfig(format="fp4_e2m1"))
    fields = gguf.GGUFReader(path).fields

    def value(key):
        f = fields[key]
        return f.contents() if hasattr(f, "contents") else f.parts[f.data[0]].tolist()

    assert value("general.architecture") == "llama"
    expected = {"llama.context_length": 64, "llama.embedding_length": 64, "llama.block_count": 2,
                "llama.feed_forward_length": 192, "llama.attention.head_count": 4, "llama.attention.head_count_kv": 2,
                "llama.rope.dimension_count": 16, "llama.vocab_size": 256}
    assert {k: value(k) for k in expected} == expected
    assert value("llama.rope.freq_base") == pytest.approx(10000.0)
    assert value("tokenizer.ggml.model") == "gpt2" and value("tokenizer.ggml.tokens") == byte_symbols()
    assert value("tokenizer.ggml.bos_token_id") == 0


def test_byte_symbols_are_the_byte_level_alphabet():
    from tokenizers import pre_tokenizers

    symbols = byte_symbols()
    assert len(set(symbols)) == 256 and symbols[ord("A")] == "A" and symbols[ord(" ")] == "\u0120"
    assert set(symbols) == set(pre_tokenizers.ByteLevel.alphabet())


def test_hf_byte_level_bpe_tokenizer(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = small_bpe_tokenizer()
    model = GPT2LMHeadModel(GPT2Config(vocab_size=320, n_positions=32, n_embd=32, n_layer=1, n_head=2)).eval()
    path = str(tmp_path / "m.gguf")
    assert write_gguf(model, path, PQTConfig(format="int8"), tokenizer=tok).vocab == "hf-bpe"
    fields = gguf.GGUFReader(path).fields
    tokens = fields["tokenizer.ggml.tokens"].contents()
    types = fields["tokenizer.ggml.token_type"].contents()
    assert tokens[: len(tok)] == tok.convert_ids_to_tokens(list(range(len(tok))))
    special = tok.convert_tokens_to_ids("<|endoftext|>")
    assert types[special] == gguf.TokenType.CONTROL and set(types[len(tok):]) == {gguf.TokenType.UNUSED}
    assert fields["tokenizer.ggml.pre"].contents() == "gpt-2" and len(fields["tokenizer.ggml.merges"].contents()) > 0


def test_vocabulary_refusals(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(vocab_size=320, n_positions=32, n_embd=32, n_layer=1, n_head=2)).eval()
    with pytest.raises(ExportError, match="320 tokens: pass its HF tokenizer"):
        write_gguf(model, str(tmp_path / "a.gguf"), PQTConfig(format="int8"))
    with pytest.raises(ExportError, match="byte vocabulary needs vocab_size 256"):
        write_gguf(model, str(tmp_path / "b.gguf"), PQTConfig(format="int8"), tokenizer="bytes")
    assert write_gguf(model, str(tmp_path / "c.gguf"), PQTConfig(format="int8"), tokenizer="none").vocab == "none"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.gguf"]
    bytes_model = GPT2LMHeadModel(GPT2Config(vocab_size=256, n_positions=32, n_embd=32, n_layer=1, n_head=2,
                                             bos_token_id=0, eos_token_id=[1, 2])).eval()  # Llama 3 lists EOS ids
    with pytest.raises(ExportError, match=r"eos_token_id is \[1, 2\], but a GGUF holds one EOS id"):  # was a TypeError
        write_gguf(bytes_model, str(tmp_path / "d.gguf"), PQTConfig(format="int8"))


@pytest.mark.parametrize("config,kwargs,msg", [
    (PQTConfig(format="fp8_e4m3"), {}, r"no GGUF type holds format fp8_e4m3 .*GGUF holds fp4_e2m1 \(MXFP4\)"),
    (PQTConfig(format="fp4_e2m1", block_size=16), {}, "no GGUF type holds format fp4_e2m1 with block_size 16"),
    (PQTConfig(format="int8"), {"gguf_type": "Q4_0"}, "Q4_0 does not hold int8 exactly"),
    (PQTConfig(format="int12"), {}, "no GGUF type holds format int12"),
])
def test_formats_gguf_cannot_hold_are_refused(tmp_path, models, config, kwargs, msg):
    with pytest.raises(ExportError, match=msg):
        write_gguf(models["gpt2"], str(tmp_path / "m.gguf"), config, **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_models_gguf_cannot_hold_are_refused_and_nothing_is_left(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    cfg = PQTConfig(format="fp4_e2m1")
    with pytest.raises(ExportError, match="knows the architectures GPT2LMHeadModel, LlamaForCausalLM .*not MLP"):
        write_gguf(MLP(), str(tmp_path / "m.gguf"), cfg)
    # The main job's old Llama width: 168 is not a multiple of 32 (down_proj's reduction axis).
    with pytest.raises(ExportError, match=r"down_proj.weight: .*168 elements, not a multiple of 32"):
        write_gguf(tiny_llama(intermediate=168), str(tmp_path / "m.gguf"), cfg)
    with pytest.raises(ExportError, match="tanh GELU"):
        write_gguf(GPT2LMHeadModel(GPT2Config(vocab_size=256, n_embd=32, n_layer=1, n_head=2, activation_function="relu")),
                   str(tmp_path / "m.gguf"), cfg)
    llama_cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=64, num_hidden_layers=1,
                            num_attention_heads=2, rope_scaling={"rope_type": "linear", "factor": 2.0})
    with pytest.raises(ExportError, match="rope_type 'linear'"):
        write_gguf(LlamaForCausalLM(llama_cfg), str(tmp_path / "m.gguf"), cfg)
    assert list(tmp_path.iterdir()) == []


def test_fp16_scale_range_of_q_types():
    """Q4_0 / Q5_0 / Q8_0 scales are fp16: 2^-24 .. 2^15 is exact, one step beyond is refused."""
    from gguf.quants import dequantize

    cfg = PQTConfig(format="int8")
    for amax_log2, ok in ((-18, True), (-19, False), (21, True), (22, False)):  # int8: k = floor(log2 amax) - 6
        w = torch.full((2, 32), 0.75) * 2.0**amax_log2
        w[:, 0] = 2.0**amax_log2
        if ok:
            data = encode_weight(w, axis=1, config=cfg, qtype="Q8_0").numpy()
            got = torch.from_numpy(dequantize(data, gguf.GGMLQuantizationType.Q8_0).reshape(2, 32).copy())
            assert torch.equal(_bits(got), _bits(pqt_compile.quantize(w, axis=1, config=cfg)))
        else:
            with pytest.raises(ExportError, match=r"fc.weight: the block at row 0, elements 0..31 .*outside 2\^-24..2\^15"):
                encode_weight(w, axis=1, config=cfg, qtype="Q8_0", name="fc.weight")


def test_existing_file_needs_force(tmp_path, models):
    path = tmp_path / "m.gguf"
    path.write_bytes(b"old")
    with pytest.raises(ExportError, match="exists"):
        write_gguf(models["gpt2"], str(path), PQTConfig(format="int8"))
    assert path.read_bytes() == b"old"
    write_gguf(models["gpt2"], str(path), PQTConfig(format="int8"), force=True)
    assert path.read_bytes()[:4] == b"GGUF" and [p.name for p in tmp_path.iterdir()] == ["m.gguf"]


def test_a_compiled_wrapper_is_looked_through(tmp_path, models):
    wrapped = torch.compile(models["gpt2"])  # never called: no compile happens
    _check_round_trip(wrapped._orig_mod, tmp_path / "a.gguf", PQTConfig(format="int4"), "Q4_0")
    write_gguf(wrapped, str(tmp_path / "b.gguf"), PQTConfig(format="int4"))
    assert (tmp_path / "a.gguf").read_bytes() == (tmp_path / "b.gguf").read_bytes()


@pytest.mark.parametrize("fmt", ["fp4_e2m1", "nvfp4"])
def test_a_weight_that_holds_nan_is_named(tmp_path, fmt):
    m = tiny_llama()
    with torch.no_grad():
        m.model.layers[0].mlp.up_proj.weight[3, 5] = float("nan")
    with pytest.raises(ValueError, match=r"model\.layers\.0\.mlp\.up_proj\.weight holds NaN or Inf"):
        write_gguf(m, str(tmp_path / "m.gguf"), PQTConfig(format=fmt, block_size=16 if fmt == "nvfp4" else 32))
    assert list(tmp_path.iterdir()) == []


def test_a_model_loaded_from_a_packed_nvfp4_file_is_written_with_its_codes(tmp_path):
    """quantize.py NOTE [re-quantizing NVFP4]: a loaded model holds deployed values, which NVFP4
    cannot always quantize back to themselves; `packed=` gives the writer the file's codes, for the
    packed weights and the dense token embedding alike, and without it the writer takes the codes
    `load` remembered (deployed.py NOTE [deployed packings]; before, q_proj was written otherwise)."""
    m = tiny_llama()
    with torch.no_grad():
        w = m.model.layers[0].self_attn.q_proj.weight
        w[0, 0] = 3.0  # the tensor amax: s_t = 2^-9
        w[1, :16] = 1e-6
        w[1, 0] = 3.5e-5  # the largest code of this block is 4 under a subnormal E4M3 scale
    cfg = PQTConfig(format="nvfp4")
    ckpt = str(tmp_path / "m.pt")
    pqt_compile.export.save(m, ckpt, cfg)
    loaded = pqt_compile.export.load(ckpt, tiny_llama(seed=5))
    want = _expected(loaded, PQTConfig(format="nvfp4", include=("^$",)))  # the loaded values as they are
    assert not torch.equal(pqt_compile.quantize(loaded.model.layers[0].self_attn.q_proj.weight, axis=1, config=cfg),
                           loaded.model.layers[0].self_attn.q_proj.weight)  # the case: not idempotent
    for name, packed in (("m.gguf", pqt_compile.export.read_packed(ckpt)), ("again.gguf", None)):
        write_gguf(loaded, str(tmp_path / name), cfg, packed=packed)
        got = read_gguf(str(tmp_path / name))
        assert set(got) == set(want) and all(torch.equal(_bits(got[n]), _bits(want[n])) for n in want), name
