#!/usr/bin/env bash
# Round 35 (prepared in session 14; ~6 min): the one-pass adaLN input kernel (kernels.norm_modulate: residual add,
# LayerNorm, modulate, E4M3 codes; off by default, SANA_WM_ADALN_KERNEL=1)
#   1. GPU tests: the kernel at the full chunk shape, every launch choice; the full config in FP8 with it, eager
#      and compiled + graphed
#   2. beside the same expression compiled by inductor (round 30 in the model: ~35 us attention input, ~26 us FFN
#      input) and the launch sweep: ~10-15 us expected from its bytes
#   3. the cross-attention to the 300 text tokens through each SDPA backend (cuDNN ~30 us per call in the model,
#      100 calls per chunk)
# Then bench/gpu_round35b.sh: the generator with and without it.
source bench/gpu_setup.sh
{
echo "== GPU tests: ln_modulate"
timeout 330 python3 -m pytest tests/gpu/test_norm_modulate_gpu.py -q -p no:cacheprovider -rfE 2>&1 \
  | grep -E "passed|failed|FAILED|Error|assert" | tail -8
echo "== ln_modulate vs inductor"
timeout 200 python3 -m bench.kernels --quick --only ln_modulate,ln_modulate_sweep --json $OUT/kernels_ln_modulate.json \
  2>&1 | grep -E "^ln_modulate" | tail -20
echo "== the softmax blocks' attention and the cross-attention (300 text keys) by SDPA backend"
timeout 90 python3 -m bench.sdpa_launches --json $OUT/sdpa_launches.json 2>&1 | grep -v "Warn\|warn"
} 2>&1 | tee $OUT/log
