#!/usr/bin/env bash
# Set up everything and run the main job: train a small GPT-2 with and without PQT on the
# Python standard library's source, quantize both, compare. Extra arguments go to the job
# (see python examples/train.py --help).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
pip install -q -e ".[examples]"
python examples/train.py "$@"
