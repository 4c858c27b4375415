"""Train a small GPT-2 or Llama with and without PQT, quantize both, and compare.

The baseline (`torch.compile`, default backend) and PQT (`backend="pqt"`) start from the same
weights and see the same batches; their steps alternate so that both are timed alike. At the
end both are evaluated clean and after round-to-nearest quantization to the target format and
to a lower one, the PQT model is exported in packed form, both models are written as GGUF files
for llama.cpp (with llama-cpp-python installed, also evaluated there), and the numbers are
printed, written to results.json, and (with matplotlib) plotted.

Data: bytes (vocabulary 256) of a fixed list of Python standard-library modules, present on
every machine with Python; `--data FILE` trains on your own text instead.

    python examples/train.py                          # the default run, ~5 min on 2 CPU cores
    python examples/train.py --arch llama --size small --steps 2000
    python examples/train.py --device cuda --dtype bf16 --size gpt2-124m
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import math
import os
import statistics
import sys
import time
from typing import Optional

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import pqt_compile  # noqa: E402
from pqt_compile import PQTConfig  # noqa: E402

# A fixed list, so that the corpus is the same on every run (for a given Python version).
STDLIB_MODULES = (
    "argparse", "ast", "bisect", "calendar", "collections", "configparser", "contextlib", "copy", "csv",
    "dataclasses", "difflib", "enum", "fractions", "functools", "heapq", "inspect", "json.decoder",
    "json.encoder", "logging", "pprint", "random", "shutil", "statistics", "string", "textwrap",
    "threading", "typing", "zipfile",
)

SIZES = {  # name: (layers, d_model, heads, seq)
    "tiny": (2, 64, 2, 64),
    "small": (4, 128, 4, 128),
    "medium": (6, 256, 4, 256),
    "gpt2-124m": (12, 768, 12, 1024),
}


def load_corpus(path: Optional[str] = None) -> bytes:
    """The training text as bytes: `path`, or the fixed standard-library modules."""
    if path is not None:
        with open(path, "rb") as f:
            data = f.read()
        if len(data) < 1024:
            raise SystemExit(f"--data {path}: only {len(data)} bytes; give at least 1 KiB of text")
        return data
    parts = []
    for name in STDLIB_MODULES:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.origin or not spec.origin.endswith(".py"):
            raise SystemExit(f"the standard-library module {name} has no source here; use --data FILE")
        with open(spec.origin, "rb") as f:
            parts.append(f.read())
    return b"\n".join(parts)


def split(data: bytes, val_fraction: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Byte tokens, split into train (first part) and validation (last part)."""
    tokens = torch.frombuffer(bytearray(data), dtype=torch.uint8).long()
    n_val = max(int(len(tokens) * val_fraction), 2)
    return tokens[:-n_val], tokens[-n_val:]


def build_model(arch: str, size: str, seq: int) -> torch.nn.Module:
    """A randomly initialised GPT-2 or Llama from a transformers config (no downloads)."""
    layers, d, heads, _ = SIZES[size]
    if arch == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        return GPT2LMHeadModel(GPT2Config(vocab_size=256, n_positions=seq, n_embd=d, n_layer=layers, n_head=heads,
                                          resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0))
    if arch == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        # SwiGLU's usual 8/3 d, rounded down to a multiple of 32: every sampled weight's reduction
        # axis then holds whole 32-element blocks, which GGUF and MX formats need (160 for d 64).
        return LlamaForCausalLM(LlamaConfig(vocab_size=256, hidden_size=d, intermediate_size=int(d * 8 / 3) // 32 * 32,
                                            num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                                            max_position_embeddings=seq, bos_token_id=0, eos_token_id=0, pad_token_id=0,
                                            tie_word_embeddings=True))
    raise SystemExit(f"--arch {arch!r}: choose gpt2 or llama")


def get_batch(tokens: torch.Tensor, batch: int, seq: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    starts = torch.randint(0, len(tokens) - seq - 1, (batch,), generator=g)
    x = torch.stack([tokens[s : s + seq] for s in starts.tolist()])
    y = torch.stack([tokens[s + 1 : s + seq + 1] for s in starts.tolist()])
    return x, y


def lm_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    logits = model(x, use_cache=False).logits
    return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())


@torch.no_grad()
def evaluate(model: torch.nn.Module, val: torch.Tensor, batch: int, seq: int, n_batches: int, device: str, dtype: torch.dtype) -> float:
    """Mean validation loss over fixed batches (the same for every model)."""
    g = torch.Generator().manual_seed(1234)
    was_training = model.training
    model.eval()
    losses = []
    for _ in range(n_batches):
        x, y = get_batch(val, batch, seq, g)
        with torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32):
            losses.append(lm_loss(model, x.to(device), y.to(device)).item())
    model.train(was_training)
    return sum(losses) / len(losses)


def lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    return lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="gpt2", choices=["gpt2", "llama"])
    p.add_argument("--size", default="small", choices=list(SIZES))
    p.add_argument("--seq", type=int, help="sequence length (default: the size's)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--format", default="fp4_e2m1", help="target storage format (PQT trains for it)")
    p.add_argument("--lower-format", default="int3", help="a second format to quantize both models to")
    p.add_argument("--block-size", default="32")
    p.add_argument("--noise-std", type=float, default=None, help="noise std in steps (default 1/sqrt(12))")
    p.add_argument("--exclude", action="append", default=None, metavar="REGEX",
                   help="weights kept out of PQT and of quantization (repeatable; default: none)")
    p.add_argument("--data", help="train on this text file instead of the standard library")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--eval-batches", type=int, default=20)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/train", help="directory for results.json, loss.png and the export")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def pqt_config(a: argparse.Namespace) -> PQTConfig:
    block = a.block_size if a.block_size in ("row", "tensor") else int(a.block_size)
    kw = {} if a.noise_std is None else {"noise_std": a.noise_std}
    return PQTConfig(format=a.format, block_size=block, exclude=tuple(a.exclude or ()), **kw)


def train(a: argparse.Namespace) -> dict:
    """Train both arms; return every number of the run."""
    seq = a.seq or SIZES[a.size][3]
    dtype = torch.bfloat16 if a.dtype == "bf16" else torch.float32
    cfg = pqt_config(a)
    lower = cfg.replace(format=a.lower_format)
    train_tokens, val_tokens = split(load_corpus(a.data))
    torch.manual_seed(a.seed)
    pqt_compile.manual_seed(a.seed)
    base = build_model(a.arch, a.size, seq).to(a.device)
    pqt = copy.deepcopy(base)
    arms = {"baseline": torch.compile(base), "pqt": pqt_compile.compile(pqt, cfg)}
    models = {"baseline": base, "pqt": pqt}
    opts = {k: torch.optim.AdamW(m.parameters(), lr=a.lr, betas=(0.9, 0.95), weight_decay=0.1) for k, m in models.items()}
    g = torch.Generator().manual_seed(a.seed)
    history: dict = {k: [] for k in models}
    val_history: dict = {k: [] for k in models}
    step_s: dict = {k: [] for k in models}
    bar = None
    if not a.no_progress:
        try:
            from tqdm import tqdm

            bar = tqdm(total=a.steps, desc="training baseline + PQT", unit="step")
        except ImportError:
            pass
    t_start = time.time()
    for step in range(a.steps):
        x, y = get_batch(train_tokens, a.batch, seq, g)
        x, y = x.to(a.device), y.to(a.device)
        for k in (("baseline", "pqt") if step % 2 == 0 else ("pqt", "baseline")):
            for group in opts[k].param_groups:
                group["lr"] = lr_at(step, a.steps, a.lr, a.warmup)
            t0 = time.perf_counter()
            with torch.autocast(a.device, dtype=dtype, enabled=dtype != torch.float32):
                loss = lm_loss(arms[k], x, y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(models[k].parameters(), 1.0)
            opts[k].step()
            opts[k].zero_grad(set_to_none=True)
            if a.device.startswith("cuda"):
                torch.cuda.synchronize()
            step_s[k].append(time.perf_counter() - t0)
            history[k].append(loss.item())
        if (step + 1) % a.eval_every == 0 or step + 1 == a.steps:
            for k, m in models.items():
                val_history[k].append((step + 1, evaluate(m, val_tokens, a.batch, seq, a.eval_batches, a.device, dtype)))
        if bar is not None:
            toks = (step + 1) * a.batch * seq * 2 / (time.time() - t_start)
            bar.set_postfix(base=f"{history['baseline'][-1]:.3f}", pqt=f"{history['pqt'][-1]:.3f}", tok_s=f"{toks:.0f}")
            bar.update(1)
    if bar is not None:
        bar.close()

    results: dict = {"args": vars(a), "seq": seq, "train_loss": history, "val_loss_curve": val_history, "eval": {}}
    for fmt_cfg in (cfg, lower):
        for k, m in models.items():
            q = pqt_compile.quantize_model(copy.deepcopy(m), fmt_cfg)
            results["eval"].setdefault(k, {})[fmt_cfg.format] = evaluate(q, val_tokens, a.batch, seq, a.eval_batches, a.device, dtype)
    for k, m in models.items():
        results["eval"][k]["clean"] = val_history[k][-1][1]
    skip = 5  # compile and warm-up
    ratios = [p_ / b_ for p_, b_ in zip(step_s["pqt"][skip:], step_s["baseline"][skip:])]
    results["step_time_ratio_median"] = statistics.median(ratios) if ratios else float("nan")
    results["step_time_ms_median"] = {k: 1e3 * statistics.median(v[skip:]) for k, v in step_s.items() if v[skip:]}
    results["first_step_s"] = {k: v[0] for k, v in step_s.items()}
    return results, models, cfg


def verdict(results: dict, fmt: str) -> dict:
    """The scientific check: PQT clean within 2% of baseline; PQT loses <= half as much quantized."""
    e = results["eval"]
    base_loss = e["baseline"][fmt] - e["baseline"]["clean"]
    pqt_loss = e["pqt"][fmt] - e["pqt"]["clean"]
    clean_gap = e["pqt"]["clean"] / e["baseline"]["clean"] - 1
    return {
        "clean_gap": clean_gap,
        "baseline_degradation": base_loss,
        "pqt_degradation": pqt_loss,
        "clean_within_2pct": clean_gap <= 0.02,
        "pqt_loses_at_most_half": pqt_loss <= 0.5 * base_loss,
    }


def report(results: dict, cfg: PQTConfig, out: str) -> str:
    from tabulate import tabulate

    a = results["args"]
    fmts = [cfg.format, a["lower_format"]]
    rows = []
    for k in ("baseline", "pqt"):
        e = results["eval"][k]
        row = [k, f"{e['clean']:.4f}"]
        for f in fmts:
            row += [f"{e[f]:.4f}", f"{e[f] - e['clean']:+.4f}"]
        rows.append(row)
    headers = ["model", "val loss"] + [h for f in fmts for h in (f"{f} RTN", "change")]
    v = verdict(results, cfg.format)
    results["verdict"] = v
    lines = [
        tabulate(rows, headers=headers),
        "",
        f"step time PQT / baseline (median): {results['step_time_ratio_median']:.3f}",
        f"PQT clean val loss vs baseline: {100 * v['clean_gap']:+.2f}% ({'within' if v['clean_within_2pct'] else 'NOT within'} 2%)",
        f"loss from {cfg.format} quantization: baseline {v['baseline_degradation']:+.4f}, PQT {v['pqt_degradation']:+.4f} "
        f"({'PQT loses at most half as much' if v['pqt_loses_at_most_half'] else 'PQT does NOT lose at most half as much'})",
    ]
    return "\n".join(lines)


def plot(results: dict, path: str) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "no plot: matplotlib is not installed (pip install matplotlib)"
    fig, ax = plt.subplots(figsize=(7, 4))
    for k, c in (("baseline", "tab:blue"), ("pqt", "tab:orange")):
        ax.plot(results["train_loss"][k], color=c, alpha=0.35, lw=0.8, label=f"{k} train")
        steps, vals = zip(*results["val_loss_curve"][k])
        ax.plot(steps, vals, color=c, marker="o", lw=1.5, label=f"{k} val")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/byte)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return f"plot: {path}"


