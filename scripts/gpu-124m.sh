#!/usr/bin/env bash
# Does PQT pay at 124M parameters? The main job's gpu-124m preset (examples/train.py, README "On one
# GPU"): GPT-2 124M's shape on one CUDA GPU under bf16, baseline / PQT / STE / pqt-ste from one
# pretrained checkpoint on the same batches, 2 seeds, within 420 s in all (set-up and compiles
# included). Writes results.json, loss.png and log.txt to $OUT/gpu-124m (or runs/gpu-124m); the
# pretrained checkpoint (0.35 GB) goes to $PQT_PRETRAIN_DIR (default /tmp/pqt-pretrain), not $OUT.
# Runs on the machine's own torch from this source tree and installs nothing. Extra arguments go
# to the job (they override the preset).
#   bash scripts/gpu-124m.sh              # on a CUDA machine
#   bash scripts/gpu-124m.sh --dry-run    # the budget only (no GPU needed)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=python3
[ -x .venv/bin/python ] && [ -z "${PQT_SYSTEM_PYTHON:-}" ] && PY=.venv/bin/python
DIR=${OUT:-runs}/gpu-124m
mkdir -p "$DIR"
"$PY" examples/train.py --preset gpu-124m --out "$DIR" --pretrain-dir "${PQT_PRETRAIN_DIR:-/tmp/pqt-pretrain}" "$@" 2>&1 \
  | tee "$DIR/log.txt"
