#!/usr/bin/env bash
# Round 32 (session 14; ~7 min): the depthwise + GLU kernel with 2 or 3 rows loaded ahead by hand
# (rows_gather_ahead2/3; round 30: rows_gather at ~0.9 TB/s, 11.7 ms per chunk, as bound by its bytes in flight)
#   1. GPU tests of every launch choice at the full shape (bf16 and E4M3 output)
#   2. the launch sweep; prints the fastest launch
#   3. the FP8 static generator with it (rounds 28 / 31: 139.5 / 141.8 ms per chunk with rows_gather 22 x 16 x 8)
source bench/gpu_setup.sh
FILTER="Warn\|W12\|_warn\|warnings.warn"
{
echo "== GPU tests: depthwise + GLU"
timeout 200 python3 -m pytest tests/gpu/test_glu_conv_gpu.py -q -p no:cacheprovider -rfE 2>&1 \
  | grep -E "passed|failed|FAILED|Error|assert" | tail -12
echo "== depthwise sweep"
timeout 170 python3 -m bench.kernels --quick --only depthwise_glu,depthwise_glu_sweep \
  --json $OUT/kernels_depthwise.json 2>&1 | grep -E "^depthwise" | sort -k3 -n | head -14
BEST=$(python3 -m bench.fastest_launch $OUT/kernels_depthwise.json depthwise_glu_sweep)
echo "fastest launch (SANA_WM_GLU_CONFIG): $BEST"
echo "== generator alone, fp8 static + compile, SANA_WM_GLU_CONFIG=$BEST"
SANA_WM_GLU_CONFIG=$BEST timeout 170 python3 -m runtime.cli bench --precision fp8 --act-scales static --chunks 8 \
  --warmup 3 --compile --no-decode --json $OUT/bench_fp8_static_glu_best.json 2>&1 | grep -v "$FILTER" | tail -5
} 2>&1 | tee $OUT/log
