#!/usr/bin/env bash
# Round 36 (session 15; ~8 min): the depthwise conv + GLU kernel in strips of columns (kernels.glu_conv_triton
# "_w<n>" kinds: W = 40 runs 64 lanes per row otherwise), against the default launch in the same session; the FP8
# static generator (official+tconv, adaLN kernel now on by default) with the fastest strip launch and with the
# default; the cross-attention by SDPA backend timed from a CUDA graph (round 35's eager timing was launch-bound);
# the adaLN kernel's full-config GPU test with its corrected compiled-vs-eager bound.
source bench/gpu_setup.sh
FILTER="Warn\|W12\|_warn\|warnings.warn"
{
echo "== depthwise_glu launches in strips, and the default (rows_gather 22 x 16 x 8)"
timeout 150 python3 -m bench.kernels --quick --only depthwise_glu_sweep --shapes _w,rows_gather-22-16-8 \
  --json $OUT/kernels_depthwise_strips.json 2>&1 | grep -E "^depthwise|ABOVE" | tail -16
BEST=$(python3 -m bench.fastest_launch $OUT/kernels_depthwise_strips.json depthwise_glu_sweep)
echo "== fastest: $BEST"
for glu in "$BEST" ""; do
  echo "== generator alone, fp8 static official+tconv + compile, SANA_WM_GLU_CONFIG=${glu:-default}"
  SANA_WM_GLU_CONFIG=$glu timeout 170 python3 -m runtime.cli bench --precision fp8 --act-scales static \
    --scope official+tconv --chunks 8 --warmup 3 --compile --no-decode \
    --json $OUT/bench_fp8_static_tconv_glu_${glu:-default}.json 2>&1 | grep -v "$FILTER" | tail -5
done
echo "== the cross-attention (300 text keys) by SDPA backend, graphed"
timeout 60 python3 -m bench.sdpa_launches --json $OUT/sdpa_launches.json 2>&1 | grep cross
echo "== GPU test: the full config with the adaLN kernel"
timeout 150 python3 -m pytest tests/gpu/test_norm_modulate_gpu.py -q -p no:cacheprovider -rfE -k full_config 2>&1 \
  | grep -E "passed|failed|FAILED|Error|assert" | tail -6
} 2>&1 | tee $OUT/log
