#!/usr/bin/env bash
# Round 18 (one ~8-minute call), session 9:
#   1. GPU tests: the per-token prep kernels at the model's shape (now walking the heads PREP_HEADS at a time),
#      the fused GDN layer op, the streaming step (softmax blocks now attend both branches in one batched call)
#   2. bench.kernels: gdn_prep, ucpe_qkv and the GDN layer (two streams) with PREP_HEADS = 4 (default), 2, 8 and
#      32 (= all heads at once, the kernels as before; round 17: layer 0.2743 ms)
#   3. the generator alone, bf16 and FP8 official scope (round 17: 189.3 / 172.4 ms/chunk)
# Carry .whl (diffusers).
source bench/gpu_setup.sh
{
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
echo "== GPU tests"
timeout 200 python3 -m pytest tests/gpu/test_gdn_kernels_gpu.py tests/unit/test_gdn_layer.py tests/gpu/test_streaming_gpu.py \
  -q -p no:cacheprovider -k "prep or layer or graph_step or fast_path" -rfE 2>&1 | grep -E "passed|failed|FAILED|Error" | tail -8
for heads in 4 2 8 32; do
  echo "== prep kernels and GDN layer, SANA_WM_PREP_HEADS=$heads"
  SANA_WM_PREP_HEADS=$heads timeout 60 python3 -m bench.kernels --quick --only gdn_prep,ucpe_qkv,layer_2s16_graph \
    --json $OUT/kernels_prep_heads$heads.json 2>&1 | grep -E "^(gdn|ucpe|layer)" | grep "T=3"
done
echo "== generator alone, bf16 + compile"
timeout 100 python3 -m runtime.cli bench --chunks 6 --warmup 3 --compile --no-decode \
  --json $OUT/bench_bf16_generator.json 2>&1 | grep -v "Warn\|W12\|_warn" | tail -7
echo "== generator alone, fp8 (official scope) + compile"
timeout 110 python3 -m runtime.cli bench --precision fp8 --chunks 6 --warmup 3 --compile --no-decode \
  --json $OUT/bench_fp8_generator.json 2>&1 | grep -v "Warn\|W12\|_warn" | tail -7
} 2>&1 | tee $OUT/log
