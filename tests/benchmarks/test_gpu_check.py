"""The GPU check (scripts/gpu-check.sh -> benchmarks/gpu_check.py) runs end to end on the CPU in its
smoke mode, tiny shapes, so that it cannot rot while no GPU runs it: the GPU test tier's collection,
benchmarks/gpu_train_step.py with --kernels and --profile, and the report. Its numbers on the CPU
mean nothing."""

import json
import os
import sys

import pytest

pytestmark = pytest.mark.private_api  # exercises private torch/Triton APIs: CI reruns it on the newest torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "benchmarks"))


def test_the_smoke_mode_writes_the_report(tmp_path):
    import gpu_check

    assert any(f.endswith("test_gpu_step.py") for f in gpu_check.gpu_tier_files())  # the tier is found
    assert gpu_check.main(["--smoke", "--out", str(tmp_path)]) == 0, (tmp_path / "report.md").read_text()
    report = json.loads((tmp_path / "report.json").read_text())
    assert [p["passed"] for p in report["parts"]] == [True, True]
    step = json.loads((tmp_path / "step.json").read_text())
    assert set(step["arms"]) == {"inductor", "pqt"}
    for arm in step["arms"].values():
        assert len(arm["step_s"]) == 1 and arm["step_s"][0] > 0 and arm["first_step_s"] > 0
    # The profile path ran: on the CPU it counts Inductor's C++ kernels; the samples are named.
    prof = step["arms"]["pqt"]["profile"]
    assert prof["pqt_kernels_per_step"] >= 1 and prof["kernels_per_step"] >= prof["pqt_kernels_per_step"]
    assert step["arms"]["inductor"]["profile"]["pqt_kernels_per_step"] == 0
    assert step["bandwidth"]["sample_s"] > 0 and [r["M"] for r in step["prologue"]] == [16]
    assert "## GPU test tier" in (tmp_path / "report.md").read_text()


def test_without_cuda_the_gpu_commands_refuse(tmp_path):
    import torch

    import gpu_check
    import gpu_train_step

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(SystemExit, match="no CUDA device"):
        gpu_train_step.main([])
    assert gpu_check.main(["--out", str(tmp_path)]) == 2 and not os.listdir(tmp_path)
