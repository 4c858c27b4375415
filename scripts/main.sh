#!/usr/bin/env bash
# Set up everything and run the main job. Extra arguments go to the job.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
python -m pqt_compile.demo "$@"
