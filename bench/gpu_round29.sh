#!/usr/bin/env bash
# Round 29 (prepared in session 13; ~7-8 min, carry .whl with diffusers): the INT8-score / E4M3-value attention
#   1. GPU test: the kernel at the streaming shape, every launch choice, against its tiled arithmetic and exact
#      attention (the full config compiled with it is in round 29b)
#   2. the kernel beside cuDNN's bf16 call at the same shape (sdpa_pair: 0.909 ms in round 17), from quantized
#      operands and with the per-call quantization, and the launch sweep; prints the fastest launch
#   3. the FP8 static generator with the fastest launch: SANA_WM_ATTENTION=int8 (E4M3 values: q, k, v quantized on
#      every call) or int8_bf16v (values as cached, only q and k quantized) as that launch takes them (round 28
#      without: 139.5 ms/chunk)
source bench/gpu_setup.sh
{
echo "== GPU tests: INT8 attention"
timeout 120 python3 -m pytest tests/gpu/test_attention_int8_gpu.py -q -p no:cacheprovider -rfE -k streaming_shape 2>&1 \
  | grep -E "passed|failed|FAILED|Error|assert" | tail -12
echo "== attention kernels"
timeout 200 python3 -m bench.kernels --quick --only attention_int8,attention_int8_sweep,sdpa_pair \
  --json $OUT/kernels_attention.json 2>&1 | grep -E "^(attention|sdpa)" | tail -30
BEST=$(python3 -m bench.fastest_launch $OUT/kernels_attention.json attention_int8_sweep)
KIND=$([ "${BEST##*,}" = 1 ] && echo int8 || echo int8_bf16v)    # the launch's last field: E4M3 values
echo "fastest launch (SANA_WM_ATTN_INT8_CONFIG): $BEST, SANA_WM_ATTENTION=$KIND"
echo "== generator alone, fp8 static + compile, SANA_WM_ATTENTION=$KIND"
SANA_WM_ATTENTION=$KIND SANA_WM_ATTN_INT8_CONFIG=$BEST timeout 150 python3 -m runtime.cli bench --precision fp8 \
  --act-scales static --chunks 8 --warmup 3 --compile --no-decode --json $OUT/bench_fp8_static_int8_attention.json \
  2>&1 | grep -v "Warn\|W12\|_warn\|warnings.warn" | tail -7
} 2>&1 | tee $OUT/log
