#!/usr/bin/env bash
# Round 37 (session 15; ~7 min): the adaLN kernel reading the block's t0 rows and its scale_shift_table rows apart
# (no small kernels materialising shift / scale: 400 launches per chunk in round 35b's profile); the depthwise
# kernel's new default (rows_w8 22 x 64 x 4) and its neighbours; the FP8 static generator (official+tconv) with the
# fastest; its profile.
source bench/gpu_setup.sh
FILTER="Warn\|W12\|_warn\|warnings.warn"
{
echo "== GPU tests: ln_modulate (every launch, table rows; the full config with the kernel)"
timeout 200 python3 -m pytest tests/gpu/test_norm_modulate_gpu.py -q -p no:cacheprovider -rfE 2>&1 \
  | grep -E "passed|failed|FAILED|Error|assert" | tail -6
echo "== depthwise_glu: strips of columns, three loads per row"
timeout 120 python3 -m bench.kernels --quick --only depthwise_glu_sweep --shapes rows_w \
  --json $OUT/kernels_depthwise_rows_w.json 2>&1 | grep -E "^depthwise|ABOVE" | tail -16
BEST=$(python3 -m bench.fastest_launch $OUT/kernels_depthwise_rows_w.json depthwise_glu_sweep)
echo "== fastest: $BEST"
echo "== generator alone, fp8 static official+tconv + compile, SANA_WM_GLU_CONFIG=$BEST"
SANA_WM_GLU_CONFIG=$BEST timeout 170 python3 -m runtime.cli bench --precision fp8 --act-scales static \
  --scope official+tconv --chunks 8 --warmup 3 --compile --no-decode \
  --json $OUT/bench_fp8_static_tconv_glu_$(echo $BEST | tr , _).json 2>&1 | grep -v "$FILTER" | tail -5
echo "== profile (every kernel), same"
SANA_WM_GLU_CONFIG=$BEST timeout 150 python3 -m runtime.cli bench --precision fp8 --act-scales static \
  --scope official+tconv --chunks 2 --warmup 2 --compile --no-decode --profile $OUT/profile_fp8_static_tconv.txt \
  --json /tmp/p.json 2>&1 | tail -1
grep -A24 "Every GPU kernel" $OUT/profile_fp8_static_tconv.txt | cut -c1-150
} 2>&1 | tee $OUT/log
