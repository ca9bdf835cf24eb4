#!/usr/bin/env bash
# Round 40 (session 15's last ~3 min of device time): the FP8 static generator over the release's official scope
# (the product default) with session 15's kernels (round 33 before them: 139.3 ms; official+tconv now 131.7).
source bench/gpu_setup.sh
FILTER="Warn\|W12\|_warn\|warnings.warn"
{
echo "== generator alone, fp8 static official + compile"
timeout 150 python3 -m runtime.cli bench --precision fp8 --act-scales static --scope official --chunks 8 --warmup 3 \
  --compile --no-decode --json $OUT/bench_fp8_static_official.json 2>&1 | grep -v "$FILTER" | tail -5
} 2>&1 | tee $OUT/log
