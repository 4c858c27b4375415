"""Does PQT pay? Train a small GPT-2 or Llama with each recipe side by side, quantize, compare.

Arms (`--arms`), all from the same weights on the same batches, their steps interleaved so that
all are timed alike:
  baseline  plain training (`torch.compile`, default backend)
  pqt       PQT: `pqt_compile.compile(model, PQTConfig(format, ...))`, a fresh sample per step
  ste       straight-through fake-quant QAT on exactly the grid `quantize_model` deploys:
            `PQTConfig(mode="ste")`, the same pass and lowering with a round-to-nearest forward
  pqt-ste   PQT, then STE for the last `--ste-fraction` of the steps
  pqt-anneal  PQT with the noise std stepped down by quarters: 1, 3/4, 1/2, 1/4 of its value
  torchao   torchao's int4/int8 fake-quant QAT (nn.Linear only), where torchao is installed
At each evaluation every arm's validation loss is measured clean and after round-to-nearest
quantization to the target format (`quantize_model`'s grid); at the end also to a lower format
and to `--deploy-grids` (a model deployed to a format it was not trained for). `--seeds 0,1,2`
repeats the run per seed and reports mean and spread. Scenarios: `scratch` (from random
weights) and `finetune` (from a checkpoint pretrained without quantization, cached in --out).
The project's recommended arm is exported in packed form and every arm as GGUF for llama.cpp.

Data: bytes (vocabulary 256) of a fixed list of Python standard-library modules, present on
every machine with Python; `--data FILE` trains on your own text instead.

    python examples/train.py                          # the default run, ~5 min on 2 CPU cores
    python examples/train.py --scenario scratch --seeds 0,1,2 --arms baseline,pqt,ste
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
from pqt_compile.tools.offline import hub_offline  # noqa: E402

hub_offline()  # the job downloads nothing: a library that tries fails at once (HF_HUB_OFFLINE=0 allows it)
import pqt_compile  # noqa: E402
import pqt_compile.compat  # noqa: E402
import pqt_compile.reference  # noqa: E402
from pqt_compile import PQTConfig  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_report  # noqa: E402
from train_arms import ARMS, Arm, quantized  # noqa: E402

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


#: The arm this project recommends for the target format (docs/results.md, issue 16): exported
#: in packed form and named in the verdict.
RECOMMENDED = "pqt-ste"
SCENARIO_DEFAULTS = {  # scenario: (lr, warmup)
    "scratch": (3e-3, 50),
    "finetune": (5e-4, 20),
}


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="gpt2", choices=["gpt2", "llama"])
    p.add_argument("--size", default="tiny", choices=list(SIZES))
    p.add_argument("--seq", type=int, help="sequence length (default: the size's)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--scenario", default="finetune", choices=list(SCENARIO_DEFAULTS),
                   help="scratch: from random weights; finetune: from a checkpoint pretrained without quantization")
    p.add_argument("--pretrain-steps", type=int, default=1000, help="finetune: steps of the pretraining (cached in --out)")
    p.add_argument("--pretrain-lr", type=float, default=3e-3)
    p.add_argument("--pretrain-dir", help="where pretrained checkpoints are cached (default: --out)")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--lr", type=float, help="peak learning rate (default: 3e-3 scratch, 5e-4 finetune)")
    p.add_argument("--warmup", type=int, help="warm-up steps (default: 50 scratch, 20 finetune)")
    p.add_argument("--arms", default="baseline,pqt,ste,pqt-ste", help=f"comma-separated, from {', '.join(ARMS)}")
    p.add_argument("--ste-fraction", type=float, default=0.25, help="pqt-ste: the last fraction of steps trained with STE")
    p.add_argument("--format", default="fp4_e2m1", help="target storage format (the arms train for it)")
    p.add_argument("--lower-format", default="int3", help="a second format to quantize every model to")
    p.add_argument("--deploy-grids", default="", metavar="FMT:BLOCK,...",
                   help="more grids to deploy to at the end, e.g. fp4_e2m1:16,int4:32 (robustness to another format)")
    p.add_argument("--block-size", default="32")
    p.add_argument("--noise", default="gaussian", choices=["gaussian", "uniform", "rounded_gaussian"])
    p.add_argument("--noise-std", type=float, default=None, help="noise std in steps (default: the noise's own)")
    p.add_argument("--exclude", action="append", default=None, metavar="REGEX",
                   help="weights kept out of PQT and of quantization (repeatable; default: none)")
    p.add_argument("--data", help="train on this text file instead of the standard library")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--eval-batches", type=int, default=20)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds; each repeats the whole comparison")
    p.add_argument("--out", default="runs/train", help="directory for results.json, loss.png and the exports")
    p.add_argument("--no-export", action="store_true", help="skip the packed and GGUF exports")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    arms = [x for x in a.arms.split(",") if x]
    bad = sorted(set(arms) - set(ARMS))
    if bad or not arms:
        p.error(f"--arms {a.arms!r}: unknown arm(s) {bad}; choose from {', '.join(ARMS)}")
    if "baseline" not in arms:
        arms.insert(0, "baseline")  # every verdict is against it
    a.arm_list = arms
    try:
        a.seed_list = [int(s) for s in a.seeds.split(",") if s]
    except ValueError:
        p.error(f"--seeds {a.seeds!r}: expected comma-separated integers, e.g. 0,1,2")
    if not 0 < a.ste_fraction < 1:
        p.error(f"--ste-fraction {a.ste_fraction}: must be in (0, 1)")
    lr, warmup = SCENARIO_DEFAULTS[a.scenario]
    a.lr = lr if a.lr is None else a.lr
    a.warmup = warmup if a.warmup is None else a.warmup
    return a


def pqt_config(a: argparse.Namespace) -> PQTConfig:
    return PQTConfig(format=a.format, block_size=_block(a.block_size), noise=a.noise, noise_std=a.noise_std,
                     exclude=tuple(a.exclude or ()))


def _block(b: str):
    return b if b in ("row", "tensor") else int(b)


def deploy_grids(a: argparse.Namespace, cfg: PQTConfig) -> dict[str, PQTConfig]:
    """{label: config} of every grid the final models are quantized to; the target's label is its format."""
    grids = {cfg.format: cfg, a.lower_format: cfg.replace(format=a.lower_format)}
    for g in (x for x in a.deploy_grids.split(",") if x):
        fmt, _, b = g.partition(":")
        try:
            grids[g] = cfg.replace(format=fmt, block_size=_block(b or "32"))
        except ValueError as e:
            raise SystemExit(f"--deploy-grids {g!r}: {e}") from None
    return grids


