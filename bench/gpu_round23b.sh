#!/usr/bin/env bash
# Round 23b (prepared in session 10; warm after round 23, ~5 min): two inductor code-generation knobs A/B on the FP8
# static generator. The LayerNorm + modulate + quantize kernels (two per block and pass, ~27-32 us each for ~30 MB
# of traffic, ~1 TB/s) are looped reductions; the GDN blocks' one also pools over tokens for the gate (a reduction
# along the other axis in the same kernel: inductor's "mix order reduction").
#   1. TORCHINDUCTOR_MIX_ORDER_REDUCTION=0 (separate kernels for the two reduction orders)
#   2. TORCHINDUCTOR_MULTI_KERNEL=1 (persistent and looped variants of each reduction, the faster picked at run time)
# Compare with round 23's FP8 static run. Carry .whl (diffusers).
source bench/gpu_setup.sh
{
for knob in TORCHINDUCTOR_MIX_ORDER_REDUCTION=0 TORCHINDUCTOR_MULTI_KERNEL=1; do
  echo "== generator alone, fp8 static + compile, $knob"
  env $knob timeout 150 python3 -m runtime.cli bench --precision fp8 --act-scales static --chunks 8 --warmup 3 \
    --compile --no-decode --json $OUT/bench_fp8_static_${knob%%=*}.json 2>&1 \
    | grep -v "Warn\|W12\|_warn\|warnings.warn" | tail -7
done
} 2>&1 | tee $OUT/log
