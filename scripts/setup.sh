#!/usr/bin/env bash
# Set up .venv with pqt_compile and its test tools. Safe to run again.
# torch is pinned to the local CPU build where no torch is present: a looser requirement would
# pull a multi-GB CUDA build from the registry. Everything else is installed at the versions the
# suite was last run with (ci/constraints.txt), so a fresh machine reproduces CI.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -c "import torch" 2>/dev/null || pip install -q "torch==${PQT_TORCH_VERSION:-2.13.0}"
pip install -q -c ci/constraints.txt -e ".[test${PQT_EXTRAS:+,$PQT_EXTRAS}]"
