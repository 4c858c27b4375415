"""GPU kernel benchmarks of the sample (part of `benchmarks/gpu_train_step.py --kernels`):

- bandwidth: the compiled `pqt.sample` of a weight (fp32 in, bf16 out) against a device-to-device
  copy of the same weight, in GB/s of bytes moved (read fp32 + write bf16 for the sample; read +
  write for the copy);
- prologue: for M from 16 to 8192, `mm(x, pqt.sample_t(w))` with the sample in the prologue of
  Inductor's Triton GEMM template (max-autotune, TRITON templates only, so the prologue is taken
  without timing) against the same template GEMM on a precomputed w_hat, and against the
  default (cuBLAS + the separate sample kernel). docs/design.md's cost model predicts the
  prologue to pay only while M is about one BLOCK_M.

Times are CUDA-event medians; on `--device cpu` the same code runs with perf_counter (a smoke
test: CPU has no Triton templates, so the "prologue" arm is the plain C++ code).
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch

import pqt_compile
import pqt_compile.compiler.lowering  # noqa: F401  (registers the lowering)
from pqt_compile import PQTConfig


def _time(fn: Callable[[], object], device: torch.device, reps: int) -> float:
    """Median seconds of fn() over `reps` calls after two warm-up calls."""
    for _ in range(2):
        fn()
    out = []
    for _ in range(reps):
        if device.type == "cuda":
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            fn()
            e.record()
            torch.cuda.synchronize(device)
            out.append(s.elapsed_time(e) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return statistics.median(out)


def _sample_args(cfg: PQTConfig) -> tuple:
    return (1, cfg.format, cfg.block_code, cfg.noise, cfg.noise_std, torch.bfloat16)


def bandwidth(device: torch.device, n: int, k: int, reps: int, cfg: PQTConfig) -> dict:
    w = torch.randn(n, k, device=device)
    seed = torch.tensor(3, device=device)
    key = torch.tensor(4, device=device)
    sample = torch.compile(lambda w, s, kk: torch.ops.pqt.sample.default(w, s, kk, *_sample_args(cfg)))
    t_sample = _time(lambda: sample(w, seed, key), device, reps)
    t_copy = _time(lambda: w.clone(), device, reps)
    return {"shape": [n, k], "sample_s": t_sample, "copy_s": t_copy,
            "sample_GBps": w.numel() * 6 / t_sample / 1e9, "copy_GBps": w.numel() * 8 / t_copy / 1e9}


def prologue_sweep(device: torch.device, n: int, k: int, ms: list[int], reps: int, cfg: PQTConfig) -> list[dict]:
    w = torch.randn(n, k, device=device)
    seed = torch.tensor(3, device=device)
    key = torch.tensor(4, device=device)
    templates = {"max_autotune": True, "max_autotune_gemm_backends": "TRITON"} if device.type == "cuda" else {}
    fused = torch.compile(lambda x, w, s, kk: torch.mm(x, torch.ops.pqt.sample_t.default(w, s, kk, *_sample_args(cfg))),
                          options=templates or None, dynamic=False)
    plain = torch.compile(lambda x, wt: torch.mm(x, wt), options=templates or None, dynamic=False)
    default = torch.compile(lambda x, w, s, kk: torch.mm(x, torch.ops.pqt.sample.default(w, s, kk, *_sample_args(cfg)).t()),
                            dynamic=False)
    w_hat_t = pqt_compile.sample(w, seed=3, key=4, axis=1, config=cfg, out_dtype=torch.bfloat16).t().contiguous()
    rows = []
    for m in ms:
        x = torch.randn(m, k, device=device, dtype=torch.bfloat16)
        rows.append({"M": m,
                     "prologue_s": _time(lambda: fused(x, w, seed, key), device, reps),
                     "template_on_w_hat_s": _time(lambda: plain(x, w_hat_t), device, reps),
                     "default_s": _time(lambda: default(x, w, seed, key), device, reps)})
    return rows
