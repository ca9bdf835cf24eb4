#!/usr/bin/env bash
# Round 13 (one ~4-minute call): FP8 over the compact scope. The round-12 FP8 profile showed ~30 ms per chunk of
# bf16 GEMMs left in the official scope (camera / Plucker projections, FFN temporal conv); the compact scope puts
# those in FP8 too (tiny-world quality: 38.2 dB vs 40.4 dB frame PSNR against bf16, docs/quantization.md).
#   1. the generator alone, FP8 compact scope (issue #10; official scope round 11: 178.2 ms)
#   2. its kernel profile
# Carry .whl (diffusers).
source bench/gpu_setup.sh
{
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
echo "== generator alone, fp8 compact scope + compile"
timeout 150 python3 -m runtime.cli bench --precision fp8 --scope compact --chunks 6 --warmup 3 --compile --no-decode \
  --json $OUT/bench_fp8_compact_compile_generator.json 2>&1 | grep -v "Warn\|W12\|_warn" | tail -8
echo "== profile"
timeout 150 python3 -m runtime.cli bench --precision fp8 --scope compact --chunks 2 --warmup 2 --compile --no-decode \
  --profile $OUT/profile_fp8_compact_generator.txt --json /tmp/p.json 2>&1 | tail -1
grep -E "_scaled_mm|aten::mm|aten::addmm" $OUT/profile_fp8_compact_generator.txt | head -6
} 2>&1 | tee $OUT/log
