#!/usr/bin/env bash
# Round 26 (session 11, ~8 min, carry .whl): the state at the end of session 11, and two A/Bs.
#   1. FP8 static generator, default launch (round 25: 145.9 ms/chunk)
#   2. the same with inductor's coordinate-descent tuning of its own Triton kernels (the LayerNorm + modulate +
#      quantize reductions, the gates, the short convs: ~19 ms of kernels per chunk at ~1 TB/s); compiles longer
#   3. the same with SiLU inside the depthwise kernel (tanh.approx; tiles 16 x 64; the sweep had it level with
#      the default's separate SiLU pass: 0.140 ms each)
#   4. bf16 generator (round 21: 174.5 ms/chunk)
source bench/gpu_setup.sh
{
echo "== generator alone, fp8 static + compile, default"
timeout 150 python3 -m runtime.cli bench --precision fp8 --act-scales static --chunks 8 --warmup 3 --compile \
  --no-decode --json $OUT/bench_fp8_static.json 2>&1 | grep -v "Warn\|W12\|_warn\|warnings.warn" | tail -7
echo "== generator alone, fp8 static + compile, TORCHINDUCTOR_COORDINATE_DESCENT_TUNING=1"
TORCHINDUCTOR_COORDINATE_DESCENT_TUNING=1 timeout 210 python3 -m runtime.cli bench --precision fp8 --act-scales static \
  --chunks 8 --warmup 3 --compile --no-decode --json $OUT/bench_fp8_static_cdt.json 2>&1 \
  | grep -v "Warn\|W12\|_warn\|warnings.warn" | tail -7
echo "== generator alone, fp8 static + compile, SANA_WM_GLU_CONFIG=tiles,16,64,4,1"
SANA_WM_GLU_CONFIG=tiles,16,64,4,1 timeout 150 python3 -m runtime.cli bench --precision fp8 --act-scales static \
  --chunks 8 --warmup 3 --compile --no-decode --json $OUT/bench_fp8_static_silu_inside.json 2>&1 \
  | grep -v "Warn\|W12\|_warn\|warnings.warn" | tail -7
echo "== generator alone, bf16 + compile"
timeout 150 python3 -m runtime.cli bench --precision bf16 --chunks 8 --warmup 3 --compile \
  --no-decode --json $OUT/bench_bf16.json 2>&1 | grep -v "Warn\|W12\|_warn\|warnings.warn" | tail -7
} 2>&1 | tee $OUT/log
