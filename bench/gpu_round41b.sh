#!/usr/bin/env bash
# Round 41b (prepared in session 15; ~5 min): the adaLN kernel's persistent launches (kernels.norm_modulate_triton:
# a few programs per SM walking row blocks, the next block's loads pipelined; untimed CONFIG_CHOICES with 4
# entries) swept from a CUDA graph beside the one-row-per-program launches (round 39: 1 x 4, 21.2 / 24.2 us, about
# a third of the byte floor); GPU tests of every launch at full shape; the FP8 static generator (official+tconv)
# with the fastest over both calls, if that is not the default (1 x 4).
source bench/gpu_setup.sh
FILTER="Warn\|W12\|_warn\|warnings.warn"
{
echo "== GPU tests: ln_modulate at full shape, every launch"
timeout 120 python3 -m pytest tests/gpu/test_norm_modulate_gpu.py -q -p no:cacheprovider -rfE -k "not full_config" 2>&1 \
  | grep -E "passed|failed|FAILED|Error|assert" | tail -6
echo "== ln_modulate launches (graphed) against the compiled expression"
timeout 150 python3 -m bench.kernels --quick --only ln_modulate,ln_modulate_sweep --json $OUT/kernels_ln_modulate.json \
  2>&1 | grep -E "^ln_modulate|ABOVE" | tail -30
BEST=$(python3 -m bench.fastest_launch $OUT/kernels_ln_modulate.json ln_modulate_sweep --both-calls)
echo "== fastest over both calls: $BEST"
if [ "$BEST" != "1,4" ]; then
  SANA_WM_LN_CONFIG=$BEST timeout 170 python3 -m runtime.cli bench --precision fp8 --act-scales static \
    --scope official+tconv --chunks 8 --warmup 3 --compile --no-decode \
    --json $OUT/bench_fp8_static_tconv_ln_$(echo $BEST | tr , _).json 2>&1 | grep -v "$FILTER" | tail -5
fi
} 2>&1 | tee $OUT/log
