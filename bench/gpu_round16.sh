#!/usr/bin/env bash
# Round 16 (one ~6-minute call): GDN phase A with the next token block's tiles loaded before this block's dot
# (a_prefetch; the compiled sm_90 IR of the shipped kernel shows only beta's load pipelined, so every step
# waits for its operand tiles: 65 us per call at the streaming shape, ~10x its floor).
#   1. GPU tests: phase A with prefetch at the streaming shape (fp32 / bf16, main / camera), the UCPE prep
#      (head-major and token-major) at the model's shape, the camera-prep composition test fixed in session 8
#   2. the GDN layer and the bf16 bidirectional scan, shipped launch vs SANA_WM_GDN_LAUNCH='{"a_prefetch": 1}'
#   3. the generator alone in bf16 with the faster of the two, and FP8 (official scope) with it
# Carry .whl (diffusers). If prefetch wins: set "a_prefetch": 1 in kernels.gdn_triton.LAUNCH_CONFIGS.
source bench/gpu_setup.sh
{
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
echo "== GPU tests"
timeout 120 python3 -m pytest tests/gpu/test_gdn_kernels_gpu.py tests/unit/test_gdn_kernels.py -q -p no:cacheprovider \
  -rfE -k "prefetch or ucpe_prep_model_shape or ucpe_qkv_reference_equals" 2>&1 | grep -E "passed|failed|FAILED|Error" | tail -6
echo "== GDN kernels, shipped launch config"
timeout 60 python3 -m bench.kernels --quick --only bidi_main16,layer_fcam16_graph --json $OUT/kernels_shipped.json 2>&1 \
  | grep -E "^(bidi|layer)" | tail -4
echo "== GDN kernels, a_prefetch=1"
SANA_WM_GDN_LAUNCH='{"a_prefetch": 1}' timeout 60 python3 -m bench.kernels --quick --only bidi_main16,layer_fcam16_graph \
  --json $OUT/kernels_prefetch.json 2>&1 | grep -E "^(bidi|layer)" | tail -4
export SANA_WM_GDN_LAUNCH=$(python3 -c "
import json
ms = lambda f: min(r['ms'] for r in json.load(open(f))['rows'] if r['op'] == 'layer_fcam16_graph' and r['shape'].startswith('T=3'))
print('{\"a_prefetch\": 1}' if ms('$OUT/kernels_prefetch.json') < ms('$OUT/kernels_shipped.json') else '{}')")
echo "== generator alone, bf16 + compile, SANA_WM_GDN_LAUNCH=$SANA_WM_GDN_LAUNCH"
timeout 100 python3 -m runtime.cli bench --chunks 6 --warmup 3 --compile --no-decode \
  --json $OUT/bench_bf16_compile_generator.json 2>&1 | grep -v "Warn\|W12\|_warn" | tail -8
echo "== generator alone, fp8 (official scope) + compile"
timeout 100 python3 -m runtime.cli bench --precision fp8 --chunks 6 --warmup 3 --compile --no-decode \
  --json $OUT/bench_fp8_compile_generator.json 2>&1 | grep -v "Warn\|W12\|_warn" | tail -8
} 2>&1 | tee $OUT/log
