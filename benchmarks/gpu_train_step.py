"""GPU: training-step time and peak memory of backend="pqt" against plain Inductor and torchao's
fake-quant QAT, in one run. For a user with a CUDA GPU (none was available to this project, so
no GPU number in docs/results.md comes from it yet):

    python benchmarks/gpu_train_step.py                      # GPT-2 small shape, bf16 autocast
    python benchmarks/gpu_train_step.py --layers 24 --d-model 1024 --batch 4 --seq 2048 --share

Every arm trains the same GPT-2 (random init, vocab 256, projections as nn.Linear so that
torchao quantizes the same weights) from the same weights on the same batches, steps interleaved
with the order rotating per round. Each step is timed with CUDA events; each arm's peak memory
(torch.cuda.max_memory_allocated over its steps) is reported with the ratio against Inductor's,
the paper's "2 bytes per parameter" claim being the one to check (Ahn & Yoo, arXiv 2505.11170).
`--device cpu` runs the same code on the CPU (a smoke test; use cpu_train_step.py for CPU numbers).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time

import torch
from tabulate import tabulate

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import pqt_compile  # noqa: E402
from cpu_train_step import build, quantiles, torchao_arm  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--d-model", type=int, default=768)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--format", default="fp6_e3m2")
    p.add_argument("--share", action="store_true", help="add the pqt-shared arm (PQTConfig(share_sample=True))")
    p.add_argument("--no-torchao", action="store_true")
    p.add_argument("--device", default="cuda")
    p.add_argument("--json", help="write the numbers here")
    a = p.parse_args(argv)
    a.linear = True
    dev = torch.device(a.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_train_step: no CUDA device here; run it on a machine with a GPU "
                         "(or --device cpu for a smoke test; CPU numbers come from cpu_train_step.py)")
    cuda = dev.type == "cuda"

    torch.manual_seed(0)
    base = build(a).to(dev)
    models = {"inductor": base, "pqt": copy.deepcopy(base)}
    arms = {"inductor": torch.compile(models["inductor"]),
            "pqt": pqt_compile.compile(models["pqt"], pqt_compile.PQTConfig(format=a.format))}
    if a.share:
        models["pqt-shared"] = copy.deepcopy(base)
        arms["pqt-shared"] = pqt_compile.compile(models["pqt-shared"],
                                                 pqt_compile.PQTConfig(format=a.format, share_sample=True))
    notes = []
    if not a.no_torchao:
        m = copy.deepcopy(base)
        compiled, why = torchao_arm(m)
        if compiled is None:
            notes.append(f"torchao arm skipped: {why}")
        else:
            models["torchao"], arms["torchao"] = m, compiled
    opts = {n: torch.optim.AdamW(m.parameters(), lr=1e-4, fused=cuda) for n, m in models.items()}
    g = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, 256, (a.batch, a.seq), generator=g).to(dev) for _ in range(1 + a.warmup + a.rounds)]
    peak = {n: 0 for n in arms}

    def step(name: str, idx: torch.Tensor) -> float:
        if cuda:
            torch.cuda.reset_peak_memory_stats(dev)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        else:
            t0 = time.perf_counter()
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cuda):
            loss = arms[name](idx, labels=idx, use_cache=False).loss
        loss.backward()
        opts[name].step()
        opts[name].zero_grad(set_to_none=True)
        if cuda:
            end.record()
            torch.cuda.synchronize(dev)
            peak[name] = max(peak[name], torch.cuda.max_memory_allocated(dev))
            return start.elapsed_time(end) / 1e3
        return time.perf_counter() - t0

    for n in arms:
        step(n, batches[0])  # compile
    names, times = list(arms), {n: [] for n in arms}
    for rnd in range(a.warmup + a.rounds):
        order = names[rnd % len(names):] + names[: rnd % len(names)]
        for n in order:
            t = step(n, batches[1 + rnd])
            if rnd >= a.warmup:
                times[n].append(t)
    rows, result = [], {"args": vars(a), "torch": torch.__version__, "device": str(dev), "arms": {}}
    dev_name = torch.cuda.get_device_name(dev) if cuda else "cpu"
    for n in arms:
        lo, med, hi = quantiles(times[n])
        r = [x / b for x, b in zip(times[n], times["inductor"])]
        rlo, rmed, rhi = quantiles(r)
        mem = peak[n] / max(peak["inductor"], 1) if cuda else float("nan")
        rows.append([n, f"{med * 1e3:.2f}", f"{lo * 1e3:.2f}-{hi * 1e3:.2f}", f"{rmed:.3f} ({rlo:.3f}-{rhi:.3f})",
                     f"{peak[n] / 2**30:.2f}" if cuda else "-", f"{mem:.3f}" if cuda else "-"])
        result["arms"][n] = {"step_s": times[n], "ratio_median": rmed, "ratio_iqr": [rlo, rhi], "peak_bytes": peak[n]}
    print(f"GPT-2 {a.layers} x {a.d_model}, {a.batch} x {a.seq} tokens/step, {'bf16 autocast' if cuda else 'fp32'}, {dev_name}, "
          f"torch {torch.__version__}; {a.rounds} interleaved rounds after {a.warmup}\n")
    print(tabulate(rows, headers=["arm", "step median (ms)", "IQR (ms)", "step / inductor (IQR)", "peak GiB",
                                  "peak / inductor"]))
    for note in notes:
        print("\nnote:", note)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
