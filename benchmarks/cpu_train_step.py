"""CPU: training-step time and compile time of backend="pqt" against the default Inductor backend.

Both arms train the same small GPT-2 (transformers config, random init, no downloads) from the
same weights on the same batches, side by side in one process; their steps are interleaved
(A, B, A, B, ...) so that drift in the machine's speed hits both alike. Reports medians, the
spread (25th-75th percentile) and the ratio PQT / baseline.

    python benchmarks/cpu_train_step.py [--layers 2] [--d-model 128] [--seq 128] [--batch 8] [--steps 30]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch
from tabulate import tabulate

import pqt_compile


def build(args: argparse.Namespace) -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=256, n_positions=args.seq, n_embd=args.d_model, n_layer=args.layers,
                     n_head=max(1, args.d_model // 64), resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                     bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(cfg)


def quantiles(xs: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(xs, n=4)
    return q[0], statistics.median(xs), q[2]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--format", default="fp6_e3m2")
    p.add_argument("--json", help="write the numbers here")
    a = p.parse_args(argv)

    torch.manual_seed(0)
    base_model = build(a)
    pqt_model = copy.deepcopy(base_model)
    arms = {
        "inductor": torch.compile(base_model),
        "pqt": pqt_compile.compile(pqt_model, pqt_compile.PQTConfig(format=a.format)),
    }
    opts = {"inductor": torch.optim.AdamW(base_model.parameters(), lr=1e-3),
            "pqt": torch.optim.AdamW(pqt_model.parameters(), lr=1e-3)}
    g = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, 256, (a.batch, a.seq), generator=g) for _ in range(a.warmup + a.steps)]

    def step(name: str, idx: torch.Tensor) -> float:
        t0 = time.perf_counter()
        loss = arms[name](idx, labels=idx, use_cache=False).loss
        loss.backward()
        opts[name].step()
        opts[name].zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    compile_s = {name: step(name, batches[0]) for name in arms}  # first call: compile + one step
    times: dict[str, list[float]] = {name: [] for name in arms}
    for i, idx in enumerate(batches[1:]):
        order = list(arms) if i % 2 == 0 else list(reversed(arms))
        for name in order:
            t = step(name, idx)
            if i >= a.warmup - 1:
                times[name].append(t)
    ratios = [p_ / b_ for p_, b_ in zip(times["pqt"], times["inductor"])]
    rows = []
    for name in arms:
        lo, med, hi = quantiles(times[name])
        rows.append([name, f"{compile_s[name]:.1f}", f"{med * 1e3:.1f}", f"{lo * 1e3:.1f}-{hi * 1e3:.1f}"])
    rlo, rmed, rhi = quantiles(ratios)
    n_params = sum(p.numel() for p in base_model.parameters())
    print(f"GPT-2 {a.layers} layers, d={a.d_model}, seq={a.seq}, batch={a.batch}, {n_params / 1e6:.2f}M params; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; {len(ratios)} interleaved steps\n")
    print(tabulate(rows, headers=["backend", "compile + 1st step (s)", "step median (ms)", "step IQR (ms)"]))
    print(f"\nstep time PQT / baseline: median {rmed:.3f} (IQR {rlo:.3f}-{rhi:.3f}); "
          f"compile time ratio {compile_s['pqt'] / compile_s['inductor']:.2f}")
    result = {"args": vars(a), "compile_s": compile_s, "step_s": times, "ratio_median": rmed, "ratio_iqr": [rlo, rhi],
              "torch": torch.__version__, "threads": torch.get_num_threads()}
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
