"""GPU: training-step time and peak memory of backend="pqt" against plain Inductor and torchao's
fake-quant QAT, in one run. For a user with a CUDA GPU (none was available to this project, so
no GPU number in docs/results.md comes from it yet):

    python benchmarks/gpu_train_step.py --model gpt2-124m --kernels --share   # GPT-2 124M + kernel benchmarks
    python benchmarks/gpu_train_step.py --model llama-1b --batch 4 --seq 2048  # a 1.1B Llama
    bash scripts/gpu-check.sh                                                # all of the GPU check, one report

Every arm trains the same GPT-2 (random init, vocab 256, projections as nn.Linear so that
torchao quantizes the same weights) from the same weights on the same batches, steps interleaved
with the order rotating per round. Each step is timed with CUDA events; each arm's peak memory
(torch.cuda.max_memory_allocated over its steps) is reported with the ratio against Inductor's,
the paper's "2 bytes per parameter" claim being the one to check (Ahn & Yoo, arXiv 2505.11170).
Also per arm: the first step's wall time (Dynamo, AOTAutograd and Inductor compile included: the
compile-time cost, issue 24 item 7) and, with --profile, a profile of a few steps
(benchmarks/step_profile.py: kernels per step, device-busy time against step time, top kernels,
the pqt kernels' share). `--device cpu` runs the same code on the CPU (a smoke test; use
cpu_train_step.py for CPU numbers).
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
from step_profile import profile_steps  # noqa: E402

ARMS = ("inductor", "pqt", "pqt-shared", "pqt-combo", "torchao")


def build_model(a: argparse.Namespace) -> torch.nn.Module:
    """The benchmark's model: cpu_train_step's GPT-2 for "gpt2", else a preset from transformers."""
    if a.model == "gpt2":
        return build(a)
    if a.model == "gpt2-124m":
        from transformers import GPT2Config, GPT2LMHeadModel

        from cpu_train_step import conv1d_to_linear

        m = GPT2LMHeadModel(GPT2Config(n_positions=max(1024, a.seq)))
        conv1d_to_linear(m)
        return m
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                                        num_attention_heads=32, num_key_value_heads=4, vocab_size=32000,
                                        max_position_embeddings=max(2048, a.seq)))


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
    p.add_argument("--arms", help=f"comma-separated arms, from {', '.join(ARMS)} (default: inductor, pqt, "
                                  "pqt-shared with --share, torchao unless --no-torchao); pqt-combo: pqt with "
                                  "Inductor's combo kernels (horizontal fusion)")
    p.add_argument("--profile", action="store_true", help="profile a few steps of each arm (step_profile.py)")
    p.add_argument("--model", choices=["gpt2", "gpt2-124m", "llama-1b"], default="gpt2",
                   help="gpt2: the shape given by --layers/--d-model (vocab 256); gpt2-124m: GPT-2 small "
                        "(12 x 768, vocab 50257); llama-1b: a 1.1B Llama (22 x 2048, GQA 32/4, FFN 5632, vocab 32000)")
    p.add_argument("--kernels", action="store_true",
                   help="also run benchmarks/gpu_kernels.py: the sample's bandwidth against a copy, and the "
                        "prologue GEMM against plain GEMMs for M in --m-sweep")
    p.add_argument("--m-sweep", default="16,32,64,128,256,512,1024,2048,4096,8192")
    p.add_argument("--no-train", action="store_true", help="only the kernel benchmarks")
    p.add_argument("--device", default="cuda")
    p.add_argument("--json", help="write the numbers here")
    a = p.parse_args(argv)
    a.linear = True
    dev = torch.device(a.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_train_step: no CUDA device here; run it on a machine with a GPU "
                         "(or --device cpu for a smoke test; CPU numbers come from cpu_train_step.py)")
    cuda = dev.type == "cuda"

    if a.profile and not cuda:
        # The smoke mode's profile counts Inductor's C++ kernels, which are recorded only with this
        # option (a benchmark process: set for the whole run).
        import torch._inductor.config as inductor_config

        inductor_config.cpp.enable_kernel_profile = True
    result = {"args": vars(a), "torch": torch.__version__, "device": str(dev), "arms": {}}
    if a.kernels:
        import gpu_kernels

        cfg = pqt_compile.PQTConfig(format=a.format)
        side = 8192 if cuda else 256
        result["bandwidth"] = gpu_kernels.bandwidth(dev, side, side, a.rounds, cfg)
        result["prologue"] = gpu_kernels.prologue_sweep(dev, 4096 if cuda else 64, 4096 if cuda else 64,
                                                        [int(m) for m in a.m_sweep.split(",")], a.rounds, cfg)
        bw = result["bandwidth"]
        print(f"sample of a {bw['shape']} fp32 weight: {bw['sample_GBps']:.0f} GB/s; copy: {bw['copy_GBps']:.0f} GB/s\n")
        print(tabulate([[r["M"], f"{r['prologue_s'] * 1e6:.1f}", f"{r['template_on_w_hat_s'] * 1e6:.1f}",
                         f"{r['default_s'] * 1e6:.1f}"] for r in result["prologue"]],
                       headers=["M", "prologue GEMM (us)", "template on w_hat (us)", "default: sample + GEMM (us)"]))
        print()
    if a.no_train:
        if a.json:
            with open(a.json, "w") as f:
                json.dump(result, f, indent=1)
        return result

    torch.manual_seed(0)
    base = build_model(a).to(dev)
    wanted = a.arms.split(",") if a.arms else (["inductor", "pqt"] + (["pqt-shared"] if a.share else [])
                                               + ([] if a.no_torchao else ["torchao"]))
    unknown = sorted(set(wanted) - set(ARMS))
    if unknown or "inductor" not in wanted:
        raise SystemExit(f"gpu_train_step: --arms must include inductor (the baseline) and name only {', '.join(ARMS)}; "
                         f"got {a.arms!r}")
    cfg = pqt_compile.PQTConfig(format=a.format)
    makers = {
        "inductor": lambda m: torch.compile(m),
        "pqt": lambda m: pqt_compile.compile(m, cfg),
        "pqt-shared": lambda m: pqt_compile.compile(m, cfg.replace(share_sample=True)),
        "pqt-combo": lambda m: pqt_compile.compile(m, cfg, options={"combo_kernels": True}),
    }
    models, arms, notes = {}, {}, []
    for name in wanted:
        m = base if name == "inductor" else copy.deepcopy(base)
        if name == "torchao":
            compiled, why = torchao_arm(m)
            if compiled is None:
                notes.append(f"torchao arm skipped: {why}")
                continue
            models[name], arms[name] = m, compiled
        else:
            models[name], arms[name] = m, makers[name](m)
    vocab = base.config.vocab_size
    opts = {n: torch.optim.AdamW(m.parameters(), lr=1e-4, fused=cuda) for n, m in models.items()}
    g = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, vocab, (a.batch, a.seq), generator=g).to(dev) for _ in range(1 + a.warmup + a.rounds)]
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

    first_step = {}
    for n in arms:  # the first step compiles: its wall time is the compile-time cost
        t0 = time.perf_counter()
        step(n, batches[0])
        first_step[n] = time.perf_counter() - t0
    names, times = list(arms), {n: [] for n in arms}
    for rnd in range(a.warmup + a.rounds):
        order = names[rnd % len(names):] + names[: rnd % len(names)]
        for n in order:
            t = step(n, batches[1 + rnd])
            if rnd >= a.warmup:
                times[n].append(t)
    rows = []
    n_params = sum(q.numel() for q in base.parameters())
    dev_name = torch.cuda.get_device_name(dev) if cuda else "cpu"
    for n in arms:
        lo, med, hi = quantiles(times[n])
        r = [x / b for x, b in zip(times[n], times["inductor"])]
        rlo, rmed, rhi = quantiles(r)
        mem = peak[n] / max(peak["inductor"], 1) if cuda else float("nan")
        extra = (peak[n] - peak["inductor"]) / n_params if cuda else float("nan")
        rows.append([n, f"{med * 1e3:.2f}", f"{a.batch * a.seq / med:.0f}", f"{rmed:.3f} ({rlo:.3f}-{rhi:.3f})",
                     f"{peak[n] / 2**30:.2f}" if cuda else "-", f"{mem:.3f}" if cuda else "-",
                     f"{extra:.2f}" if cuda else "-"])
        result["arms"][n] = {"step_s": times[n], "ratio_median": rmed, "ratio_iqr": [rlo, rhi], "peak_bytes": peak[n],
                             "first_step_s": first_step[n], "first_step_ratio": first_step[n] / first_step["inductor"]}
    print(f"{a.model} ({n_params / 1e6:.0f}M params), {a.batch} x {a.seq} tokens/step, {'bf16 autocast' if cuda else 'fp32'}, {dev_name}, "
          f"torch {torch.__version__}; {a.rounds} interleaved rounds after {a.warmup}\n")
    print(tabulate(rows, headers=["arm", "step median (ms)", "tokens/s", "step / inductor (IQR)", "peak GiB",
                                  "peak / inductor", "extra bytes / param"]))
    print("\nfirst step (compile included), s: " + ", ".join(
        f"{n} {first_step[n]:.1f} ({first_step[n] / first_step['inductor']:.2f}x)" for n in arms))
    if a.profile:
        prof_rows = []
        for n in arms:
            prof = profile_steps(lambda n=n: step(n, batches[-1]), dev)
            result["arms"][n]["profile"] = prof
            prof_rows.append([n, f"{prof['kernels_per_step']:.0f}", f"{prof['pqt_kernels_per_step']:.0f}",
                              f"{prof['device_busy_us_per_step'] / 1e3:.2f}", f"{prof['wall_us_per_step'] / 1e3:.2f}",
                              f"{prof['busy_fraction']:.2f}", f"{prof['pqt_share_of_kernel_time']:.3f}"])
        print()
        print(tabulate(prof_rows, headers=["arm", "kernels / step", "pqt kernels / step", "device busy (ms)",
                                           "step wall (ms)", "busy / wall", "pqt share of kernel time"]))
        for n in arms:
            print(f"\ntop kernels, {n}:")
            print(tabulate([[k["name"], f"{k['us_per_step']:.1f}", f"{k['share']:.3f}"]
                            for k in result["arms"][n]["profile"]["top_kernels"]],
                           headers=["kernel", "us / step", "share"]))
    for note in notes:
        print("\nnote:", note)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
