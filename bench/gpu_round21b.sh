#!/usr/bin/env bash
# Round 21b (session 10, warm, ~5 min):
#   1. bench.kernels --tune layer again from round 20b's config: two descent passes, then the prep kernels'
#      heads per step (2 / 4 / 8), and the layer timed with the best (three repeats of the row)
#   2. the FP8 static profile after round 21's changes
source bench/gpu_setup.sh
{
echo "== GDN layer: tune on the layer objective"
timeout 300 python3 -m bench.kernels --quick --tune layer --only layer_2s16_graph \
  --json $OUT/kernels_tune_layer.json 2>&1 | grep -E "tune|^layer|GDN layer" | tail -30
echo "== fp8 static profile"
timeout 150 python3 -m runtime.cli bench --precision fp8 --act-scales static --chunks 2 --warmup 2 --compile \
  --no-decode --profile $OUT/profile_fp8_static.txt --json /tmp/p.json 2>&1 | tail -1
} 2>&1 | tee $OUT/log
