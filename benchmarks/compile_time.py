"""Compile time: the first training step of a small GPT-2 with plain Inductor and with pqt, cold.

Every first step runs in a fresh process with a fresh, empty Inductor cache directory
(TORCHINDUCTOR_CACHE_DIR), so Dynamo, AOTAutograd, the pass, Inductor's code generation and every
C++ (or Triton) kernel compile are paid, as on a user's first run. Arms alternate, `--repeats`
times each; the report gives each arm's median first-step time and the ratio of medians.

    python benchmarks/compile_time.py                              # 4 x 128 GPT-2, CPU, 3 repeats
    python benchmarks/compile_time.py --layers 12 --d-model 768 --device cuda   # GPT-2 124M on a GPU
    python benchmarks/compile_time.py --arms inductor,pqt,pqt-shared          # split pqt's extra
    git worktree add /tmp/base <rev> && python benchmarks/compile_time.py --baseline-checkout /tmp/base
                                                    # pqt before and after a change, in one run

`--baseline-checkout DIR` adds the arm `pqt@base`: pqt as another checkout of this repository
(DIR) compiles it, its child run from DIR's benchmarks/compile_time.py so that it imports DIR's
pqt_compile, alternated with the other arms. The report then adds the median of the per-round
ratios (each arm's time over the same round's inductor time), which is less sensitive to the
machine's drift over a run than the ratio of medians.

`pqt-shared` is pqt with `share_sample=True`: the backward reads the forward's samples and
regenerates none, so pqt-shared's extra over inductor is what the forward's samples cost to
compile, and pqt's extra over pqt-shared what the backward's regeneration costs.

One first step (the child mode, `--child ARM`) builds the model, then times one forward, backward
and optimizer step from the first call of the compiled model.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def child(a: argparse.Namespace) -> None:
    sys.path.insert(0, ROOT)
    import torch

    import pqt_compile
    from transformers import GPT2Config, GPT2LMHeadModel

    dev = torch.device(a.device)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=256, n_positions=a.seq, n_embd=a.d_model, n_layer=a.layers,
                                       n_head=max(1, a.d_model // 64), bos_token_id=0, eos_token_id=0)).to(dev)
    if a.child == "inductor":
        compiled = torch.compile(model)
    else:
        compiled = pqt_compile.compile(model, pqt_compile.PQTConfig(share_sample=a.child == "pqt-shared"))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    idx = torch.randint(0, 256, (a.batch, a.seq), device=dev)
    cuda = dev.type == "cuda"
    t0 = time.perf_counter()
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cuda):
        loss = compiled(idx, labels=idx, use_cache=False).loss
    loss.backward()
    opt.step()
    if cuda:
        torch.cuda.synchronize()
    print(json.dumps({"first_step_s": time.perf_counter() - t0}))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--arms", default="inductor,pqt", help="comma-separated: inductor, pqt, pqt-shared")
    p.add_argument("--baseline-checkout", metavar="DIR",
                   help="also time pqt as the checkout in DIR compiles it (arm pqt@base)")
    p.add_argument("--child", choices=["inductor", "pqt", "pqt-shared"], help=argparse.SUPPRESS)
    p.add_argument("--json", help="write the numbers here")
    a = p.parse_args(argv)
    if a.child:
        child(a)
        return {}
    shape = ["--layers", str(a.layers), "--d-model", str(a.d_model), "--seq", str(a.seq), "--batch", str(a.batch),
             "--device", a.device]
    arms = a.arms.split(",")
    unknown = sorted(set(arms) - {"inductor", "pqt", "pqt-shared"})
    if unknown or "inductor" not in arms or len(set(arms)) != len(arms):
        p.error(f"--arms {a.arms!r}: give each of inductor, pqt, pqt-shared at most once, inductor included "
                f"(the ratios are against it){'; unknown: ' + ', '.join(unknown) if unknown else ''}")
    # arm -> (the script whose child runs it, its child mode)
    scripts = {arm: (os.path.abspath(__file__), arm) for arm in arms}
    if a.baseline_checkout:
        base = os.path.join(os.path.abspath(a.baseline_checkout), "benchmarks", "compile_time.py")
        if not os.path.isfile(base):
            p.error(f"--baseline-checkout {a.baseline_checkout!r}: no benchmarks/compile_time.py there; give a checkout "
                    "of this repository (git worktree add DIR REV)")
        scripts["pqt@base"] = (base, "pqt")
    times: dict[str, list[float]] = {arm: [] for arm in scripts}
    for rep in range(a.repeats):
        order = list(scripts)
        for arm in (order if rep % 2 == 0 else order[::-1]):
            script, mode = scripts[arm]
            with tempfile.TemporaryDirectory() as cache:
                env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache, "TRITON_CACHE_DIR": os.path.join(cache, "triton")}
                r = subprocess.run([sys.executable, script, "--child", mode, *shape], env=env,
                                   capture_output=True, text=True, timeout=1800)
                if r.returncode != 0:
                    raise SystemExit(f"compile_time: the {arm} child failed:\n{r.stderr[-3000:]}")
                times[arm].append(json.loads(r.stdout.strip().splitlines()[-1])["first_step_s"])
    med = {k: statistics.median(v) for k, v in times.items()}
    per_round = {k: statistics.median([t / i for t, i in zip(v, times["inductor"])]) for k, v in times.items()
                 if k != "inductor"}
    out = {"args": {k: v for k, v in vars(a).items() if k != "child"}, "first_step_s": times, "median_s": med,
           "ratio": {k: med[k] / med["inductor"] for k in med if k != "inductor"}, "per_round_ratio": per_round}
    print(f"GPT-2 {a.layers} x {a.d_model}, {a.batch} x {a.seq} tokens, {a.device}, cold Inductor cache, "
          f"{a.repeats} repeats per arm (alternating)")
    for k, v in times.items():
        print(f"  {k:9s} first step: median {med[k]:.1f} s  ({', '.join(f'{x:.1f}' for x in v)})")
    for k, r in out["ratio"].items():
        print(f"  {k} / inductor: {r:.2f} (median of per-round ratios {per_round[k]:.2f})")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
