#!/usr/bin/env bash
# Round 9 (one ~9-minute call): what session 6 changed after round 8.
#   generator: softmax blocks compiled (they had run eagerly past dynamo's recompile limit), packed softmax K/V
#   (no per-pass concatenation), one-GEMM FFN temporal mix, Plucker terms once per chunk, ray maps on the GPU,
#   GDN phase C bf16 by default; decoder: channels-last by default with the one-pass conv inputs.
#   1. GPU tests (full-size streaming against the reference path, kernels, decoder)
#   2. LTX-2 decode alone: defaults (channels-last + fused conv inputs), then SANA_WM_DECODER_FUSED_INPUT=0
#   3. the generator alone (issue #10: 200 ms bf16)
#   4. the 60 s clip end to end with the overlapped decode (issue #10: 5x, under 12 s)
#   5. a kernel profile of the generator alone
# Carry .whl (diffusers). At most 8 files come back from $OUT.
source bench/gpu_setup.sh
{
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
echo "== GPU tests"
timeout 280 python3 -m pytest tests/gpu tests/unit/test_decoder_prep.py tests/unit/test_decoder.py tests/unit/test_streaming.py \
  -m gpu -q -p no:cacheprovider -rfE --durations=5 2>&1 | tail -12
for variant in "cl_fused" "cl_unfused SANA_WM_DECODER_FUSED_INPUT=0"; do
  set -- $variant
  echo "== LTX-2 decode alone: $variant"
  env $2 timeout 70 python3 -m bench.vae --json $OUT/vae_decode_$1.json 2>&1 | grep -E "decoder_ms|decode_to_host|times_real|conv_tflop|fraction|peak|rel_err"
done
echo "== generator alone, bf16 + compile"
timeout 110 python3 -m runtime.cli bench --chunks 6 --warmup 3 --compile --no-decode \
  --json $OUT/bench_bf16_compile_generator.json 2>&1 | grep -v "Warn\|W12\|_warn" | tail -8
echo "== 60 s clip, bf16 + compile, overlapped decode"
timeout 170 python3 -m runtime.cli bench --chunks 40 --warmup 3 --compile \
  --json $OUT/bench_bf16_60s_clip.json 2>&1 | grep -v "Warn\|W12\|_warn" | tail -10
echo "== generator profile"
timeout 90 python3 -m runtime.cli bench --chunks 2 --warmup 2 --compile --no-decode --profile $OUT/profile_generator.txt \
  --json /tmp/profile_run.json 2>&1 | tail -2
} 2>&1 | tee $OUT/log
