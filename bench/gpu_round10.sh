#!/usr/bin/env bash
# Round 10 (one ~7-minute call, for the next session): what session 6 could not measure.
#   1. the rewritten GPU test of the compiled FP8 activation quantizers (a first version failed in session 6)
#   2. the FP8 generator alone with SANA_WM_FP8_ACT_QUANT=inductor against the default (round 9: 191.0 ms)
#   3. the GDN layer kernel bench with phase C bf16 as the default (issue #5; round 7: 0.345 ms)
# Carry .whl (diffusers). At most 8 files come back from $OUT.
source bench/gpu_setup.sh
{
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
echo "== GPU test: compiled FP8 activation quantizers"
timeout 90 python3 -m pytest tests/unit/test_quant.py -m gpu -q -p no:cacheprovider -rfE -k activation_quantizers 2>&1 | tail -15
echo "== FP8 generator alone, SANA_WM_FP8_ACT_QUANT=inductor"
SANA_WM_FP8_ACT_QUANT=inductor timeout 200 python3 -m runtime.cli bench --precision fp8 --chunks 6 --warmup 3 --compile \
  --no-decode --json $OUT/bench_fp8_act_quant_inductor_generator.json 2>&1 | grep -v "Warn\|W12\|_warn" | tail -8
echo "== GDN kernels (defaults: bf16 phases A and C)"
timeout 70 python3 -m bench.kernels --quick --only bidi_main16,layer_fcam16_graph --json $OUT/kernels.json 2>&1 | tail -6
} 2>&1 | tee $OUT/log
