#!/usr/bin/env bash
# Round 27b (prepared in sessions 11-12; ~6-7 min, right after round 27 while the machine is warm). Set GLU to
# round 27's fastest launch (printed as SANA_WM_GLU_CONFIG) before running, e.g. GLU=rows_gatherpipe6,22,16,8,1:
#   1. the FP8 static generator over the official+tconv scope (the FFN temporal conv in FP8 too; quality on the
#      shipped model 39.46 vs 39.71 dB), default launch, with the stacked input projections of session 12
#      (round 26, official scope, unstacked: 146.6 ms/chunk)
#   2. the same with round 27's fastest depthwise launch
#   3. the stacked input projections' share: SANA_WM_STACK_INPUTS=0 (qkv, output gate and beta as three GEMMs)
source bench/gpu_setup.sh
GLU=${GLU:-tiles,32,64,4,0}
{
for run in "official_tconv:SANA_WM_GLU_CONFIG=tiles,32,64,4,0" "glu_best:SANA_WM_GLU_CONFIG=$GLU" \
           "unstacked:SANA_WM_STACK_INPUTS=0"; do
  IFS=: read -r name env <<< "$run"
  echo "== generator alone, fp8 static + compile, scope official+tconv, $env"
  env "$env" timeout 150 python3 -m runtime.cli bench --precision fp8 --act-scales static --scope official+tconv \
    --chunks 8 --warmup 3 --compile --no-decode --json $OUT/bench_fp8_static_$name.json 2>&1 \
    | grep -v "Warn\|W12\|_warn\|warnings.warn" | tail -7
done
} 2>&1 | tee $OUT/log
