#!/usr/bin/env bash
# Round 8 (one ~7-minute call): the one-pass decoder conv inputs (kernels.decoder_prep: RMS norm + SiLU + causal
# context + reflection padding in one kernel) and the generator's profile.
#   1. GPU tests of the new kernel and of the streaming decoder
#   2. LTX-2 decode alone: fused conv inputs (default), SANA_WM_DECODER_FUSED_INPUT=0, + channels-last
#   3. the 60 s clip end to end with the overlapped decode (issue #10: 5x, under 12 s)
#   4. the generator alone with SANA_WM_GDN_PHASE_C=bf16 (round 7 default: 236.5 ms)
#   5. a kernel profile of the generator alone, with input shapes
# Carry .whl (diffusers). At most 8 files come back from $OUT.
source bench/gpu_setup.sh
{
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
echo "== GPU tests"
timeout 150 python3 -m pytest tests/gpu/test_decoder_prep_gpu.py tests/unit/test_decoder_prep.py tests/unit/test_decoder.py \
  -q -p no:cacheprovider -rfE 2>&1 | tail -6
for variant in "fused" "unfused SANA_WM_DECODER_FUSED_INPUT=0" "fused_channels_last SANA_WM_DECODER_CHANNELS_LAST=1"; do
  set -- $variant
  echo "== LTX-2 decode alone: $variant"
  env $2 timeout 100 python3 -m bench.vae --json $OUT/vae_decode_$1.json 2>&1 | grep -E "decoder_ms|decode_to_host|times_real|conv_tflop|fraction|peak|rel_err"
done
echo "== 60 s clip, bf16 + compile, overlapped decode"
timeout 170 python3 -m runtime.cli bench --chunks 40 --warmup 3 --compile \
  --json $OUT/bench_bf16_60s_clip.json 2>&1 | grep -v "Warn\|W12\|_warn" | tail -10
echo "== generator alone, bf16 + compile, SANA_WM_GDN_PHASE_C=bf16"
SANA_WM_GDN_PHASE_C=bf16 timeout 120 python3 -m runtime.cli bench --chunks 6 --warmup 3 --compile --no-decode \
  --json $OUT/bench_generator_phase_c_bf16.json 2>&1 | grep -v "Warn\|W12\|_warn" | tail -8
echo "== generator profile"
timeout 100 python3 -m runtime.cli bench --chunks 2 --warmup 2 --compile --no-decode --profile $OUT/profile_generator.txt \
  --json /tmp/profile_run.json 2>&1 | tail -2
} 2>&1 | tee $OUT/log
