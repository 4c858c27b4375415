"""Where a training step's time goes, per arm: the profiler's view of a few steps.

For each arm: kernels launched per step, the device-busy time (the union of the kernels'
intervals) against the step's wall time, the top kernels by device time, and the share of the
pqt kernels (those Inductor names after the sample: `*sample*`, from the op's name; the pass
sets the sample node's `original_aten`, compiler/passes/insert_sample.py). On the CPU (the smoke
mode) the same code counts Inductor's C++ kernels instead (recorded when Inductor's
`cpp.enable_kernel_profile` is on, as gpu_train_step.py sets it there): the code path is what is
exercised there, not the numbers.
"""

from __future__ import annotations

import time
from typing import Callable

import torch

__all__ = ["profile_steps", "is_pqt_kernel"]


def is_pqt_kernel(name: str) -> bool:
    """Whether a kernel computes a PQT sample (Inductor's descriptive kernel names carry `sample`)."""
    return "sample" in name


def _union_us(intervals: list[tuple[float, float]]) -> float:
    """Total length of the union of [start, end) intervals (microseconds)."""
    total, end = 0.0, float("-inf")
    for s, e in sorted(intervals):
        if s > end:
            total += e - s
            end = e
        elif e > end:
            total += e - end
            end = e
    return total


def profile_steps(step: Callable[[], None], device: torch.device, steps: int = 3, top: int = 8) -> dict:
    """Profile `steps` calls of `step` (already warm) and summarise them per step."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    if cuda:
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        if cuda:
            torch.cuda.synchronize(device)
    wall_us = (time.perf_counter() - t0) * 1e6 / steps
    if cuda:
        kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    else:  # the smoke mode: Inductor's C++ kernels, recorded under cpp.enable_kernel_profile
        kernels = [e for e in prof.events() if "cpp_fused" in e.name or e.name.startswith("triton_")]
    per_kernel: dict[str, float] = {}
    intervals = []
    for e in kernels:
        dur = e.time_range.end - e.time_range.start
        per_kernel[e.name] = per_kernel.get(e.name, 0.0) + dur
        intervals.append((e.time_range.start, e.time_range.end))
    busy = _union_us(intervals) / steps
    total = sum(per_kernel.values()) or 1.0
    pqt = sum(v for k, v in per_kernel.items() if is_pqt_kernel(k))
    ranked = sorted(per_kernel.items(), key=lambda kv: -kv[1])[:top]
    return {
        "kernels_per_step": len(kernels) / steps,
        "pqt_kernels_per_step": sum(1 for e in kernels if is_pqt_kernel(e.name)) / steps,
        "device_busy_us_per_step": busy,
        "wall_us_per_step": wall_us,
        "busy_fraction": busy / wall_us if wall_us else float("nan"),
        "pqt_share_of_kernel_time": pqt / total,
        "top_kernels": [{"name": k[:120], "us_per_step": v / steps, "share": v / total} for k, v in ranked],
    }
