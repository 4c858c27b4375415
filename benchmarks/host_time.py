"""Host time per training step where compute is negligible: what pqt adds on the host.

12 x nn.Linear(8, 8), batch 4, SGD, one thread: a step is almost all host work (Python, the
compiled wrappers, kernel calls, allocations, autograd), the regime of a GPU step whose kernels
are small. Arms, from the same weights on the same batches, steps interleaved (the order rotating
per round), each timed by this thread's CPU time (less sensitive than wall time to other work on
the machine):

  inductor    plain `torch.compile` (the baseline)
  pqt         `pqt_compile.compile(model, PQTConfig(format))`
  pqt-none    pqt with include=["^$"]: nothing admitted: the wrapper and the graph's extra inputs only
  pqt-shared  pqt with share_sample=True: the forward's samples only (the backward regenerates none)

The breakdown: wrapper and inputs = pqt-none - inductor; forward samples = pqt-shared - pqt-none;
backward regeneration = pqt - pqt-shared (each a difference of medians, in microseconds).

    python benchmarks/host_time.py [--rounds 40] [--steps 20] [--phases]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
import warnings

import torch
from tabulate import tabulate

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import pqt_compile  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--steps", type=int, default=20, help="steps per arm per round")
    p.add_argument("--format", default="fp6_e3m2")
    p.add_argument("--phases", action="store_true",
                   help="also time forward, backward and optimizer step apart (extra steps per round)")
    p.add_argument("--json")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    base = torch.nn.Sequential(*[torch.nn.Linear(a.width, a.width) for _ in range(a.layers)])
    cfg = pqt_compile.PQTConfig(format=a.format)
    # pqt-none admits nothing on purpose; the guard that says so is for users.
    warnings.filterwarnings("ignore", message="pqt: this training call ran PQT-compiled graphs but sampled no weight")
    warnings.filterwarnings("ignore", message="pqt: the PQTConfig's include pattern '\\^\\$' matches no parameter name")
    makers = {
        "inductor": lambda m: torch.compile(m),
        "pqt": lambda m: pqt_compile.compile(m, cfg),
        "pqt-none": lambda m: pqt_compile.compile(m, cfg.replace(include=("^$",))),
        "pqt-shared": lambda m: pqt_compile.compile(m, cfg.replace(share_sample=True)),
    }
    arms = {}
    for name, make in makers.items():
        m = copy.deepcopy(base)
        arms[name] = (make(m), torch.optim.SGD(m.parameters(), lr=1e-3))
    x = torch.randn(4, a.width)

    phase_times: dict[str, list[list[int]]] = {n: [[], [], []] for n in makers}

    def step(compiled, opt, phases=None):
        t0 = time.thread_time_ns()
        loss = compiled(x).square().mean()
        t1 = time.thread_time_ns()
        loss.backward()
        t2 = time.thread_time_ns()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if phases is not None:
            t3 = time.thread_time_ns()
            for acc, dt in zip(phases, (t1 - t0, t2 - t1, t3 - t2)):
                acc.append(dt)

    for compiled, opt in arms.values():  # compile and warm up
        for _ in range(5):
            step(compiled, opt)
    names = list(arms)
    times: dict[str, list[float]] = {n: [] for n in names}
    for rnd in range(a.rounds):
        for n in names[rnd % len(names):] + names[: rnd % len(names)]:
            compiled, opt = arms[n]
            t0 = time.thread_time()
            for _ in range(a.steps):
                step(compiled, opt)
            times[n].append((time.thread_time() - t0) / a.steps * 1e6)
            if a.phases:  # separate steps, so the per-step totals above carry no timer calls
                for _ in range(a.steps):
                    step(compiled, opt, phase_times[n])
    med = {n: statistics.median(v) for n, v in times.items()}
    ratio = {n: statistics.median([t / b for t, b in zip(v, times["inductor"])]) for n, v in times.items()}
    q = {n: statistics.quantiles([t / b for t, b in zip(v, times["inductor"])], n=4) for n, v in times.items()}
    rows = [[n, f"{med[n]:.1f}", f"{ratio[n]:.3f} ({q[n][0]:.3f}-{q[n][2]:.3f})"] for n in names]
    breakdown = {"wrapper and inputs": med["pqt-none"] - med["inductor"],
                 "forward samples": med["pqt-shared"] - med["pqt-none"],
                 "backward regeneration": med["pqt"] - med["pqt-shared"]}
    print(f"{a.layers} x nn.Linear({a.width}, {a.width}), batch 4, SGD, 1 thread, torch {torch.__version__}; "
          f"{a.rounds} interleaved rounds of {a.steps} steps; thread CPU time per step\n")
    print(tabulate(rows, headers=["arm", "step (us, median)", "step / inductor (median of rounds, IQR)"]))
    print("\nwhat pqt adds (us per step, differences of medians): " +
          ", ".join(f"{k} {v:.1f}" for k, v in breakdown.items()))
    phase_med = {}
    if a.phases:
        phase_med = {n: [statistics.median(v) / 1e3 for v in phase_times[n]] for n in names}
        print("\nby phase (us per step, medians; forward = the compiled call and the loss):")
        print(tabulate([[n, *(f"{t:.1f}" for t in phase_med[n]),
                         *(f"{t - b:+.1f}" for t, b in zip(phase_med[n], phase_med["inductor"]))] for n in names],
                       headers=["arm", "forward", "backward", "optimizer", "forward - inductor",
                                "backward - inductor", "optimizer - inductor"]))
    out = {"args": vars(a), "torch": torch.__version__, "median_us": med, "ratio": ratio, "breakdown_us": breakdown,
           "phases_us": phase_med, "times_us": times}
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
