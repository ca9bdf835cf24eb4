#!/usr/bin/env bash
# Round 34 (session 14; ~1 min): how many kernels cuDNN launches for the softmax blocks' attention, by layout
# (round 30's profile: 5 launches of 187 us per call)
source bench/gpu_setup.sh
{
timeout 150 python3 -m bench.sdpa_launches --json $OUT/sdpa_launches.json 2>&1 | grep -v "Warn\|warn"
} 2>&1 | tee $OUT/log
