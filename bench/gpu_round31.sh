#!/usr/bin/env bash
# Round 31 (session 14; ~7 min): inductor's reductions. The LayerNorm + modulate + FP8-quantize kernels are looped
# two-pass reductions over the 2240 channels (round 30's code: ~35 us each at ~30 % of bandwidth, ~6 ms per chunk);
# TORCHINDUCTOR_MULTI_KERNEL=1 compiles a persistent (one-pass) version beside each and keeps the faster,
# =2 forces the persistent one. A baseline in the same machine session first (round 28: 139.5 ms/chunk).
source bench/gpu_setup.sh
FILTER="Warn\|W12\|_warn\|warnings.warn"
run() {  # $1: name, the rest: environment assignments
  local name=$1; shift
  echo "== generator alone, fp8 static + compile, ${*:-baseline}"
  env "$@" timeout 170 python3 -m runtime.cli bench --precision fp8 --act-scales static --chunks 8 --warmup 3 \
    --compile --no-decode --json $OUT/bench_fp8_static_$name.json 2>&1 | grep -v "$FILTER" | grep -E "p50|Error|error" | tail -3
}
{
run baseline
run multi_kernel1 TORCHINDUCTOR_MULTI_KERNEL=1
run multi_kernel2 TORCHINDUCTOR_MULTI_KERNEL=2
} 2>&1 | tee $OUT/log
