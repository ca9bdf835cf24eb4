#!/usr/bin/env bash
# Round 12 (one ~9-minute call, after round 11): issue #5's GDN layer with the phase-A token split, and the
# 60 s clip end to end after sessions 6-7's generator changes (round 9: 264.9 ms/chunk bf16, 244.7 FP8).
#   1. bench.kernels --tune: coordinate descent over the scan launch configs, now including a_split_s (phase A's
#      tokens split over programs that add partial Gram products atomically), then the layer with the best
#      (the tuned config goes into kernels/gdn_triton.py LAUNCH_CONFIGS by hand if it wins)
#   2. the 60 s clip (40 chunks), bf16 then FP8, overlapped decode (issue #10: 5x, under 12 s)
# Carry .whl (diffusers). At most 8 files come back from $OUT.
source bench/gpu_setup.sh
{
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
echo "== GPU test: phase A token split (small shapes, compiled for the GPU)"
timeout 60 python3 -m pytest tests/unit/test_gdn_kernels.py -q -p no:cacheprovider -rfE -k "token_split" 2>&1 | tail -3
echo "== GDN kernels, tuned"
timeout 200 python3 -m bench.kernels --tune --quick --only bidi_main16,layer_fcam16_graph --json $OUT/kernels_tuned.json \
  2>&1 | grep -E "tune|layer|bidi|GDN" | tail -20
echo "== 60 s clip, bf16 + compile, overlapped decode"
timeout 170 python3 -m runtime.cli bench --chunks 40 --warmup 3 --compile \
  --json $OUT/bench_bf16_60s_clip.json 2>&1 | grep -v "Warn\|W12\|_warn" | tail -10
echo "== 60 s clip, fp8 + compile, overlapped decode"
timeout 170 python3 -m runtime.cli bench --precision fp8 --chunks 40 --warmup 3 --compile \
  --json $OUT/bench_fp8_60s_clip.json 2>&1 | grep -v "Warn\|W12\|_warn" | tail -10
} 2>&1 | tee $OUT/log
