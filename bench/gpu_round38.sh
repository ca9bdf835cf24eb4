#!/usr/bin/env bash
# Round 38 (session 15; ~5 min): the adaLN kernel's launch with the table rows added in the kernel (round 37: 21.2 us
# per call at 2 x 8, 14.7 before; now 1 x 8), swept from a CUDA graph as the block calls it; the UCPE prep's
# inflation mean moved out of its custom op (one eager kernel per call before); the FP8 static generator
# (official+tconv) with the fastest adaLN launch; GPU tests of the two changed ops.
source bench/gpu_setup.sh
FILTER="Warn\|W12\|_warn\|warnings.warn"
{
echo "== ln_modulate launches (graphed, table rows in the kernel) against the compiled expression"
timeout 100 python3 -m bench.kernels --quick --only ln_modulate,ln_modulate_sweep --json $OUT/kernels_ln_modulate.json \
  2>&1 | grep -E "^ln_modulate|ABOVE" | tail -20
BEST=$(python3 -m bench.fastest_launch $OUT/kernels_ln_modulate.json ln_modulate_sweep --both-calls)
echo "== fastest over both calls: SANA_WM_LN_CONFIG=$BEST"
echo "== generator alone, fp8 static official+tconv + compile, SANA_WM_LN_CONFIG=$BEST"
SANA_WM_LN_CONFIG=$BEST timeout 170 python3 -m runtime.cli bench --precision fp8 --act-scales static \
  --scope official+tconv --chunks 8 --warmup 3 --compile --no-decode \
  --json $OUT/bench_fp8_static_tconv_ln_$(echo $BEST | tr , _).json 2>&1 | grep -v "$FILTER" | tail -5
echo "== GPU tests: ucpe_qkv_prep, the full config with the adaLN kernel"
timeout 150 python3 -m pytest tests/gpu/test_gdn_kernels_gpu.py tests/gpu/test_norm_modulate_gpu.py -q -p no:cacheprovider \
  -rfE -k "ucpe_qkv or full_config" 2>&1 | grep -E "passed|failed|FAILED|Error|assert" | tail -6
} 2>&1 | tee $OUT/log
