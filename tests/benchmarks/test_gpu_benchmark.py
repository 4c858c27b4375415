"""benchmarks/gpu_train_step.py (with --kernels) runs end to end on CPU with tiny shapes, so that
the GPU benchmark cannot rot while no GPU runs it. Its numbers on CPU mean nothing."""

import os
import sys

import pytest

pytestmark = pytest.mark.private_api  # exercises private torch/Triton APIs: CI reruns it on the newest torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "benchmarks"))


def test_gpu_benchmark_runs_on_cpu_with_tiny_shapes():
    import gpu_train_step

    out = gpu_train_step.main(["--device", "cpu", "--layers", "1", "--d-model", "64", "--seq", "16", "--batch", "2",
                               "--rounds", "1", "--warmup", "0", "--no-torchao", "--kernels",
                               "--m-sweep", "16"])
    assert set(out["arms"]) == {"inductor", "pqt"}
    assert all(len(a["step_s"]) == 1 and a["step_s"][0] > 0 for a in out["arms"].values())
    assert out["bandwidth"]["sample_s"] > 0 and [r["M"] for r in out["prologue"]] == [16]


def test_gpu_benchmark_refuses_without_cuda():
    import torch

    import gpu_train_step

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(SystemExit, match="no CUDA device"):
        gpu_train_step.main([])
