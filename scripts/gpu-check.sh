#!/usr/bin/env bash
# The GPU check in one command (benchmarks/gpu_check.py): the GPU test tier, GPT-2 124M step time and
# profile against plain Inductor and torchao, the kernel benchmarks, the 1.1B Llama if time allows;
# one report (report.md, report.json) in $OUT or runs/gpu-check. <= 8 minutes on one GPU. Runs on
# the machine's own torch from this source tree and installs nothing.
#   bash scripts/gpu-check.sh            # on a CUDA machine
#   bash scripts/gpu-check.sh --smoke    # on the CPU: the same code paths, tiny shapes (CI runs it)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=python3
[ -x .venv/bin/python ] && [ -z "${PQT_SYSTEM_PYTHON:-}" ] && PY=.venv/bin/python
exec "$PY" benchmarks/gpu_check.py "$@"
