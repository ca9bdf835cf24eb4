#!/usr/bin/env bash
# Round 29b (prepared in session 13; ~7 min, right after round 29 while the machine is warm). Set ATTN to round
# 29's fastest launch (printed as SANA_WM_ATTN_INT8_CONFIG) and KIND to the SANA_WM_ATTENTION printed beside it,
# e.g. ATTN=128,64,8,3,0,1 KIND=int8:
#   0. GPU test: the full config with the softmax blocks on the INT8 kernel, compiled and graphed, against eager
#   1. the FP8 static generator's profile with SANA_WM_ATTENTION=int8: the attention kernel's time in the model
#      and what the per-call quantization of q, k and v costs around it (the case for quantized K / V in the cache)
#   2. the bf16 generator with SANA_WM_ATTENTION=int8 (round 28 without: 169.2 ms/chunk)
source bench/gpu_setup.sh
export SANA_WM_ATTENTION=${KIND:-int8} SANA_WM_ATTN_INT8_CONFIG=${ATTN:-128,64,8,3,0,1}
{
echo "== GPU test: the full config with the softmax blocks on the INT8 kernel, compiled + CUDA graph, vs eager SDPA"
timeout 200 python3 -m pytest tests/gpu/test_attention_int8_gpu.py -q -p no:cacheprovider -rfE -k full_config 2>&1 \
  | grep -E "passed|failed|FAILED|Error|assert" | tail -8
echo "== fp8 static profile, int8 attention"
timeout 120 python3 -m runtime.cli bench --precision fp8 --act-scales static --chunks 2 --warmup 2 --compile \
  --no-decode --profile $OUT/profile_fp8_static_int8_attention.txt --json /tmp/p.json 2>&1 | tail -1
echo "== generator alone, bf16 + compile, int8 attention"
timeout 120 python3 -m runtime.cli bench --precision bf16 --chunks 8 --warmup 3 --compile --no-decode \
  --json $OUT/bench_bf16_int8_attention.json 2>&1 | grep -v "Warn\|W12\|_warn\|warnings.warn" | tail -6
} 2>&1 | tee $OUT/log
