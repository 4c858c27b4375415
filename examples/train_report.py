"""The main job's report: every arm's clean and quantized loss over seeds, the verdict as
measured, and the plot (examples/train.py trains; this module only reads its numbers)."""

from __future__ import annotations

import statistics

__all__ = ["aggregate", "verdict", "report", "throughput", "stopped_lines", "plot"]


def _stats(xs: list[float]) -> dict:
    """mean, sample std (0 for one value), min, max, n."""
    return {"mean": statistics.fmean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0,
            "min": min(xs), "max": max(xs), "n": len(xs)}


def aggregate(results: dict) -> dict:
    """{arm: {metric: stats over seeds}}, and {arm: {metric: stats of (arm - baseline), paired by seed}}."""
    runs = results["per_seed"]
    arms = list(runs[0]["eval"])
    metrics = list(runs[0]["eval"]["baseline"])
    agg = {k: {m: _stats([r["eval"][k][m] for r in runs]) for m in metrics} for k in arms}
    diff = {k: {m: _stats([r["eval"][k][m] - r["eval"]["baseline"][m] for r in runs]) for m in metrics} for k in arms}
    return {"arms": agg, "minus_baseline": diff}


def verdict(results: dict, fmt: str, recommended: str) -> dict:
    """Which arm gives the best model after quantization to `fmt` (mean over seeds), and, per arm,
    its quantized and clean change against the baseline with the seeds where it was better."""
    runs = results["per_seed"]
    agg = results["aggregate"]
    arms = list(agg["arms"])
    best = min(arms, key=lambda k: agg["arms"][k][fmt]["mean"])
    per_arm = {}
    for k in arms:
        d = agg["minus_baseline"][k][fmt]
        wins = sum(r["eval"][k][fmt] < r["eval"]["baseline"][fmt] for r in runs)
        per_arm[k] = {"quantized_minus_baseline": d["mean"], "spread": d["std"], "seeds_better": wins,
                      "clean_minus_baseline": agg["minus_baseline"][k]["clean"]["mean"]}
    v = {"format": fmt, "seeds": len(runs), "best_quantized_arm": best, "per_arm": per_arm, "recommended": recommended}
    if "pqt" in per_arm:
        p = per_arm["pqt"]
        v["pqt_pays"] = p["quantized_minus_baseline"] < 0 and p["seeds_better"] == len(runs)
    if recommended in per_arm:
        v["recommended_is_best"] = best == recommended
        if "ste" in per_arm and recommended != "ste":  # the peer users would pick otherwise, paired by seed
            d = [r["eval"][recommended][fmt] - r["eval"]["ste"][fmt] for r in runs]
            c = [r["eval"][recommended]["clean"] - r["eval"]["ste"]["clean"] for r in runs]
            v["recommended_minus_ste"] = {"quantized": _stats(d), "clean": _stats(c),
                                          "seeds_better": sum(x < 0 for x in d)}
    return v


def _pm(s: dict) -> str:
    return f"{s['mean']:.4f}" if s["n"] == 1 else f"{s['mean']:.4f} ± {s['std']:.4f}"


