#!/usr/bin/env bash
# Round 20 (one ~7-minute call), prepared in session 9 when its device time ran out:
#   1. the generator alone, FP8 official scope, with the token-major scan outputs (c67fcea; round 19's FP8 run hit
#      its 100 s limit while compiling; round 18: 167.2 ms/chunk)
#   2. bench.kernels: the GDN layer and the bidirectional scans with the token-major bf16 outputs (round 18b:
#      layer_2s16_graph 0.2464-0.2482 ms)
#   3. the FP8 profile after round 19 (where the ~167 ms go now)
# Carry .whl (diffusers).
source bench/gpu_setup.sh
{
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
echo "== generator alone, fp8 (official scope) + compile"
timeout 150 python3 -m runtime.cli bench --precision fp8 --chunks 6 --warmup 3 --compile --no-decode \
  --json $OUT/bench_fp8_generator.json 2>&1 | grep -v "Warn\|W12\|_warn\|warnings.warn" | tail -7
echo "== GDN layer"
timeout 80 python3 -m bench.kernels --quick --only layer_fcam16_graph,layer_2s16_graph,bidi_main16 \
  --json $OUT/kernels_layer.json 2>&1 | grep -E "^(layer|bidi)|GDN layer" | tail -8
echo "== fp8 profile"
timeout 150 python3 -m runtime.cli bench --precision fp8 --chunks 2 --warmup 2 --compile --no-decode \
  --profile $OUT/profile_fp8_generator.txt --json /tmp/p.json 2>&1 | tail -1
} 2>&1 | tee $OUT/log
