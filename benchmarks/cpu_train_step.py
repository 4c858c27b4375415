"""CPU: training-step time of backend="pqt" and of torchao's fake-quant QAT against plain Inductor.

All arms train the same small GPT-2 (transformers config, random init, no downloads) from the
same weights on the same batches, side by side in one process; their steps are interleaved
(one step of each arm per round, the order rotating from round to round) so that drift in the
machine's speed hits every arm alike. Reports each arm's median step time and, per arm, the
median of its per-round step-time ratios against plain Inductor with their spread (25th-75th
percentile, and min-max).

Arms:
- inductor: `torch.compile(model)`.
- pqt: `pqt_compile.compile(model, PQTConfig(format=...))` (block 32).
- pqt-shared (--share): pqt with one sample per step kept for the backward (PQTConfig(share_sample=True)).
- torchao: `quantize_(m, QATConfig(weight_config=IntxFakeQuantizeConfig(torch.int4, group_size=32),
  step="prepare"))` then `torch.compile`: fake-quant QAT of every nn.Linear weight. An optional
  peer (`pip install torchao`, or the `bench` extra): skipped with a note if it is missing.

HF GPT-2 writes its projections as `Conv1D` (weight [in, out], used by addmm), which torchao's
quantize_ does not touch (it swaps nn.Linear only). `--linear` (the default) rewrites every
Conv1D as the equivalent nn.Linear in all arms, so that every arm quantizes the same weights;
`--no-linear` keeps HF's Conv1D (then torchao fake-quantizes the tied LM head only).

    python benchmarks/cpu_train_step.py [--layers 2] [--d-model 256] [--seq 128] [--batch 8] [--rounds 15]
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
    model = GPT2LMHeadModel(cfg)
    if args.linear:
        conv1d_to_linear(model)
    return model


def conv1d_to_linear(model: torch.nn.Module) -> None:
    """Replace every HF Conv1D (y = x @ W + b, W [in, out]) by the same nn.Linear (W.T)."""
    from transformers.pytorch_utils import Conv1D

    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Conv1D):
                nx, nf = child.weight.shape
                lin = torch.nn.Linear(nx, nf)
                with torch.no_grad():
                    lin.weight.copy_(child.weight.t())
                    lin.bias.copy_(child.bias)
                setattr(parent, name, lin)


def torchao_arm(model: torch.nn.Module):
    """The torchao fake-quant QAT arm, or None (with the reason) if torchao is not importable."""
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torchao.quantization import quantize_
            from torchao.quantization.qat import IntxFakeQuantizeConfig, QATConfig
    except Exception as e:  # noqa: BLE001 - any import failure means: no such peer here
        return None, f"torchao not available ({type(e).__name__}: {e})"
    quantize_(model, QATConfig(weight_config=IntxFakeQuantizeConfig(torch.int4, group_size=32), step="prepare"))
    return torch.compile(model), None


def quantiles(xs: list[float]) -> tuple[float, float, float]:
    if len(xs) < 2:
        return xs[0], xs[0], xs[0]
    q = statistics.quantiles(xs, n=4)
    return q[0], statistics.median(xs), q[2]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rounds", type=int, default=15, help="timed rounds (one step of each arm per round)")
    p.add_argument("--steps-per-round", type=int, default=1)
    p.add_argument("--warmup", type=int, default=3, help="untimed rounds after the first (compiling) step")
    p.add_argument("--format", default="fp6_e3m2")
    p.add_argument("--linear", action=argparse.BooleanOptionalAction, default=True,
                   help="rewrite HF Conv1D as nn.Linear in every arm (default: on)")
    p.add_argument("--no-torchao", action="store_true", help="leave the torchao arm out")
    p.add_argument("--share", action="store_true", help="add the pqt-shared arm (one sample per step)")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (default: torch's own choice)")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="wall: time.perf_counter; cpu: this process's CPU time (time.process_time), which a "
                        "machine shared with other jobs disturbs less (use it with --threads 1: OpenMP "
                        "threads that spin-wait count as CPU time)")
    p.add_argument("--json", help="write the numbers here")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    clock = time.perf_counter if a.clock == "wall" else time.process_time

    torch.manual_seed(0)
    base_model = build(a)
    models = {"inductor": base_model, "pqt": copy.deepcopy(base_model)}
    arms = {"inductor": torch.compile(models["inductor"]),
            "pqt": pqt_compile.compile(models["pqt"], pqt_compile.PQTConfig(format=a.format))}
    if a.share:
        models["pqt-shared"] = copy.deepcopy(base_model)
        arms["pqt-shared"] = pqt_compile.compile(
            models["pqt-shared"], pqt_compile.PQTConfig(format=a.format, share_sample=True))
    notes = []
    if not a.no_torchao:
        m = copy.deepcopy(base_model)
        compiled, why = torchao_arm(m)
        if compiled is None:
            notes.append(f"torchao arm skipped: {why}")
        else:
            models["torchao"], arms["torchao"] = m, compiled
    opts = {name: torch.optim.AdamW(m.parameters(), lr=1e-3) for name, m in models.items()}
    g = torch.Generator().manual_seed(1)
    n_batches = 1 + (a.warmup + a.rounds) * a.steps_per_round
    batches = [torch.randint(0, 256, (a.batch, a.seq), generator=g) for _ in range(n_batches)]

    def step(name: str, idx: torch.Tensor) -> float:
        t0 = clock()
        loss = arms[name](idx, labels=idx, use_cache=False).loss
        loss.backward()
        opts[name].step()
        opts[name].zero_grad(set_to_none=True)
        return clock() - t0

    compile_s = {name: step(name, batches[0]) for name in arms}  # first call: compile + one step
    names = list(arms)
    times: dict[str, list[float]] = {name: [] for name in arms}
    for rnd in range(a.warmup + a.rounds):
        order = names[rnd % len(names):] + names[: rnd % len(names)]  # rotate who goes first
        if rnd % 2:
            order.reverse()
        for name in order:
            t = 0.0
            for s in range(a.steps_per_round):
                t += step(name, batches[1 + rnd * a.steps_per_round + s])
            if rnd >= a.warmup:
                times[name].append(t / a.steps_per_round)
    rows, ratios = [], {}
    for name in arms:
        lo, med, hi = quantiles(times[name])
        row = [name, f"{compile_s[name]:.1f}", f"{med * 1e3:.1f}", f"{lo * 1e3:.1f}-{hi * 1e3:.1f}"]
        if name != "inductor":
            r = [x / b for x, b in zip(times[name], times["inductor"])]
            rlo, rmed, rhi = quantiles(r)
            ratios[name] = {"median": rmed, "iqr": [rlo, rhi], "min": min(r), "max": max(r), "all": r}
            row.append(f"{rmed:.3f} (IQR {rlo:.3f}-{rhi:.3f}, min-max {min(r):.3f}-{max(r):.3f})")
        else:
            row.append("1")
        rows.append(row)
    n_params = sum(p.numel() for p in base_model.parameters())
    tokens = a.batch * a.seq
    print(f"GPT-2 {a.layers} layers, d={a.d_model}, vocab 256, batch {a.batch} x seq {a.seq} = {tokens} tokens/step, "
          f"{n_params / 1e6:.2f}M params, {'nn.Linear' if a.linear else 'HF Conv1D'} projections; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {a.clock} clock; {a.rounds} interleaved rounds of "
          f"{a.steps_per_round} step(s) after {a.warmup} warm-up rounds\n")
    print(tabulate(rows, headers=["arm", "compile + 1st step (s)", "step median (ms)", "step IQR (ms)",
                                  "step / inductor, median of per-round ratios"]))
    for n in notes:
        print("\nnote:", n)
    if "torchao" in ratios:
        print(f"\npqt - torchao (medians): {ratios['pqt']['median'] - ratios['torchao']['median']:+.3f}")
    result = {"args": vars(a), "tokens": tokens, "compile_s": compile_s, "step_s": times, "ratios": ratios,
              "notes": notes, "torch": torch.__version__, "threads": torch.get_num_threads(), "clock": a.clock}
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
