#!/usr/bin/env bash
# Round 27b (prepared in sessions 11-12; ~7.5 min, right after round 27 while the machine is warm). Set GLU to
# round 27's fastest launch (printed as SANA_WM_GLU_CONFIG) before running, e.g. GLU=rows_gather,11,16,8,1:
#   1. the FP8 static generator (official+tconv) with that launch
#   2. the stacked input projections' share: SANA_WM_STACK_INPUTS=0 (qkv, output gate and beta as three GEMMs,
#      as before session 12)
#   3. the official scope (the release's: the FFN temporal conv in bf16), for the record against round 26
source bench/gpu_setup.sh
GLU=${GLU:-tiles,32,64,4,0}
{
for run in "glu_best:SANA_WM_GLU_CONFIG=$GLU:official+tconv" "unstacked:SANA_WM_STACK_INPUTS=0:official+tconv" \
           "official:SANA_WM_GLU_CONFIG=$GLU:official"; do
  IFS=: read -r name env scope <<< "$run"
  echo "== generator alone, fp8 static + compile, scope $scope, $env"
  env "$env" timeout 150 python3 -m runtime.cli bench --precision fp8 --act-scales static --scope "$scope" \
    --chunks 8 --warmup 3 --compile --no-decode --json $OUT/bench_fp8_static_$name.json 2>&1 \
    | grep -v "Warn\|W12\|_warn\|warnings.warn" | tail -7
done
} 2>&1 | tee $OUT/log
