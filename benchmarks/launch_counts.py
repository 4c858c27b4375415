"""Kernel launches of a GPU training step, read off Inductor's Triton code without a GPU.

A step of `--layers` x nn.Linear(D, D) (forward, backward; the optimizer is not compiled), in
fp32 and under bf16 autocast, with plain `torch.compile` and with the pqt backend in each
`--formats` entry (and `share_sample=True`). Inductor generates its Triton code for CPU tensors
through the interpreter route (tests/support/triton_cpu.py, the tests' own support: CUDA's
code generation for a CPU machine) and the launches are the `.run(` calls of the forward and
backward output code. No timing: what a GPU would pay per step in launches, and in the host
work of the two wrappers (inputs, input checks, allocations, views, launches, library calls: each
about a microsecond of host time, whatever the device; `support.triton_cpu.host_calls`).

    TRITON_INTERPRET=1 python benchmarks/launch_counts.py [--layers 4] [--formats fp6_e3m2,nvfp4]
"""

from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported (route 1)
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from tabulate import tabulate  # noqa: E402
from torch._inductor.utils import run_and_get_code  # noqa: E402

import pqt_compile  # noqa: E402
from support.triton_cpu import host_calls, inductor_triton_on_cpu, launches, unavailable  # noqa: E402


def count(make, layers: int, d: int, autocast: bool) -> tuple[int, int, dict[str, int]]:
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(d, d) for _ in range(layers)])
    x = torch.randn(16, d)
    torch._dynamo.reset()

    def step(m, x):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = m(x)
        out.float().square().mean().backward()

    with inductor_triton_on_cpu():
        _, codes = run_and_get_code(step, make(model), x)
    assert len(codes) == 2, "one forward and one backward graph"
    fwd, bwd = host_calls(codes[0]), host_calls(codes[1])
    return len(launches(codes[0])), len(launches(codes[1])), {k: fwd[k] + bwd[k] for k in fwd}


def main(argv: list[str] | None = None) -> list[list]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--d", type=int, default=64)
    p.add_argument("--formats", default="fp6_e3m2,nvfp4")
    a = p.parse_args(argv)
    if (why := unavailable()) is not None:
        raise SystemExit(f"the interpreter route is unavailable here: {why}")
    arms = {"plain": lambda m: torch.compile(m)}
    for fmt in a.formats.split(","):
        cfg = pqt_compile.PQTConfig(format=fmt)
        arms[f"pqt {fmt}"] = lambda m, cfg=cfg: pqt_compile.compile(m, cfg)
        arms[f"pqt {fmt} shared"] = lambda m, cfg=cfg: pqt_compile.compile(m, cfg.replace(share_sample=True))
    rows, host_rows = [], []
    for dtype in ("fp32", "bf16"):
        base = None
        for name, make in arms.items():
            fwd, bwd, host = count(make, a.layers, a.d, dtype == "bf16")
            base = base or (fwd, bwd, host)
            extra = (fwd + bwd - base[0] - base[1]) / a.layers
            rows.append([dtype, name, fwd, bwd, fwd + bwd, f"{extra:+.2f}"])
            total, base_total = sum(host.values()), sum(base[2].values())
            host_rows.append([dtype, name, *host.values(), total, f"{(total - base_total) / a.layers:+.2f}"])
    print(f"{a.layers} x nn.Linear({a.d}, {a.d}), batch 16, forward + backward; torch {torch.__version__}; "
          "Inductor's Triton code (interpreter route, no GPU)\n")
    print(tabulate(rows, headers=["dtype", "arm", "forward", "backward", "step", "extra per weight"]))
    print("\nHost work of the wrappers per step (forward + backward), by the wrapper lines that do it:\n")
    print(tabulate(host_rows, headers=["dtype", "arm", *host.keys(), "all", "extra per weight"]))
    return rows + host_rows


if __name__ == "__main__":
    main()
