#!/usr/bin/env bash
# Round 27c (prepared in session 12; ~8-9 min, after round 27b while the machine is warm; GLU as in 27b):
#   1. the stacked input projections' share: SANA_WM_STACK_INPUTS=0 (qkv, output gate and beta as three GEMMs,
#      as before session 12), against round 27b's run with the same launch
#   2. inductor's GEMM autotuning (TORCHINDUCTOR_MAX_AUTOTUNE_GEMM=1): its Triton templates for torch._scaled_mm
#      / addmm against cuBLAS, with pointwise epilogues fused into a chosen template. The FFN's SiLU pass after the
#      inverted conv's GEMM alone is 37 us x 100 calls per chunk (round-25 profile; none with a SiLU-inside launch)
source bench/gpu_setup.sh
export SANA_WM_GLU_CONFIG=${GLU:-tiles,32,64,4,0}
{
echo "== generator alone, fp8 static official+tconv + compile, SANA_WM_STACK_INPUTS=0"
SANA_WM_STACK_INPUTS=0 timeout 150 python3 -m runtime.cli bench --precision fp8 --act-scales static \
  --scope official+tconv --chunks 8 --warmup 3 --compile --no-decode \
  --json $OUT/bench_fp8_static_tconv_unstacked.json 2>&1 | grep -v "Warn\|W12\|_warn\|warnings.warn" | tail -7
echo "== generator alone, fp8 static official+tconv + compile, TORCHINDUCTOR_MAX_AUTOTUNE_GEMM=1"
TORCHINDUCTOR_MAX_AUTOTUNE_GEMM=1 timeout 400 python3 -m runtime.cli bench --precision fp8 --act-scales static \
  --scope official+tconv --chunks 8 --warmup 3 --compile --no-decode \
  --json $OUT/bench_fp8_static_tconv_autotune_gemm.json 2>&1 | grep -v "Warn\|W12\|_warn\|warnings.warn" | tail -7
} 2>&1 | tee $OUT/log
