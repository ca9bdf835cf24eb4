#!/usr/bin/env bash
# Round 7 (one ~8-minute call, for the next session): what session 5 changed but could not measure.
#   1. GPU tests (the rewritten overlap-decode timing test; everything else passed in round 6)
#   2. the LTX-2 decode alone with the fused causal-cat + reflection padding (was 113.6 ms/chunk on the H100),
#      then with the channels-last experiment
#   3. the generator alone (--no-decode) with bf16 prep outputs and bf16 phase A (issue #10: 200 ms target)
#   4. the 60 s clip end to end with the overlapped decode (issue #10: under 12 s; round 6: 13.1 s)
#   5. a kernel profile of the bf16 chunk
# Carry .whl (diffusers). Everything lands in $OUT; copy the JSON files to bench/results with a README row each.
source bench/gpu_setup.sh
{
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
echo "== GPU tests"
timeout 200 python3 -m pytest tests/gpu tests/unit/test_quant.py tests/unit/test_decoder.py -m gpu -q -p no:cacheprovider -rfE 2>&1 | tail -12
echo "== LTX-2 decode alone"
timeout 100 python3 -m bench.vae --json $OUT/vae_decode.json 2>&1 | tail -14
echo "== LTX-2 decode alone, experiment SANA_WM_DECODER_CHANNELS_LAST=1"
SANA_WM_DECODER_CHANNELS_LAST=1 timeout 100 python3 -m bench.vae --json $OUT/vae_decode_channels_last.json 2>&1 | tail -8
echo "== GDN kernels: defaults, then the phase-C bf16 experiment"
timeout 70 python3 -m bench.kernels --quick --only bidi_main16,layer_fcam16_graph --json $OUT/kernels.json 2>&1 | tail -6
SANA_WM_GDN_PHASE_C=bf16 timeout 70 python3 -m bench.kernels --quick --only bidi_main16,layer_fcam16_graph \
  --json $OUT/kernels_phase_c_bf16.json 2>&1 | tail -6
echo "== generator alone, bf16 + compile"
timeout 120 python3 -m runtime.cli bench --chunks 6 --warmup 3 --compile --no-decode \
  --json $OUT/bench_bf16_compile_generator.json 2>&1 | grep -v "Warn\|W12\|_warn" | tail -12
echo "== 60 s clip, bf16 + compile, overlapped decode"
timeout 170 python3 -m runtime.cli bench --chunks 40 --warmup 3 --compile \
  --json $OUT/bench_bf16_60s_clip.json 2>&1 | grep -v "Warn\|W12\|_warn" | tail -12
echo "== profile"
timeout 80 python3 -m runtime.cli bench --chunks 2 --warmup 2 --compile --profile $OUT/profile_bf16.txt \
  --json $OUT/bench_profile_run.json 2>&1 | tail -2
} 2>&1 | tee $OUT/log
