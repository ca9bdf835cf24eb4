#!/usr/bin/env bash
# Round 42b (session 16; ~6 min): the camera inputs built inside the captured chunk step from the chunk's pose
# window (runtime.session._pose_window / _window_camera). Round 42 split the FP8 static generator's step into 2.42 ms
# of host work in front of the replay (the GPU idle) and 132.12 ms of graph GPU time; the host part should now be
# a few copies. GPU tests: the graphed step equals the eager one (tiny and full config) and reports its split.
source bench/gpu_setup.sh
FILTER="Warn\|W12\|_warn\|warnings.warn"
{
echo "== GPU tests: graph step (camera inputs inside) equals eager, tiny + full config; the host / graph split"
timeout 200 python3 -m pytest tests/gpu/test_streaming_gpu.py -q -p no:cacheprovider -rfE \
  -k "captures_once or split_their_time or compiled_graph_step" 2>&1 | grep -E "passed|failed|FAILED|Error|assert" | tail -6
for SCOPE in official+tconv official; do
  echo "== generator alone, fp8 static $SCOPE + compile, 16 chunks"
  timeout 170 python3 -m runtime.cli bench --precision fp8 --act-scales static --scope $SCOPE --chunks 16 --warmup 3 \
    --compile --no-decode --json $OUT/bench_fp8_static_$(echo $SCOPE | tr + _)_window.json 2>&1 | grep -v "$FILTER" | tail -6
done
} 2>&1 | tee $OUT/log
