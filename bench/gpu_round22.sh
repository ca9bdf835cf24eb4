#!/usr/bin/env bash
# Round 22 (session 10, the last ~7 device-minutes):
#   1. the GDN layer row three times (the fp32 reference's eager time varies from run to run with its host
#      overhead, and with it the speedup; the layer itself ~0.19 ms since round 20b)
#   2. end to end, FP8 official scope with static activation scales: a 60 s clip (40 chunks = 960 frames + the
#      first) generated and decoded (LTX-2 VAE config, random weights), decode overlapped
#   3. the generator alone, FP8 static, with inductor's programmatic dependent launch (TORCHINDUCTOR_ENABLE_PDL=1):
#      does it shorten the ~14 ms of launch gaps per chunk? (round 21: 150.4 ms without)
# Carry .whl (diffusers).
source bench/gpu_setup.sh
{
for i in 1 2 3; do
  echo "== GDN layer, run $i"
  timeout 80 python3 -m bench.kernels --quick --only layer_2s16_graph --json $OUT/kernels_layer_$i.json 2>&1 \
    | grep -E "^layer|GDN layer" | tail -3
done
echo "== 60 s clip, fp8 static, decode overlapped + compile"
timeout 240 python3 -m runtime.cli bench --precision fp8 --act-scales static --chunks 40 --warmup 3 --compile \
  --json $OUT/bench_fp8_static_60s_decode.json 2>&1 | grep -v "Warn\|W12\|_warn\|warnings.warn" | tail -9
echo "== generator alone, fp8 static, TORCHINDUCTOR_ENABLE_PDL=1"
TORCHINDUCTOR_ENABLE_PDL=1 timeout 150 python3 -m runtime.cli bench --precision fp8 --act-scales static --chunks 6 \
  --warmup 3 --compile --no-decode --json $OUT/bench_fp8_static_pdl.json 2>&1 \
  | grep -v "Warn\|W12\|_warn\|warnings.warn" | tail -7
} 2>&1 | tee $OUT/log
