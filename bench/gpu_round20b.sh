#!/usr/bin/env bash
# Round 20b (session 10, second call, warm, ~4 min):
#   1. bench.kernels: the GDN launch configs swept with the whole two-stream layer as the objective (the scans'
#      own sweep chose them one branch at a time), then the layer timed with the best
#   2. the FP8 profile with static activation scales (where the ~158 ms go now)
source bench/gpu_setup.sh
{
echo "== GDN layer: tune on the layer objective"
timeout 200 python3 -m bench.kernels --quick --tune layer --only layer_2s16_graph,bidi_main16 \
  --json $OUT/kernels_tune_layer.json 2>&1 | grep -E "tune|^(layer|bidi)|GDN layer" | tail -30
echo "== fp8 static profile"
timeout 150 python3 -m runtime.cli bench --precision fp8 --act-scales static --chunks 2 --warmup 2 --compile \
  --no-decode --profile $OUT/profile_fp8_static.txt --json /tmp/p.json 2>&1 | tail -1
} 2>&1 | tee $OUT/log
