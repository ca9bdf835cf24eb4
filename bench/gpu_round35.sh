#!/usr/bin/env bash
# Round 35 (prepared in session 14; ~3 min): the one-pass adaLN input kernel (kernels.norm_modulate: residual add,
# LayerNorm, modulate, E4M3 codes), not on the model's path yet
#   1. GPU test at the full chunk shape, every launch choice
#   2. beside the same expression compiled by inductor (round 30: ~35 us attention input, ~26 us FFN input, in
#      the model), and the launch sweep. If it is clearly faster (~10-15 us expected from its bytes), integrate it
#      (the FP8 stacked projections and the FFN's inverted conv take the codes prequantized) and time the generator.
source bench/gpu_setup.sh
{
echo "== GPU tests: ln_modulate"
timeout 120 python3 -m pytest tests/gpu/test_norm_modulate_gpu.py -q -p no:cacheprovider -rfE 2>&1 \
  | grep -E "passed|failed|FAILED|Error|assert" | tail -8
echo "== ln_modulate vs inductor"
timeout 200 python3 -m bench.kernels --quick --only ln_modulate,ln_modulate_sweep --json $OUT/kernels_ln_modulate.json \
  2>&1 | grep -E "^ln_modulate" | tail -20
} 2>&1 | tee $OUT/log