def report(results: dict, fmt: str) -> str:
    """The tables and verdict lines the job prints."""
    from tabulate import tabulate

    agg, v = results["aggregate"], results["verdict"]
    arms = list(agg["arms"])
    metrics = list(agg["arms"]["baseline"])
    n = v["seeds"]
    rows = [[k] + [_pm(agg["arms"][k][m]) for m in metrics] for k in arms]
    lines = [f"validation loss (nats/byte), {'mean ± std over ' + str(n) + ' seeds' if n > 1 else 'one seed'}; "
             f"a format column is the loss after round-to-nearest quantization to it",
             tabulate(rows, headers=["arm"] + metrics), ""]
    drows = [[k] + [_pm(agg["minus_baseline"][k][m]) for m in metrics] for k in arms if k != "baseline"]
    lines += ["change against the baseline, paired by seed (negative: better)",
              tabulate(drows, headers=["arm"] + metrics), ""]
    lines += throughput(results)
    best = v["best_quantized_arm"]
    lines.append(f"best model after {fmt} quantization: {best} "
                 f"({agg['arms'][best][fmt]['mean']:.4f} vs baseline {agg['arms']['baseline'][fmt]['mean']:.4f})")
    for k, p in v["per_arm"].items():
        if k == "baseline":
            continue
        lines.append(f"  {k}: {fmt} loss {p['quantized_minus_baseline']:+.4f} vs baseline (better in {p['seeds_better']}/{n} seeds), "
                     f"clean {p['clean_minus_baseline']:+.4f}")
    if "pqt_pays" in v:
        lines.append(f"PQT alone {'beats' if v['pqt_pays'] else 'does NOT beat'} the baseline after {fmt} quantization in every seed")
    if "recommended_is_best" in v:
        lines.append(f"the recommended recipe ({v['recommended']}) {'is' if v['recommended_is_best'] else 'is NOT'} the best arm here")
    if "recommended_minus_ste" in v:
        d = v["recommended_minus_ste"]
        lines.append(f"  {v['recommended']} minus ste, paired: {fmt} {_pm(d['quantized'])} (better in {d['seeds_better']}/{n} "
                     f"seeds), clean {_pm(d['clean'])}")
    if n < 3:
        lines.append(f"(one verdict from {n} seed{'s' if n > 1 else ''}: differences below ~0.01 nats are within seed-to-seed spread; use --seeds 0,1,2)")
    pre = results.get("args", {}).get("pretrain_seed")
    if pre is not None and results.get("args", {}).get("scenario") == "finetune":
        lines.append(f"(every seed fine-tunes the one checkpoint pretrained with seed {pre}: the spread is the batches' "
                     "and the noise's, not the starting weights')")
    lines += stopped_lines(results)
    return "\n".join(lines)


def throughput(results: dict) -> list[str]:
    """Each arm's training throughput (median step of the first seed, compiling steps left out),
    the step time against the baseline's paired by step, and what each compile took."""
    first = results["per_seed"][0]
    ratios = first["step_time_ratio_median"]
    lines = ["throughput (tokens/s, median step; first seed): " + ", ".join(
        f"{k} {first['tokens_per_s'][k]:,.0f} ({first['step_ms_median'][k]:.1f} ms)" for k in first["tokens_per_s"])]
    lines.append("step time / baseline (median, paired by step): "
                 + ", ".join(f"{k} {r:.3f}" for k, r in ratios.items() if k != "baseline"))
    if results.get("compiles"):
        lines.append("compiles (first step of each stage, seconds): " + ", ".join(
            f"{c['arm']} {c['stage']} {c['s']:.1f} ({c['kind']})" for c in results["compiles"]))
    return lines


def stopped_lines(results: dict) -> list[str]:
    """What the time limit cut, if it did: the numbers above are partial."""
    st = results.get("stopped")
    if not st:
        return []
    if st["phase"] == "fine-tuning":
        what = f"seed {st['seed']} stopped after {st['step']} of {st['of']} steps"
    elif st["phase"] == "seeds":
        what = f"seed {st['seed']} and later not run (one needs about {st['needed_s']:.0f} s)"
    else:
        what = st.get("reason", st["phase"])
    used = ", ".join(str(r["seed"]) for r in results["per_seed"])
    return [f"PARTIAL: the time limit ({st['limit_s']:g} s) ran out at {st['elapsed_s']:.0f} s: {what}; "
            f"the tables are over seed(s) {used}"
            + ("" if all(r.get("complete", True) for r in results["per_seed"]) else ", cut short")]


def plot(results: dict, fmt: str, path: str) -> str:
    """Clean (solid) and quantized (dashed) validation curves per arm, the mean over seeds."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "no plot: matplotlib is not installed (pip install matplotlib)"
    runs = results["per_seed"]
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple"]
    for c, k in zip(colors, runs[0]["val_curve"]):
        steps = [p[0] for p in runs[0]["val_curve"][k]]
        for j, style, label in ((1, "-", "clean"), (2, "--", f"{fmt} RTN")):
            ys = [statistics.fmean(r["val_curve"][k][i][j] for r in runs) for i in range(len(steps))]
            ax.plot(steps, ys, style, color=c, marker="o", ms=3, lw=1.3, label=f"{k} {label}")
    ax.set_xlabel("step")
    ax.set_ylabel(f"val loss (nats/byte), mean of {len(runs)} seed{'s' if len(runs) > 1 else ''}")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return f"plot: {path}"

