#!/usr/bin/env bash
# Round 10 (one ~8-minute call): session 7's generator changes, and what session 6 could not measure.
#   generator: softmax K/V cache writes through a mutating custom op (inductor had rewritten the whole packed
#   buffer, twice per softmax block and pass); FFN 1x1 convs as GEMMs and the depthwise conv + GLU gate as one
#   Triton kernel (kernels/glu_conv.py) instead of cuDNN's NCHW depthwise conv + gating pass.
#   1. GPU tests: the new kernel at full shape, the compiled full config against eager, the FP8 act quantizers
#   2. kernel bench: depthwise_glu against the stock spelling + its launch-config sweep; the GDN layer (#5)
#   3. the generator alone, bf16 then FP8 (issue #10: 200 / 130 ms; round 9: 211.3 / 191.0 ms)
#   4. a kernel profile of the bf16 generator alone
# Carry .whl (diffusers). At most 8 files come back from $OUT.
source bench/gpu_setup.sh
{
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
echo "== GPU tests"
timeout 200 python3 -m pytest tests/gpu/test_glu_conv_gpu.py tests/gpu/test_streaming_gpu.py tests/unit/test_quant.py \
  -m gpu -q -p no:cacheprovider -rfE -k "glu or compiled or activation_quantizers or prefetched" 2>&1 | grep -v "Warn\|warn" | tail -8
echo "== kernels"
timeout 80 python3 -m bench.kernels --quick --only depthwise_glu,depthwise_glu_sweep,layer_fcam16_graph \
  --json $OUT/kernels.json 2>&1 | tail -12
echo "== generator alone, bf16 + compile"
timeout 110 python3 -m runtime.cli bench --chunks 6 --warmup 3 --compile --no-decode \
  --json $OUT/bench_bf16_compile_generator.json 2>&1 | grep -v "Warn\|W12\|_warn" | tail -8
echo "== generator alone, fp8 + compile"
timeout 120 python3 -m runtime.cli bench --precision fp8 --chunks 6 --warmup 3 --compile --no-decode \
  --json $OUT/bench_fp8_compile_generator.json 2>&1 | grep -v "Warn\|W12\|_warn" | tail -8
echo "== generator profile"
timeout 90 python3 -m runtime.cli bench --chunks 2 --warmup 2 --compile --no-decode --profile $OUT/profile_generator.txt \
  --json /tmp/profile_run.json 2>&1 | tail -2
} 2>&1 | tee $OUT/log
