#!/usr/bin/env bash
# Round 42 (session 16; ~4 min): where the FP8 generator's last milliseconds go. Round 41 had 125.9 ms of kernels
# per chunk against 130.4-131.3 ms per chunk of wall time: the bench now splits each graph-replayed step into host
# work in front of the replay (the GPU idles through it) and the graph's own GPU time (CUDA events around the
# replay; that minus the kernels is the graph's launch gaps), and the profile names the ops that launch the
# ~425 memsets per chunk (each a graph node).
source bench/gpu_setup.sh
FILTER="Warn\|W12\|_warn\|warnings.warn"
{
echo "== GPU test: the replayed steps' host / graph split"
timeout 90 python3 -m pytest tests/gpu/test_streaming_gpu.py -q -p no:cacheprovider -rfE -k "split_their_time" 2>&1 \
  | grep -E "passed|failed|FAILED|Error|assert" | tail -4
echo "== generator alone, fp8 static official+tconv + compile, 16 chunks, with the host / graph split"
timeout 200 python3 -m runtime.cli bench --precision fp8 --act-scales static --scope official+tconv --chunks 16 \
  --warmup 3 --compile --no-decode --json $OUT/bench_fp8_static_tconv_split.json 2>&1 | grep -v "$FILTER" | tail -6
echo "== profile: memsets by launching op"
timeout 130 python3 -m runtime.cli bench --precision fp8 --act-scales static --scope official+tconv --chunks 2 --warmup 2 \
  --compile --no-decode --profile $OUT/profile_fp8_static_tconv.txt --json /tmp/p.json 2>&1 | tail -1
grep -A2 "Every GPU kernel" $OUT/profile_fp8_static_tconv.txt
grep -A25 "Memsets by the ops" $OUT/profile_fp8_static_tconv.txt | cut -c1-220
} 2>&1 | tee $OUT/log
