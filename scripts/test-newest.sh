#!/usr/bin/env bash
# CI's second job: every test marked private_api, on the newest supported torch (ci/torch-newest.txt),
# in its own venv (.venv-newest). Extra arguments go to pytest.
#
# torch 2.15 is a CUDA build of about 5.6 GB from the registry (no CPU build is reachable here);
# it runs on the CPU. PIP_CONSTRAINT=/dev/null lifts only the machine's pip cap (torch<=2.14.1 in
# /etc/xdg/pip) and keeps its indexes and the on-disk wheels.
#
# Exit status: the tests' status. If the install itself fails (no registry, no disk), the job says
# so loudly and exits 0 unless PQT_REQUIRE_NEWEST=1: an unreachable registry must not hide the main
# suite's result, but a test that fails on the newest torch fails CI.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PIP_CONSTRAINT=/dev/null
install() {
    [ -x .venv-newest/bin/python ] || "$PY" -m venv .venv-newest || return 1
    .venv-newest/bin/pip install -q -r ci/torch-newest.txt || return 1
    .venv-newest/bin/pip install -q -e ".[test]" || return 1
}
start=$(date +%s)
if ! install; then
    echo "=================================================================="
    echo "NEWEST-TORCH JOB NOT RUN: installing $(grep -v '^#' ci/torch-newest.txt | tr '\n' ' ')failed (see pip's error above)."
    echo "=================================================================="
    [ "${PQT_REQUIRE_NEWEST:-0}" = 1 ] && exit 1
    exit 0
fi
echo "newest torch installed in $(( $(date +%s) - start )) s: $(.venv-newest/bin/python -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)')"
.venv-newest/bin/python -m pytest -q -m private_api "$@"
