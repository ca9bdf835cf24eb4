#!/usr/bin/env bash
# Round 27 (prepared in session 11 after its device time ran out; ~8-9 min, carry .whl with diffusers; the GPU
# tests now cover 24 launch choices x 2 SiLU placements at full shape):
#   1. GPU tests: the depthwise + GLU kernel at every sweep choice (the new row-loop kinds included), the
#      compiled full config against eager (now with each attention block's input projections stacked into one
#      GEMM, session 12), the stacked FP8 GEMM against separate torch._scaled_mm calls
#   2. the depthwise launch sweep (new: tiles_rowloop, tiles_rowpipe (software-pipelined row loop) and 8-warp
#      shapes: fewer registers per thread, more warps per SM)
#   3. FP8 static generator, official scope, default launch (round 26: 146.6 ms/chunk; now with the stacked
#      input projections: qkv + output gate + beta as one GEMM, ~1-3 ms expected)
#   4. FP8 static generator over the official+tconv scope (the FFN temporal conv in FP8 too; quality on the
#      shipped model 39.46 vs 39.71 dB): expected ~3 ms less (the temporal conv's bf16 GEMMs ~9 ms per chunk)
#   5. the same with the sweep's fastest depthwise launch, if it is another one
source bench/gpu_setup.sh
{
echo "== GPU tests"
timeout 280 python3 -m pytest tests/gpu/test_glu_conv_gpu.py tests/gpu/test_streaming_gpu.py tests/unit/test_quant.py \
  -q -p no:cacheprovider -k "glu or prequantized or compiled_graph_step or gpu_fp8_linear_stacked" -rfE 2>&1 \
  | grep -E "passed|failed|FAILED|Error|assert" | tail -12
echo "== depthwise sweep"
timeout 150 python3 -m bench.kernels --quick --only depthwise_glu,depthwise_glu_sweep \
  --json $OUT/kernels_depthwise.json 2>&1 | grep -E "^depthwise" | tail -30
best=$(python3 -c "
import json; rows=json.load(open('$OUT/kernels_depthwise.json'))['rows']
r=min((r for r in rows if r['op']=='depthwise_glu_sweep' and r['ok']), key=lambda r: r['ms'])
k,*v=r['shape'].split('-'); print(','.join([k,*v[:3], '1' if v[3]=='True' else '0']))")
echo "fastest launch: $best"
for scope in official official+tconv; do
  echo "== generator alone, fp8 static + compile, scope $scope"
  timeout 150 python3 -m runtime.cli bench --precision fp8 --act-scales static --scope $scope --chunks 8 --warmup 3 \
    --compile --no-decode --json $OUT/bench_fp8_static_${scope/+/_}.json 2>&1 \
    | grep -v "Warn\|W12\|_warn\|warnings.warn" | tail -7
done
if [ -n "$best" ] && [ "$best" != "tiles,32,64,4,0" ]; then
  echo "== generator alone, fp8 static + compile, scope official+tconv, SANA_WM_GLU_CONFIG=$best"
  SANA_WM_GLU_CONFIG=$best timeout 150 python3 -m runtime.cli bench --precision fp8 --act-scales static \
    --scope official+tconv --chunks 8 --warmup 3 --compile --no-decode \
    --json $OUT/bench_fp8_static_tconv_glu_best.json 2>&1 | grep -v "Warn\|W12\|_warn\|warnings.warn" | tail -7
fi
} 2>&1 | tee $OUT/log
