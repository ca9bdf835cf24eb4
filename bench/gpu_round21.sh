#!/usr/bin/env bash
# Round 21 (session 10, ~6 min), after ae6d094..: the GDN launch config from round 20b's layer sweep, the FFN
# temporal conv with a tap-major weight (one GEMM per tap), the camera q/k/v projections as one GEMM, one prompt's
# cross-attention over its valid keys without a bias (all 300 valid here: no mask), in the compiled path.
#   1. GPU tests: the compiled + CUDA-graph full config against eager, the GDN kernels at full shapes with the new
#      launch config, the layer op's two streams against one and its graph replay
#   2. the generator alone: FP8 static scales, then bf16 (round 20: 157.9 FP8 static; round 19: 185.6 bf16)
# Carry .whl (diffusers).
source bench/gpu_setup.sh
{
echo "== GPU tests"
timeout 240 python3 -m pytest tests/gpu/test_streaming_gpu.py tests/gpu/test_gdn_kernels_gpu.py \
  tests/unit/test_gdn_layer.py -q -p no:cacheprovider -k "compiled_graph_step or streaming_shape or two_streams \
  or cuda_graph_replay or budget" -rfE 2>&1 | grep -E "passed|failed|FAILED|Error" | tail -8
echo "== generator alone, fp8 (official scope, static activation scales) + compile"
timeout 150 python3 -m runtime.cli bench --precision fp8 --act-scales static --chunks 6 --warmup 3 --compile \
  --no-decode --json $OUT/bench_fp8_static.json 2>&1 | grep -v "Warn\|W12\|_warn\|warnings.warn" | tail -7
echo "== generator alone, bf16 + compile"
timeout 120 python3 -m runtime.cli bench --chunks 6 --warmup 3 --compile --no-decode \
  --json $OUT/bench_bf16.json 2>&1 | grep -v "Warn\|W12\|_warn\|warnings.warn" | tail -7
} 2>&1 | tee $OUT/log
