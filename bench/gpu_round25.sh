#!/usr/bin/env bash
# Round 25 (session 11, ~7 min, carry .whl):
#   1. GPU tests: depthwise + GLU (every sweep choice; SiLU inside now with the one-instruction tanh), the
#      streaming cache's one-launch K/V write (kernels/token_copy), the compiled full config against eager
#   2. the depthwise launch sweep (SiLU inside with tanh.approx is new; shapes around round 24's fastest)
#   3. the FP8 static generator with the default launch (tiles 32 x 64, separate SiLU; round 24: 144.5 ms/chunk
#      before the one-launch K/V write), then with the sweep's fastest launch if it is another one
#   4. the FP8 static profile
source bench/gpu_setup.sh
{
echo "== GPU tests"
timeout 220 python3 -m pytest tests/gpu/test_glu_conv_gpu.py tests/unit/test_token_copy.py tests/gpu/test_streaming_gpu.py \
  -q -p no:cacheprovider -k "glu or prequantized or copy or compiled_graph_step" -rfE 2>&1 \
  | grep -E "passed|failed|FAILED|Error|assert" | tail -12
echo "== depthwise sweep"
timeout 150 python3 -m bench.kernels --quick --only depthwise_glu,depthwise_glu_sweep \
  --json $OUT/kernels_depthwise.json 2>&1 | grep -E "^depthwise" | tail -30
best=$(python3 -c "
import json; rows=json.load(open('$OUT/kernels_depthwise.json'))['rows']
r=min((r for r in rows if r['op']=='depthwise_glu_sweep' and r['ok']), key=lambda r: r['ms'])
k,*v=r['shape'].split('-'); print(','.join([k,*v[:3], '1' if v[3]=='True' else '0']))")
echo "fastest launch: $best"
echo "== generator alone, fp8 static + compile, default launch"
timeout 150 python3 -m runtime.cli bench --precision fp8 --act-scales static --chunks 8 --warmup 3 --compile \
  --no-decode --json $OUT/bench_fp8_static.json 2>&1 | grep -v "Warn\|W12\|_warn\|warnings.warn" | tail -7
if [ -n "$best" ] && [ "$best" != "tiles,32,64,4,0" ]; then
  echo "== generator alone, fp8 static + compile, SANA_WM_GLU_CONFIG=$best"
  SANA_WM_GLU_CONFIG=$best timeout 150 python3 -m runtime.cli bench --precision fp8 --act-scales static --chunks 8 \
    --warmup 3 --compile --no-decode --json $OUT/bench_fp8_static_glu_best.json 2>&1 \
    | grep -v "Warn\|W12\|_warn\|warnings.warn" | tail -7
fi
echo "== fp8 static profile"
timeout 120 python3 -m runtime.cli bench --precision fp8 --act-scales static --chunks 2 --warmup 2 --compile \
  --no-decode --profile $OUT/profile_fp8_static.txt --json /tmp/p.json 2>&1 | tail -1
} 2>&1 | tee $OUT/log
