#!/usr/bin/env bash
# Round 19 (the session's last ~5 device-minutes), session 9: the GDN scans write their outputs token-major in the
# model's dtype (phase C epilogue), so the GDN blocks' projections read them without a transposing copy.
#   1. GPU tests of the token-major bf16 output (scan and fused layer)
#   2. the generator alone, FP8 official scope, then bf16 (round 18: 167.2 / 186.2 ms/chunk)
# Carry .whl (diffusers).
source bench/gpu_setup.sh
{
echo "== GPU tests"
timeout 60 python3 -m pytest tests/unit/test_gdn_kernels.py tests/unit/test_gdn_layer.py -q -p no:cacheprovider \
  -k "token_major or layer" -rfE 2>&1 | grep -E "passed|failed|FAILED|Error" | tail -6
echo "== generator alone, fp8 (official scope) + compile"
timeout 100 python3 -m runtime.cli bench --precision fp8 --chunks 6 --warmup 3 --compile --no-decode \
  --json $OUT/bench_fp8_generator.json 2>&1 | grep -v "Warn\|W12\|_warn" | tail -7
echo "== generator alone, bf16 + compile"
timeout 90 python3 -m runtime.cli bench --chunks 6 --warmup 3 --compile --no-decode \
  --json $OUT/bench_bf16_generator.json 2>&1 | grep -v "Warn\|W12\|_warn" | tail -7
} 2>&1 | tee $OUT/log