def write_gguf_files(models: dict, cfg: PQTConfig, results: dict, a: argparse.Namespace) -> dict:
    """Write both models as GGUF in the target format (what llama.cpp and Ollama run), print
    where, and, if llama-cpp-python is installed, their validation loss as llama.cpp computes it
    on `evaluate`'s batches, beside the PyTorch loss after quantization."""
    from pqt_compile.export import ExportError, write_gguf
    from pqt_compile.export.llamacpp import llamacpp_available, llamacpp_loss

    val, seq = split(load_corpus(a.data))[1], results["seq"]
    out: dict = {}
    for k, m in models.items():
        path = os.path.join(a.out, f"{k}_model.gguf")
        try:
            out[k] = {"path": path, "bytes": write_gguf(m, path, cfg, force=True).bytes}
        except (ExportError, ImportError) as e:  # a format GGUF cannot hold, or no gguf package
            out[k] = {"error": f"{type(e).__name__}: {e}"}
            print(f"GGUF {k}: not written ({out[k]['error']})")
            continue
        line = f"GGUF {k}: {path} ({out[k]['bytes']} bytes)"
        if llamacpp_available():
            g = torch.Generator().manual_seed(1234)  # evaluate()'s batches
            batches = [get_batch(val, a.batch, seq, g) for _ in range(a.eval_batches)]
            out[k]["llamacpp_val_loss"] = sum(llamacpp_loss(path, x, y) for x, y in batches) / len(batches)
            line += (f"; val loss in llama.cpp {out[k]['llamacpp_val_loss']:.4f}, "
                     f"in PyTorch after {cfg.format} quantization {results['eval'][k][cfg.format]:.4f}")
        else:
            line += "; pip install llama-cpp-python to see its val loss in llama.cpp"
        print(line)
    return out


def main(argv: Optional[list[str]] = None) -> dict:
    a = parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    results, models, cfg = train(a)
    text = report(results, cfg, a.out)
    export_path = os.path.join(a.out, "pqt_model.pt")
    pqt_compile.export.save(models["pqt"], export_path, cfg)
    results["export"] = {"path": export_path, "bytes": os.path.getsize(export_path)}
    print("\n" + text)
    results["gguf"] = write_gguf_files(models, cfg, results, a)
    print(plot(results, os.path.join(a.out, "loss.png")))
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    print(f"numbers: {os.path.join(a.out, 'results.json')}; packed PQT model: {export_path} ({results['export']['bytes']} bytes)")
    return results


if __name__ == "__main__":
    main()
