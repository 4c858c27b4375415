#!/usr/bin/env bash
# Issue 16's measurements (docs/results.md, "Does PQT pay?"): the main job's comparison on the
# tiny GPT-2, one CPU thread per run (deterministic fp32), five seeds. Each run writes
# runs/science/<name>/results.json; `python examples/science_table.py runs/science/*/results.json`
# prints the tables (int4-llama needs torchao: pip install -e '.[bench]'). About 55 minutes on one core of the
# 2-core machine for issue 16's runs, 25 more for issue 26's two ten-seed runs (docs/results.md); pass names to run a subset:
#     bash scripts/science.sh finetune noise-0.577
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-runs/science}
mkdir -p "$OUT"
COMMON=(--size tiny --threads 1 --seeds 0,1,2,3,4 --eval-every 100 --no-progress --no-export
        --pretrain-dir "$OUT/pretrain" --deploy-grids fp4_e2m1:16,int4:32,fp6_e3m2:32)
ALL_ARMS=baseline,pqt,ste,pqt-ste,pqt-anneal
TEN_SEEDS=0,1,2,3,4,5,6,7,8,9   # issue 26: NVFP4, and the fp4 ranking across more seeds than the default
declare -A RUNS=(
  [finetune]="--scenario finetune --pretrain-steps 1000 --steps 500 --arms $ALL_ARMS"
  [scratch]="--scenario scratch --steps 1000 --arms $ALL_ARMS"
  [noise-0.577]="--scenario finetune --pretrain-steps 1000 --steps 500 --arms baseline,pqt --noise-std 0.577"
  [noise-1.0]="--scenario finetune --pretrain-steps 1000 --steps 500 --arms baseline,pqt --noise-std 1.0"
  [rounded-gaussian]="--scenario finetune --pretrain-steps 1000 --steps 500 --arms baseline,pqt --noise rounded_gaussian"
  [int4-llama]="--arch llama --scenario finetune --pretrain-steps 1000 --steps 500 --format int4 --seeds 0,1,2 --arms baseline,pqt,ste,pqt-ste,torchao --deploy-grids int4:16,fp4_e2m1:32"
  [scratch-long]="--scenario scratch --steps 3000 --seeds 0,1,2 --arms baseline,pqt,ste,pqt-ste"
  [nvfp4]="--scenario finetune --pretrain-steps 1000 --steps 500 --format nvfp4 --seeds $TEN_SEEDS --arms baseline,pqt,ste,pqt-ste --deploy-grids fp4_e2m1:32,int4:32,fp6_e3m2:32"
  [finetune-10]="--scenario finetune --pretrain-steps 1000 --steps 500 --seeds $TEN_SEEDS --arms baseline,pqt,ste,pqt-ste --deploy-grids nvfp4:16,fp4_e2m1:16,int4:32"
)
ORDER=(finetune scratch noise-0.577 rounded-gaussian noise-1.0 scratch-long int4-llama nvfp4 finetune-10)
names=("$@"); [ ${#names[@]} -eq 0 ] && names=("${ORDER[@]}")
for name in "${names[@]}"; do
  [ -n "${RUNS[$name]:-}" ] || { echo "unknown run $name; known: ${ORDER[*]}"; exit 2; }
  if [ -f "$OUT/$name/results.json" ]; then echo "$name: done ($OUT/$name/results.json)"; continue; fi
  echo "== $name: $PY examples/train.py ${COMMON[*]} ${RUNS[$name]} --out $OUT/$name"
  start=$(date +%s)
  # shellcheck disable=SC2086
  $PY examples/train.py "${COMMON[@]}" ${RUNS[$name]} --out "$OUT/$name" > "$OUT/$name.log" 2>&1 \
    || { echo "$name failed: see $OUT/$name.log"; continue; }
  echo "$name: $(( $(date +%s) - start )) s"
done