def pretrained(a: argparse.Namespace, seed: int, seq: int, train_tokens: torch.Tensor, dtype: torch.dtype) -> dict:
    """The finetune scenario's starting weights: plain training for --pretrain-steps, cached in --out."""
    key = f"{a.arch}_{a.size}_seq{seq}_b{a.batch}_s{seed}_{a.pretrain_steps}_{a.pretrain_lr:g}_{os.path.basename(a.data or 'stdlib')}"
    os.makedirs(a.pretrain_dir or a.out, exist_ok=True)
    path = os.path.join(a.pretrain_dir or a.out, f"pretrain_{key}.pt")
    if os.path.exists(path):
        return torch.load(path)
    torch.manual_seed(seed)
    model = build_model(a.arch, a.size, seq).to(a.device)
    step_fn = torch.compile(model)
    opt = torch.optim.AdamW(model.parameters(), lr=a.pretrain_lr, betas=(0.9, 0.95), weight_decay=0.1)
    g = torch.Generator().manual_seed(10_000 + seed)  # not the fine-tuning batches
    for step in range(a.pretrain_steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, a.pretrain_steps, a.pretrain_lr, 50)
        x, y = get_batch(train_tokens, a.batch, seq, g)
        with torch.autocast(a.device, dtype=dtype, enabled=dtype != torch.float32):
            loss = lm_loss(step_fn, x.to(a.device), y.to(a.device))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    torch.save(state, path)
    return state


