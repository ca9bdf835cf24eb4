#!/usr/bin/env bash
# Round 23 (prepared in session 10 after its device time ran out; ~6 min):
#   1. GPU tests of the depthwise kernel's FP8 output and the FFN handing the FP8 point conv its input
#      pre-quantized (eager and compiled), never run on a GPU yet; the compiled full config against eager
#   2. the generator alone, FP8 static scales (round 21: 150.4, round 22b: 147.0-147.7 ms/chunk without the
#      pre-quantized point-conv input), then the same with inductor's mix-order reduction off (the first knob of
#      round 23b; moved here in session 11 to use the warm machine; dynamic scales dropped, known: 167 ms)
# Carry .whl (diffusers).
source bench/gpu_setup.sh
{
echo "== GPU tests"
timeout 200 python3 -m pytest tests/gpu/test_glu_conv_gpu.py tests/gpu/test_streaming_gpu.py tests/unit/test_quant.py \
  -q -p no:cacheprovider -k "glu or prequantized or compiled_graph_step or gpu_fp8 or compiled_fp8" -rfE 2>&1 \
  | grep -E "passed|failed|FAILED|Error" | tail -8
echo "== generator alone, fp8 static + compile"
timeout 150 python3 -m runtime.cli bench --precision fp8 --act-scales static --chunks 8 --warmup 3 --compile \
  --no-decode --json $OUT/bench_fp8_static.json 2>&1 | grep -v "Warn\|W12\|_warn\|warnings.warn" | tail -7
echo "== generator alone, fp8 static + compile, TORCHINDUCTOR_MIX_ORDER_REDUCTION=0"
TORCHINDUCTOR_MIX_ORDER_REDUCTION=0 timeout 150 python3 -m runtime.cli bench --precision fp8 --act-scales static \
  --chunks 8 --warmup 3 --compile --no-decode --json $OUT/bench_fp8_static_mixorder0.json 2>&1 \
  | grep -v "Warn\|W12\|_warn\|warnings.warn" | tail -7
} 2>&1 | tee $OUT/log
