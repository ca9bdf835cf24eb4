#!/usr/bin/env bash
# Round 27 (prepared in sessions 11-12 while no device time was left; ~5-6 min, carry .whl with diffusers):
#   1. GPU tests of the depthwise + GLU kernel at every sweep choice (the row-loop kinds of session 11, the
#      gather kinds of session 12) and of the FFN with the E4M3-output launch
#   2. the depthwise launch sweep (new: tiles_rowloop, tiles_rowpipe, 8-warp shapes, and rows_gather /
#      rows_gatherpipe4 / rows_gatherpipe6: one load and one SiLU per input element, 1 / 3 / 5 rows in flight);
#      prints the fastest launch
# Then round 27b (the other GPU tests, the generator over official+tconv with the default and the fastest launch),
# 27c (the stacking A/B, GEMM autotuning), 27d (coordinate descent, profile).
source bench/gpu_setup.sh
{
echo "== GPU tests: depthwise + GLU"
timeout 200 python3 -m pytest tests/gpu/test_glu_conv_gpu.py -q -p no:cacheprovider -rfE 2>&1 \
  | grep -E "passed|failed|FAILED|Error|assert" | tail -12
echo "== depthwise sweep"
timeout 170 python3 -m bench.kernels --quick --only depthwise_glu,depthwise_glu_sweep \
  --json $OUT/kernels_depthwise.json 2>&1 | grep -E "^depthwise" | tail -40
python3 -c "
import json; rows=json.load(open('$OUT/kernels_depthwise.json'))['rows']
r=min((r for r in rows if r['op']=='depthwise_glu_sweep' and r['ok']), key=lambda r: r['ms'])
k,*v=r['shape'].split('-'); print('fastest launch (SANA_WM_GLU_CONFIG):', ','.join([k,*v[:3], '1' if v[3]=='True' else '0']))"
} 2>&1 | tee $OUT/log
