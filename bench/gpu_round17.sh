#!/usr/bin/env bash
# Round 17 (one ~8-minute call), session 9:
#   1. GPU tests of the new fused GDN layer op (kernels.gdn_layer: camera branch on a second stream, eager and
#      replayed from a CUDA graph) and of the streaming step that now calls it (graph == eager, full config fast
#      path == reference kernels, compiled full config == eager)
#   2. bench.kernels: the GDN layer as separate ops vs the one op on one stream vs two streams (#5's row), and a
#      softmax block's two attentions as two cuDNN calls vs one batched call
#   3. the generator alone, bf16, two streams (default) and SANA_WM_GDN_STREAMS=0 (round 15: 190.3 ms/chunk)
#   4. the generator alone, FP8 official scope, two streams (round 16: 174.1 ms/chunk)
# Carry .whl (diffusers).
source bench/gpu_setup.sh
{
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
echo "== GPU tests"
timeout 200 python3 -m pytest tests/unit/test_gdn_layer.py tests/gpu/test_streaming_gpu.py -q -p no:cacheprovider -k "not prefetched" \
  -rfE 2>&1 | grep -E "passed|failed|FAILED|Error" | tail -8
echo "== GDN layer and attention pairs"
timeout 100 python3 -m bench.kernels --quick --only layer_fcam16_graph,layer_op16_graph,layer_2s16_graph,sdpa_pair \
  --json $OUT/kernels_layer.json 2>&1 | grep -E "^(layer|sdpa)|GDN layer" | tail -8
echo "== generator alone, bf16 + compile, two streams"
timeout 100 python3 -m runtime.cli bench --chunks 6 --warmup 3 --compile --no-decode \
  --json $OUT/bench_bf16_generator.json 2>&1 | grep -v "Warn\|W12\|_warn" | tail -7
echo "== generator alone, bf16 + compile, SANA_WM_GDN_STREAMS=0"
SANA_WM_GDN_STREAMS=0 timeout 80 python3 -m runtime.cli bench --chunks 4 --warmup 2 --compile --no-decode \
  --json $OUT/bench_bf16_one_stream_generator.json 2>&1 | grep -E "ms/chunk"
echo "== generator alone, fp8 (official scope) + compile, two streams"
timeout 110 python3 -m runtime.cli bench --precision fp8 --chunks 6 --warmup 3 --compile --no-decode \
  --json $OUT/bench_fp8_generator.json 2>&1 | grep -v "Warn\|W12\|_warn" | tail -7
} 2>&1 | tee $OUT/log
