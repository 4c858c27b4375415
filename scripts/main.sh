#!/usr/bin/env bash
# Set up everything and run the main job: train a small GPT-2 with and without PQT on the
# Python standard library's source, quantize both, compare. Extra arguments go to the job
# (see python examples/train.py --help).
set -euo pipefail
cd "$(dirname "$0")/.."
PQT_EXTRAS=examples bash scripts/setup.sh   # the tested versions (ci/constraints.txt)
. .venv/bin/activate
python examples/train.py "$@"
