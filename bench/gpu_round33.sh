#!/usr/bin/env bash
# Round 33 (session 14; ~6 min): the FFN temporal conv in FP8 as one _scaled_mm per tap over frame-shifted rows
# of its input quantized once (FP8TemporalConv.store_tap_weights_, official+tconv scope), instead of one GEMM over
# interleaved taps whose quantizing pass cost 52 us (round 27d)
#   1. GPU test: the per-tap path against the interleaved GEMM at full width, eager and compiled
#   2. FP8 static generator, official+tconv scope (round 27b, interleaved: 140.46 ms/chunk)
#   3. FP8 static generator, official scope, the same machine session (rounds 28-32: 139.5-141.8)
source bench/gpu_setup.sh
FILTER="Warn\|W12\|_warn\|warnings.warn"
{
echo "== GPU tests: FP8 temporal conv by taps"
timeout 120 python3 -m pytest tests/gpu/test_glu_conv_gpu.py -q -p no:cacheprovider -rfE -k "by_taps" 2>&1 \
  | grep -E "passed|failed|FAILED|Error|assert" | tail -8
for scope in official+tconv official; do
  echo "== generator alone, fp8 static + compile, scope $scope"
  timeout 170 python3 -m runtime.cli bench --precision fp8 --act-scales static --scope $scope --chunks 8 --warmup 3 \
    --compile --no-decode --json $OUT/bench_fp8_static_${scope/+/_}.json 2>&1 | grep -v "$FILTER" | tail -5
done
} 2>&1 | tee $OUT/log
