#!/usr/bin/env bash
# Round 27 (prepared in sessions 11-12 while no device time was left; ~6-8 min, carry .whl with diffusers):
#   1. GPU tests: the depthwise + GLU kernel at every sweep choice (the row-loop kinds of session 11 and the
#      gather kind of session 12 included), the compiled full config against eager (now with each attention
#      block's input projections stacked into one GEMM, session 12), the stacked FP8 GEMM against separate
#      torch._scaled_mm calls, and render's new GPU fast path (FP8 + compile + CUDA graphs on the embedded model)
#   2. the depthwise launch sweep (new: tiles_rowloop, tiles_rowpipe, 8-warp shapes, and rows_gather /
#      rows_gatherpipe4 / rows_gatherpipe6: one load and one SiLU per input element, 1 / 3 / 5 rows in flight)
# Then round 27b (the generator: official+tconv, the sweep's fastest launch, the stacking A/B), 27c (GEMM
# autotuning, profile), 27d (coordinate descent).
source bench/gpu_setup.sh
{
echo "== GPU tests"
timeout 340 python3 -m pytest tests/gpu/test_glu_conv_gpu.py tests/gpu/test_streaming_gpu.py tests/unit/test_quant.py \
  tests/gpu/test_fast_path_render_gpu.py \
  -q -p no:cacheprovider -k "glu or prequantized or compiled_graph_step or stacked or render" \
  -rfE 2>&1 \
  | grep -E "passed|failed|FAILED|Error|assert" | tail -12
echo "== depthwise sweep"
timeout 170 python3 -m bench.kernels --quick --only depthwise_glu,depthwise_glu_sweep \
  --json $OUT/kernels_depthwise.json 2>&1 | grep -E "^depthwise" | tail -40
python3 -c "
import json; rows=json.load(open('$OUT/kernels_depthwise.json'))['rows']
r=min((r for r in rows if r['op']=='depthwise_glu_sweep' and r['ok']), key=lambda r: r['ms'])
k,*v=r['shape'].split('-'); print('fastest launch (SANA_WM_GLU_CONFIG):', ','.join([k,*v[:3], '1' if v[3]=='True' else '0']))"
} 2>&1 | tee $OUT/log
