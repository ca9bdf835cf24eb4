#!/usr/bin/env bash
# Round 27b (prepared in sessions 11-12; ~7-9 min, right after round 27 while the machine is warm). Set GLU to
# round 27's fastest launch (printed as SANA_WM_GLU_CONFIG) before running, e.g. GLU=rows_gatherpipe6,22,16,8,1:
#   1. GPU tests: the compiled full config against eager (each attention block's input projections stacked into
#      one GEMM since session 12), the stacked FP8 GEMM against separate torch._scaled_mm calls (one layer set at
#      full shape, and the whole FP8 model), render's GPU fast path (FP8 + compile + CUDA graphs, embedded model)
#   2. the FP8 static generator over the official+tconv scope (the FFN temporal conv in FP8 too; quality on the
#      shipped model 39.46 vs 39.71 dB), default launch, stacked projections (round 26, official scope,
#      unstacked: 146.6 ms/chunk)
#   3. the same with round 27's fastest depthwise launch
source bench/gpu_setup.sh
GLU=${GLU:-tiles,32,64,4,0}
{
echo "== GPU tests: stacking, compiled step, render fast path"
timeout 240 python3 -m pytest tests/gpu/test_streaming_gpu.py tests/unit/test_quant.py \
  tests/gpu/test_fast_path_render_gpu.py -q -p no:cacheprovider -k "compiled_graph_step or stacked or render" \
  -rfE 2>&1 | grep -E "passed|failed|FAILED|Error|assert" | tail -12
for run in "official_tconv:SANA_WM_GLU_CONFIG=tiles,32,64,4,0" "glu_best:SANA_WM_GLU_CONFIG=$GLU"; do
  IFS=: read -r name env <<< "$run"
  echo "== generator alone, fp8 static + compile, scope official+tconv, $env"
  env "$env" timeout 150 python3 -m runtime.cli bench --precision fp8 --act-scales static --scope official+tconv \
    --chunks 8 --warmup 3 --compile --no-decode --json $OUT/bench_fp8_static_$name.json 2>&1 \
    | grep -v "Warn\|W12\|_warn\|warnings.warn" | tail -7
done
} 2>&1 | tee $OUT/log