def train_seed(a: argparse.Namespace, seed: int, cfg: PQTConfig, corpus: tuple, bar=None) -> tuple[dict, dict]:
    """Train every arm for one seed; return (numbers, {arm: model})."""
    seq = a.seq or SIZES[a.size][3]
    dtype = torch.bfloat16 if a.dtype == "bf16" else torch.float32
    train_tokens, val_tokens = corpus
    torch._dynamo.reset()
    torch.manual_seed(seed)
    pqt_compile.manual_seed(seed)
    init = build_model(a.arch, a.size, seq).to(a.device)
    if a.scenario == "finetune":
        init.load_state_dict(pretrained(a, seed, seq, train_tokens, dtype))
    axes = pqt_compile.reference.sampled_axes(init, cfg)  # the same names in every arm
    arms = {k: Arm(k, copy.deepcopy(init), cfg, a.steps, a.lr, a.ste_fraction) for k in a.arm_list}
    # Each arm its own position in one seed stream: every PQT arm draws the same noise at the
    # same step (a paired comparison), whichever other arms run beside it.
    start = pqt_compile.seed_state()
    noise_at = {k: dict(start) for k in arms}
    ev = lambda m: evaluate(m, val_tokens, a.batch, seq, a.eval_batches, a.device, dtype)  # noqa: E731
    g = torch.Generator().manual_seed(seed)
    order = list(arms)
    for step in range(a.steps):
        x, y = get_batch(train_tokens, a.batch, seq, g)
        x, y = x.to(a.device), y.to(a.device)
        for k in order[step % len(order):] + order[: step % len(order)]:  # rotate: alike timing
            arm = arms[k]
            for group in arm.opt.param_groups:
                group["lr"] = lr_at(step, a.steps, a.lr, a.warmup)
            pqt_compile.set_seed_state(noise_at[k])
            t0 = time.perf_counter()
            with torch.autocast(a.device, dtype=dtype, enabled=dtype != torch.float32):
                loss = lm_loss(arm.fn(step), x, y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(arm.model.parameters(), 1.0)
            arm.opt.step()
            arm.opt.zero_grad(set_to_none=True)
            noise_at[k] = pqt_compile.seed_state()
            if a.device.startswith("cuda"):
                torch.cuda.synchronize()
            arm.step_s.append(time.perf_counter() - t0)
            arm.train_loss.append(loss.item())
        if (step + 1) % a.eval_every == 0 or step + 1 == a.steps:
            for arm in arms.values():
                with quantized(arm.model, axes, cfg) as q:
                    qloss = ev(q)
                arm.curve.append((step + 1, ev(arm.model), qloss))
        if bar is not None:
            bar.set_postfix({k: f"{arm.train_loss[-1]:.3f}" for k, arm in arms.items()})
            bar.update(1)
    out: dict = {"seed": seed, "train_loss": {}, "val_curve": {}, "eval": {}, "step_ms_median": {}}
    grids = deploy_grids(a, cfg)
    skip = 5  # compile and warm-up
    for k, arm in arms.items():
        out["train_loss"][k] = arm.train_loss
        out["val_curve"][k] = arm.curve
        e = {"clean": arm.curve[-1][1]}
        for label, gcfg in grids.items():
            with quantized(arm.model, axes, gcfg) as q:
                e[label] = ev(q)
        out["eval"][k] = e
        out["step_ms_median"][k] = 1e3 * statistics.median(arm.step_s[skip:] or arm.step_s)
    base = arms["baseline"].step_s[skip:]
    out["step_time_ratio_median"] = {
        k: statistics.median(p / b for p, b in zip(arm.step_s[skip:], base)) if base else float("nan")
        for k, arm in arms.items()
    }
    return out, {k: arm.model for k, arm in arms.items()}


def run(a: argparse.Namespace) -> tuple[dict, dict, PQTConfig]:
    """Every seed; returns (results, the first seed's models, config)."""
    if a.threads:
        torch.set_num_threads(a.threads)
    cfg = pqt_config(a)
    deploy_grids(a, cfg)  # refuse a bad grid before training
    corpus = split(load_corpus(a.data))
    bar = None
    if not a.no_progress:
        try:
            from tqdm import tqdm

            bar = tqdm(total=a.steps * len(a.seed_list), desc=f"training {', '.join(a.arm_list)}", unit="step")
        except ImportError:
            pass
    per_seed, first_models = [], None
    t0 = time.time()
    # Every arm's model runs the same forward code, so Dynamo keeps one cache entry per compiled
    # stage on that code: more than its default limit of 8 with every arm, past which a stage
    # would silently run eagerly (unsampled). Raised for this run only.
    with pqt_compile.compat.dynamo_recompile_limit(64):
        for seed in a.seed_list:
            res, models = train_seed(a, seed, cfg, corpus, bar)
            per_seed.append(res)
            first_models = first_models or models
    if bar is not None:
        bar.close()
    args = {k: v for k, v in vars(a).items()}
    results = {"args": args, "seq": a.seq or SIZES[a.size][3], "config": cfg.to_options(), "per_seed": per_seed,
               "wall_s": time.time() - t0}
    return results, first_models, cfg


def write_gguf_files(models: dict, cfg: PQTConfig, results: dict, a: argparse.Namespace) -> dict:
    """Write every arm's model (the first seed's) as GGUF in the target format (what llama.cpp and Ollama run), print
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
                     f"in PyTorch after {cfg.format} quantization {results['per_seed'][0]['eval'][k][cfg.format]:.4f}")
        else:
            line += "; pip install llama-cpp-python to see its val loss in llama.cpp"
        print(line)
    return out


def main(argv: Optional[list[str]] = None) -> dict:
    a = parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    results, models, cfg = run(a)
    results["aggregate"] = train_report.aggregate(results)
    results["verdict"] = train_report.verdict(results, cfg.format, RECOMMENDED)
    print("\n" + train_report.report(results, cfg.format))
    if not a.no_export:
        deploy = RECOMMENDED if RECOMMENDED in models else a.arm_list[-1]
        export_path = os.path.join(a.out, f"{deploy}_model.pt")
        pqt_compile.export.save(models[deploy], export_path, cfg)
        results["export"] = {"arm": deploy, "path": export_path, "bytes": os.path.getsize(export_path)}
        results["gguf"] = write_gguf_files(models, cfg, results, a)
        print(f"packed {deploy} model: {export_path} ({results['export']['bytes']} bytes)")
    print(train_report.plot(results, cfg.format, os.path.join(a.out, "loss.png")))
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    print(f"numbers: {os.path.join(a.out, 'results.json')}")
    return results


if __name__ == "__main__":
    main()
