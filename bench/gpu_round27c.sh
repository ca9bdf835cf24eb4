#!/usr/bin/env bash
# Round 27c (prepared in session 12; ~9 min, after round 27b while the machine is warm; GLU as in 27b):
#   1. inductor's GEMM autotuning (TORCHINDUCTOR_MAX_AUTOTUNE_GEMM=1): its Triton templates for torch._scaled_mm
#      / addmm against cuBLAS, with pointwise epilogues fused into a chosen template. The FFN's SiLU pass after the
#      inverted conv's GEMM alone is 37 us x 100 calls per chunk (round-25 profile; none with a SiLU-inside launch)
#   2. the FP8 static profile over the official+tconv scope (two chunks)
source bench/gpu_setup.sh
export SANA_WM_GLU_CONFIG=${GLU:-tiles,32,64,4,0}
{
echo "== generator alone, fp8 static official+tconv + compile, TORCHINDUCTOR_MAX_AUTOTUNE_GEMM=1"
TORCHINDUCTOR_MAX_AUTOTUNE_GEMM=1 timeout 400 python3 -m runtime.cli bench --precision fp8 --act-scales static \
  --scope official+tconv --chunks 8 --warmup 3 --compile --no-decode \
  --json $OUT/bench_fp8_static_tconv_autotune_gemm.json 2>&1 | grep -v "Warn\|W12\|_warn\|warnings.warn" | tail -7
echo "== fp8 static official+tconv profile"
timeout 120 python3 -m runtime.cli bench --precision fp8 --act-scales static --scope official+tconv --chunks 2 \
  --warmup 2 --compile --no-decode --profile $OUT/profile_fp8_static_tconv.txt --json /tmp/p.json 2>&1 | tail -1
} 2>&1 | tee $OUT/log
