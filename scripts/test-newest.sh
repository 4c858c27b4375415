#!/usr/bin/env bash
# CI's second job: the newest releases, where drift shows up as a named failure.
# In its own venv (.venv-newest): the newest supported torch (ci/torch-newest.txt), then the
# newest releases of transformers, compressed-tensors and huggingface-hub with no constraints
# file (the first job pins ci/constraints.txt). It runs every test marked private_api (the
# compile path and every private torch/Triton API) or third_party (what goes through
# transformers, compressed-tensors, gguf or another library's file format). Extra arguments go
# to pytest.
#
# torch 2.15 is a CUDA build of about 5.6 GB from the registry (no CPU build is reachable here);
# it runs on the CPU. PIP_CONSTRAINT=/dev/null lifts only the machine's pip cap (torch<=2.14.1 in
# /etc/xdg/pip, where present) and keeps its indexes and the on-disk wheels.
#
# Exit status: the tests' status. If the install itself fails (no registry, no disk), the job says
# so loudly and exits 0 unless PQT_REQUIRE_NEWEST=1: an unreachable registry must not hide the main
# suite's result, but a test that fails on the newest releases fails CI.
set -uo pipefail
cd "$(dirname "$0")/.."
. scripts/optional-job.sh
PY=${PYTHON:-python3}
export PIP_CONSTRAINT=/dev/null
NEWEST_LIBS="transformers compressed-tensors huggingface-hub"
install() {
    [ -x .venv-newest/bin/python ] || "$PY" -m venv .venv-newest || return 1
    .venv-newest/bin/pip install -q -r ci/torch-newest.txt || return 1
    .venv-newest/bin/pip install -q -e ".[test]" || return 1
    # Past pyproject's ranges on purpose: the newest release is what a user gets tomorrow.
    .venv-newest/bin/pip install -q --upgrade $NEWEST_LIBS 2>&1 | grep -v "dependency conflicts\|requires .* but you have\|^WARNING: Location" || true
}
start=$(date +%s)
if ! install; then
    install_failed "NEWEST JOB NOT RUN: installing $(grep -v '^#' ci/torch-newest.txt | tr '\n' ' ')and $NEWEST_LIBS failed (see pip's error above)." PQT_REQUIRE_NEWEST
fi
echo "newest releases installed in $(( $(date +%s) - start )) s: $(.venv-newest/bin/python -c '
import importlib.metadata as m
print(", ".join(f"{p} {m.version(p)}" for p in ("torch", "triton", "transformers", "compressed-tensors", "huggingface-hub", "kernels")))')"
.venv-newest/bin/python -m pytest -q -m "private_api or third_party" "$@"
