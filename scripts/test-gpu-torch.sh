#!/usr/bin/env bash
# CI's third job: the GPU check on the GPU machine's own versions (ci/torch-gpu-machine.txt: torch
# 2.11, older than the declared range, which the GPU check must run on without installing anything).
# In its own venv (.venv-gpu-torch), with pqt_compile run from the source tree (not installed, as
# on the GPU machine):
#   1. `benchmarks/gpu_check.py --smoke`: the GPU check's own code paths on the CPU, tiny shapes;
#   2. the GPU tier's dry run (PQT_GPU_TIER_DEVICE=cpu): its tests' code on the CPU.
# torch 2.11 is a CUDA build of about 4.5 GB from the registry; it runs on the CPU.
#
# Exit status: the checks' status. If the install itself fails (no registry, no disk), the job
# says so loudly and exits 0 unless PQT_REQUIRE_GPU_TORCH=1 (scripts/optional-job.sh).
set -uo pipefail
cd "$(dirname "$0")/.."
. scripts/optional-job.sh
PY=${PYTHON:-python3}
export PIP_CONSTRAINT=/dev/null
install() {
    [ -x .venv-gpu-torch/bin/python ] || "$PY" -m venv .venv-gpu-torch || return 1
    .venv-gpu-torch/bin/pip install -q -r ci/torch-gpu-machine.txt || return 1
}
start=$(date +%s)
if ! install; then
    install_failed "GPU-TORCH JOB NOT RUN: installing $(grep -v '^#' ci/torch-gpu-machine.txt | tr '\n' ' ')failed (see pip's error above)." PQT_REQUIRE_GPU_TORCH
fi
echo "GPU machine's versions installed in $(( $(date +%s) - start )) s: $(.venv-gpu-torch/bin/python -c '
import importlib.metadata as m
print(", ".join(f"{p} {m.version(p)}" for p in ("torch", "triton", "transformers")))')"
out=$(mktemp -d)
status=0
.venv-gpu-torch/bin/python benchmarks/gpu_check.py --smoke --out "$out" || status=1
PQT_GPU_TIER_DEVICE=cpu .venv-gpu-torch/bin/python -m pytest -q -p no:cacheprovider -m gpu "$@" \
    tests/test_gpu_tier.py tests/compiler/test_gpu_step.py || status=1
exit $status
