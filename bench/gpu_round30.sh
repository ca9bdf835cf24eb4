#!/usr/bin/env bash
# Round 30 (session 14; ~9 min): where the FP8 static chunk's non-GEMM time goes, and two inductor options
#   1. the FP8 static profile with every kernel under its full name (runtime.bench.kernel_table) and inductor's
#      generated code (TORCH_LOGS=output_code, gzipped) to read the slow fused kernels
#   2. the generator with inductor's combo kernels (independent small kernels launched as one)
#   3. the generator with TORCHINDUCTOR_MAX_AUTOTUNE_POINTWISE=1 (its reductions / pointwise kernels' launch
#      configs benchmarked; round 28 without: 139.5 ms/chunk)
source bench/gpu_setup.sh
FILTER="Warn\|W12\|_warn\|warnings.warn"
{
echo "== fp8 static profile, every kernel, + inductor output code"
TORCH_LOGS=output_code timeout 170 python3 -m runtime.cli bench --precision fp8 --act-scales static --chunks 2 \
  --warmup 2 --compile --no-decode --profile $OUT/profile_fp8_static.txt --json /tmp/p.json 2>$OUT/output_code.txt \
  | tail -1
gzip -9 $OUT/output_code.txt
grep -A60 "Every GPU kernel" $OUT/profile_fp8_static.txt | cut -c1-200
echo "== generator alone, fp8 static + compile, SANA_WM_INDUCTOR=combo_kernels=1"
SANA_WM_INDUCTOR=combo_kernels=1 timeout 150 python3 -m runtime.cli bench --precision fp8 --act-scales static \
  --chunks 8 --warmup 3 --compile --no-decode --json $OUT/bench_fp8_static_combo.json 2>&1 | grep -v "$FILTER" | tail -5
echo "== generator alone, fp8 static + compile, TORCHINDUCTOR_MAX_AUTOTUNE_POINTWISE=1"
TORCHINDUCTOR_MAX_AUTOTUNE_POINTWISE=1 timeout 230 python3 -m runtime.cli bench --precision fp8 --act-scales static \
  --chunks 8 --warmup 3 --compile --no-decode --json $OUT/bench_fp8_static_autotune_pointwise.json 2>&1 \
  | grep -v "$FILTER" | tail -5
} 2>&1 | tee $OUT/log
