#!/usr/bin/env bash
# Round 35b (prepared in session 14; ~7 min): the FP8 static generator (official+tconv scope, round 33: 135.6 ms per
# chunk) with SANA_WM_ADALN_KERNEL=1 and without, in the same machine session; LN=rows,warps picks the kernel's
# launch (round 35's fastest; SANA_WM_LN_CONFIG). Both runs also carry session 14's untimed short-conv rewrite
# (runtime/short_conv.py: one inductor pass instead of three kernels, ~49 us per GDN block call in round 30), so the
# "0" run against round 33 times that. Then the profile with the kernel on: where the chunk's time goes now.
source bench/gpu_setup.sh
FILTER="Warn\|W12\|_warn\|warnings.warn"
[ -n "$LN" ] && export SANA_WM_LN_CONFIG=$LN
{
for on in 1 0; do
  echo "== generator alone, fp8 static official+tconv + compile, SANA_WM_ADALN_KERNEL=$on"
  SANA_WM_ADALN_KERNEL=$on timeout 170 python3 -m runtime.cli bench --precision fp8 --act-scales static \
    --scope official+tconv --chunks 8 --warmup 3 --compile --no-decode --json $OUT/bench_fp8_static_tconv_adaln$on.json \
    2>&1 | grep -v "$FILTER" | tail -5
done
echo "== profile (every kernel), fp8 static official+tconv, SANA_WM_ADALN_KERNEL=1"
SANA_WM_ADALN_KERNEL=1 timeout 150 python3 -m runtime.cli bench --precision fp8 --act-scales static \
  --scope official+tconv --chunks 2 --warmup 2 --compile --no-decode --profile $OUT/profile_fp8_static_tconv_adaln.txt \
  --json /tmp/p.json 2>&1 | tail -1
grep -A40 "Every GPU kernel" $OUT/profile_fp8_static_tconv_adaln.txt | cut -c1-160
} 2>&1 | tee $OUT/log
