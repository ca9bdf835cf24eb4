#!/usr/bin/env bash
# Round 11 (one ~9-minute call): the depthwise conv + GLU kernel's second launch shape ("rows": rolling row
# accumulators) and the input's SiLU inside it; FP8 activation quantization fused by inductor (now the default).
#   1. GPU tests: the kernel choices at full shape, the full-config fast paths against eager / reference
#   2. kernel sweep of every launch choice as the FFN calls it (SiLU included), and the SDPA backends at head
#      dim 112 and padded to 128 (spec section 3); the fastest depthwise launch goes to 3 and 4
#      through SANA_WM_GLU_CONFIG (then becomes kernels.glu_conv_triton.CONFIG)
#   3. the generator alone, bf16 then FP8 (issue #10; round 10: 195.6 / 181.5 ms, FP8 inductor quant 176.3 ms)
# Carry .whl (diffusers). At most 8 files come back from $OUT.
source bench/gpu_setup.sh
{
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
echo "== GPU tests"
timeout 230 python3 -m pytest tests/gpu/test_glu_conv_gpu.py tests/gpu/test_streaming_gpu.py tests/unit/test_quant.py \
  -m gpu -q -p no:cacheprovider -rfE --durations=3 -k "glu or streaming_gpu or activation_quantizers" 2>&1 \
  | grep -v "Warn\|warn" | tail -8
echo "== kernels"
timeout 110 python3 -m bench.kernels --quick --only depthwise_glu,depthwise_glu_sweep,sdpa --json $OUT/kernels.json 2>&1 | tail -25
export SANA_WM_GLU_CONFIG=$(python3 -c "
import json; rows = [r for r in json.load(open('$OUT/kernels.json'))['rows'] if r['op'] == 'depthwise_glu_sweep' and r['ok']]
best = min(rows, key=lambda r: r['ms'])['shape'].split('-')
print(','.join(best[:4] + ['1' if best[4] == 'True' else '0']))")
echo "== fastest depthwise_glu launch: SANA_WM_GLU_CONFIG=$SANA_WM_GLU_CONFIG"
echo "== generator alone, bf16 + compile"
timeout 110 python3 -m runtime.cli bench --chunks 6 --warmup 3 --compile --no-decode \
  --json $OUT/bench_bf16_compile_generator.json 2>&1 | grep -v "Warn\|W12\|_warn" | tail -8
echo "== generator alone, fp8 + compile"
timeout 120 python3 -m runtime.cli bench --precision fp8 --chunks 6 --warmup 3 --compile --no-decode \
  --json $OUT/bench_fp8_compile_generator.json 2>&1 | grep -v "Warn\|W12\|_warn" | tail -8
} 2>&1 | tee $OUT/log
