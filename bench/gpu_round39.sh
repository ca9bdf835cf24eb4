#!/usr/bin/env bash
# Round 39 (session 15; ~4 min): the adaLN kernel with a row's 2240 channels as a 2048 + 256-lane pair of tiles
# (one 4096-lane tile before, 45 % idle): every launch swept from a CUDA graph, the fastest over both calls in the
# FP8 static generator (official+tconv); GPU tests of the kernel at full shape.
source bench/gpu_setup.sh
FILTER="Warn\|W12\|_warn\|warnings.warn"
{
echo "== ln_modulate launches (graphed, two channel tiles) against the compiled expression"
timeout 100 python3 -m bench.kernels --quick --only ln_modulate,ln_modulate_sweep --json $OUT/kernels_ln_modulate.json \
  2>&1 | grep -E "^ln_modulate|ABOVE" | tail -20
BEST=$(python3 -m bench.fastest_launch $OUT/kernels_ln_modulate.json ln_modulate_sweep --both-calls)
echo "== generator alone, fp8 static official+tconv + compile, SANA_WM_LN_CONFIG=$BEST"
SANA_WM_LN_CONFIG=$BEST timeout 170 python3 -m runtime.cli bench --precision fp8 --act-scales static \
  --scope official+tconv --chunks 8 --warmup 3 --compile --no-decode \
  --json $OUT/bench_fp8_static_tconv_ln_$(echo $BEST | tr , _).json 2>&1 | grep -v "$FILTER" | tail -5
echo "== GPU tests: ln_modulate at full shape, every launch"
timeout 100 python3 -m pytest tests/gpu/test_norm_modulate_gpu.py -q -p no:cacheprovider -rfE -k "not full_config" 2>&1 \
  | grep -E "passed|failed|FAILED|Error|assert" | tail -6
} 2>&1 | tee $OUT/log
