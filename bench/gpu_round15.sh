#!/usr/bin/env bash
# Round 15 (one ~5-minute call): the UCPE prep kernel rewritten as one program per token ([H, D] tile, as the
# fused camera prep) that can write the token-major layout: the softmax camera branch's inverse UCPE then feeds
# out_proj_cam without a transposing copy (round 13 profile: the old kernel 103 us x 25 calls per chunk).
#   1. GPU tests: the UCPE kernels against the references; the compiled full-config chunk step against eager
#   2. kernels: the inverse UCPE as the model calls it, token-major vs head-major + copy; the kv-mode op
#   3. the generator alone, FP8 compact scope then bf16 (round 14: 170.4 ms; round 11 bf16: 195.9 ms)
# Carry .whl (diffusers).
source bench/gpu_setup.sh
{
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
echo "== GPU tests"
timeout 100 python3 -m pytest tests/unit/test_gdn_kernels.py tests/gpu/test_streaming_gpu.py -q -p no:cacheprovider -rfE \
  -k "ucpe or custom_ops or compiled_graph_step_equals_eager_full_config" 2>&1 | grep -v "Warn\|warn" | tail -4
echo "== kernels"
timeout 50 python3 -m bench.kernels --quick --only ucpe_out16,ucpe_prep,ucpe_qkv --json $OUT/kernels.json 2>&1 | tail -8
echo "== generator alone, fp8 compact scope + compile"
timeout 100 python3 -m runtime.cli bench --precision fp8 --scope compact --chunks 6 --warmup 3 --compile --no-decode \
  --json $OUT/bench_fp8_compact_compile_generator.json 2>&1 | grep -v "Warn\|W12\|_warn" | tail -8
echo "== generator alone, bf16 + compile"
timeout 100 python3 -m runtime.cli bench --chunks 6 --warmup 3 --compile --no-decode \
  --json $OUT/bench_bf16_compile_generator.json 2>&1 | grep -v "Warn\|W12\|_warn" | tail -8
} 2>&1 | tee $OUT/log
