#!/usr/bin/env bash
# Round 20 (session 10, first call, ~6 min):
#   1. GPU tests: the FP8 GEMM with a padded N (the GDN beta / gate projections, N = 20, used to take the fp32
#      reference path), the compiled activation quantizers incl. the static per-tensor scale
#   2. the generator alone, FP8 official scope, dynamic per-token activation scales (round 18: 167.2 ms/chunk;
#      now with the token-major scan outputs of c67fcea and the padded-N GEMMs)
#   3. the same with static per-tensor activation scales (max calibration, `--act-scales static`)
# Carry .whl (diffusers).
source bench/gpu_setup.sh
{
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
echo "== GPU tests"
timeout 150 python3 -m pytest tests/unit/test_quant.py -q -p no:cacheprovider -k "gpu_fp8 or compiled_fp8" -rfE \
  2>&1 | grep -E "passed|failed|FAILED|Error" | tail -6
echo "== generator alone, fp8 (official scope, dynamic activation scales) + compile"
timeout 150 python3 -m runtime.cli bench --precision fp8 --chunks 6 --warmup 3 --compile --no-decode \
  --json $OUT/bench_fp8_dynamic.json 2>&1 | grep -v "Warn\|W12\|_warn\|warnings.warn" | tail -7
echo "== generator alone, fp8 (official scope, static activation scales) + compile"
timeout 150 python3 -m runtime.cli bench --precision fp8 --act-scales static --chunks 6 --warmup 3 --compile \
  --no-decode --json $OUT/bench_fp8_static.json 2>&1 | grep -v "Warn\|W12\|_warn\|warnings.warn" | tail -7
} 2>&1 | tee $OUT/log
