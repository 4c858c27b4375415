"""Markdown tables of main-job runs (results.json files), as docs/results.md shows them.

    python examples/science_table.py runs/science/*/results.json
"""

from __future__ import annotations

import json
import os
import sys


def _pm(s: dict, signed: bool = False) -> str:
    mean = f"{s['mean']:+.4f}" if signed else f"{s['mean']:.4f}"
    return mean if s["n"] == 1 else f"{mean} ± {s['std']:.4f}"


def table(path: str) -> str:
    with open(path) as f:
        r = json.load(f)
    a, agg = r["args"], r["aggregate"]
    metrics = list(agg["arms"]["baseline"])
    n = len(r["per_seed"])
    steps = f"{a['pretrain_steps']} pretrain + {a['steps']}" if a["scenario"] == "finetune" else str(a["steps"])
    noise = a["noise"] + (f", std {a['noise_std']}" if a.get("noise_std") else "")
    lines = [f"**{os.path.basename(os.path.dirname(path))}**: {a['scenario']}, {a['arch']} {a['size']}, {steps} steps, "
             f"trained for {a['format']}/{a['block_size'] or 'its own block'}, noise {noise}, seeds {a['seeds']} (n = {n}), "
             f"{r['wall_s'] / 60:.1f} min", "",
             "| arm | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for k, row in agg["arms"].items():
        lines.append(f"| {k} | " + " | ".join(_pm(row[m]) for m in metrics) + " |")
    lines.append("| *minus baseline, paired* | " + " | ".join("" for _ in metrics) + " |")
    for k, row in agg["minus_baseline"].items():
        if k != "baseline":
            better = sum(s["eval"][k][a["format"]] < s["eval"]["baseline"][a["format"]] for s in r["per_seed"])
            lines.append(f"| {k} ({better}/{n} seeds better at {a['format']}) | "
                         + " | ".join(_pm(row[m], signed=True) for m in metrics) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print("\n\n".join(table(p) for p in sys.argv[1:]))
