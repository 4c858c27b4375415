"""llama.cpp against PyTorch on the same quantized model: how close are the logits and the loss?

Trains the main job's tiny GPT-2 and Llama briefly (plain AdamW, no PQT: the question is the
engine's arithmetic, not the training), quantizes each to fp4_e2m1 / int8 / int4 with block 32,
writes GGUF (MXFP4 / Q8_0 / Q4_0), and compares llama.cpp's logits (llama-cpp-python, F32 KV
cache) on validation windows with PyTorch's, plainly and with llama.cpp's CPU rounding
imitated (`pqt_compile.export.llamacpp.llamacpp_cpu_numerics`). The bounds of
tests/export/test_llamacpp_engine.py come from these numbers.

    python benchmarks/llamacpp_agreement.py [--steps 150] [--windows 16]
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile

import torch
import torch.nn.functional as F
from tabulate import tabulate

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import pqt_compile  # noqa: E402
from examples.train import build_model, get_batch, load_corpus, split  # noqa: E402
from pqt_compile import PQTConfig  # noqa: E402
from pqt_compile.export import write_gguf  # noqa: E402
from pqt_compile.export.llamacpp import llamacpp_cpu_numerics, llamacpp_logits  # noqa: E402

FORMATS = (("fp4_e2m1", "MXFP4"), ("int8", "Q8_0"), ("int4", "Q4_0"))


def train_briefly(model: torch.nn.Module, tokens: torch.Tensor, steps: int, seq: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        x, y = get_batch(tokens, 16, seq, g)
        loss = F.cross_entropy(model(x, use_cache=False).logits.flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=150, help="training steps before quantizing (0: random init)")
    p.add_argument("--windows", type=int, default=16, help="validation windows of --seq tokens")
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--threads", type=int, default=2, help="llama.cpp threads")
    a = p.parse_args(argv)
    train_tokens, val_tokens = split(load_corpus())
    x, y = get_batch(val_tokens, a.windows, a.seq, torch.Generator().manual_seed(1234))
    rows = []
    tmp = tempfile.mkdtemp(prefix="pqt-llamacpp-")
    for arch in ("gpt2", "llama"):
        torch.manual_seed(0)
        trained = train_briefly(build_model(arch, "tiny", a.seq), train_tokens, a.steps, a.seq)
        for fmt, qtype in FORMATS:
            cfg = PQTConfig(format=fmt, block_size=32)
            model = pqt_compile.quantize_model(copy.deepcopy(trained), cfg)
            path = os.path.join(tmp, f"{arch}-{fmt}.gguf")
            size = write_gguf(model, path, cfg).bytes
            got = torch.stack(llamacpp_logits(path, x.tolist(), n_threads=a.threads))
            with torch.no_grad():
                ref = model(x).logits
                with llamacpp_cpu_numerics(model, cfg):
                    emulated = model(x).logits
            per_position = (got - emulated).abs().amax(-1)
            loss_torch = float(F.cross_entropy(ref.flatten(0, 1), y.flatten()))
            loss_cpp = float(F.cross_entropy(got.flatten(0, 1), y.flatten()))
            rows.append({
                "model": arch, "format": fmt, "GGUF": qtype, "bytes": size,
                "logit range": f"{float(ref.max() - ref.min()):.1f}",
                "max |d| vs torch": f"{float((got - ref).abs().max()):.2e}",
                "vs imitation: median / max": f"{float(per_position.median()):.1e} / {float(per_position.max()):.1e}",
                "val loss torch": f"{loss_torch:.5f}", "llama.cpp": f"{loss_cpp:.5f}",
                "difference": f"{loss_cpp - loss_torch:+.1e}",
                "argmax agree": f"{float((got.argmax(-1) == ref.argmax(-1)).float().mean()):.3f}",
            })
            print(f"{arch} {fmt}: done", file=sys.stderr, flush=True)
    print(f"{a.windows} validation windows x {a.seq} tokens, models trained {a.steps} steps")
    print(tabulate(rows, headers="keys", tablefmt="github", disable_numparse=True))
    return rows


if __name__ == "__main__":
    main()
