#!/usr/bin/env bash
# Round 27d (prepared in sessions 11-12; ~9 min; GLU as in 27b):
#   1. inductor's coordinate-descent tuning of its own Triton kernels (the LayerNorm + modulate + quantize
#      reductions at ~1 TB/s, the gates, the short convs: ~19 ms of kernels per chunk) on the FP8 static generator;
#      round 26 gave it 210 s and its compile did not finish: 430 s here
#   2. the FP8 static profile over the official+tconv scope (two chunks)
source bench/gpu_setup.sh
export SANA_WM_GLU_CONFIG=${GLU:-tiles,32,64,4,0}
{
echo "== generator alone, fp8 static official+tconv + compile, TORCHINDUCTOR_COORDINATE_DESCENT_TUNING=1"
TORCHINDUCTOR_COORDINATE_DESCENT_TUNING=1 timeout 430 python3 -m runtime.cli bench --precision fp8 \
  --act-scales static --scope official+tconv --chunks 8 --warmup 3 --compile --no-decode \
  --json $OUT/bench_fp8_static_tconv_cdt.json 2>&1 | grep -v "Warn\|W12\|_warn\|warnings.warn" | tail -7
echo "== fp8 static official+tconv profile"
timeout 120 python3 -m runtime.cli bench --precision fp8 --act-scales static --scope official+tconv --chunks 2 \
  --warmup 2 --compile --no-decode --profile $OUT/profile_fp8_static_tconv.txt --json /tmp/p.json 2>&1 | tail -1
} 2>&1 | tee $OUT/log
