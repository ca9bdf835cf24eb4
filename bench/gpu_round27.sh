#!/usr/bin/env bash
# Round 27 (prepared in sessions 11-12 while no device time was left; ~8 min, carry .whl with diffusers):
#   1. GPU tests: the depthwise + GLU kernel at every sweep choice (the row-loop kinds of session 11 and the
#      gather kind of session 12 included), the compiled full config against eager (now with each attention
#      block's input projections stacked into one GEMM, session 12), the stacked FP8 GEMM against separate
#      torch._scaled_mm calls, and render's new GPU fast path (FP8 + compile + CUDA graphs on the embedded model)
#   2. the depthwise launch sweep (new: tiles_rowloop, tiles_rowpipe, 8-warp shapes, rows_gather: one load and
#      one SiLU per input element)
#   3. FP8 static generator over the official+tconv scope (the FFN temporal conv in FP8 too; quality on the
#      shipped model 39.46 vs 39.71 dB), with the stacked input projections (round 26, official scope, unstacked:
#      146.6 ms/chunk)
# Then round 27b (the sweep's fastest launch, the A/Bs), 27c (GEMM autotuning, profile), 27d (coordinate descent).
source bench/gpu_setup.sh
{
echo "== GPU tests"
timeout 300 python3 -m pytest tests/gpu/test_glu_conv_gpu.py tests/gpu/test_streaming_gpu.py tests/unit/test_quant.py \
  tests/gpu/test_fast_path_render_gpu.py \
  -q -p no:cacheprovider -k "glu or prequantized or compiled_graph_step or gpu_fp8_linear_stacked or render" \
  -rfE 2>&1 \
  | grep -E "passed|failed|FAILED|Error|assert" | tail -12
echo "== depthwise sweep"
timeout 150 python3 -m bench.kernels --quick --only depthwise_glu,depthwise_glu_sweep \
  --json $OUT/kernels_depthwise.json 2>&1 | grep -E "^depthwise" | tail -34
python3 -c "
import json; rows=json.load(open('$OUT/kernels_depthwise.json'))['rows']
r=min((r for r in rows if r['op']=='depthwise_glu_sweep' and r['ok']), key=lambda r: r['ms'])
k,*v=r['shape'].split('-'); print('fastest launch (SANA_WM_GLU_CONFIG):', ','.join([k,*v[:3], '1' if v[3]=='True' else '0']))"
echo "== generator alone, fp8 static + compile, scope official+tconv"
timeout 150 python3 -m runtime.cli bench --precision fp8 --act-scales static --scope official+tconv --chunks 8 \
  --warmup 3 --compile --no-decode --json $OUT/bench_fp8_static_official_tconv.json 2>&1 \
  | grep -v "Warn\|W12\|_warn\|warnings.warn" | tail -7
} 2>&1 | tee $OUT/log
