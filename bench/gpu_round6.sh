#!/usr/bin/env bash
# Round 6 (one ~9-minute call): after the GDN prep writes bf16 (the scans' bf16 path, phase A in bf16 by default),
# FP8 with fast accumulation and the decode overlapped with the next chunk's generation on a side stream:
#   1. GPU tests (overlap decode, the full config's fast path against the reference kernels, phase-A precisions,
#      FP8 fast accumulation)
#   2. the 60 s clip (40 timed chunks) in bf16 + compile, with the overlapped decode (issue #10)
#   3. FP8 + compile (issue #10's 130 ms target)
#   4. the GDN kernels with the new defaults (issue #5)
#   5. a kernel profile of the bf16 chunk (what is left)
# Carry .whl (diffusers). Everything lands in $OUT.
source bench/gpu_setup.sh
{
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
echo "== GPU tests"
timeout 200 python3 -m pytest tests/gpu tests/unit/test_quant.py -m gpu -q -p no:cacheprovider -rfE 2>&1 | tail -25
echo "== 60 s clip, bf16 + compile, overlapped decode"
timeout 170 python3 -m runtime.cli bench --chunks 40 --warmup 3 --compile \
  --json $OUT/bench_bf16_60s_clip.json 2>&1 | grep -v "Warn\|W12\|_warn" | tail -14
echo "== fp8 + compile"
timeout 150 python3 -m runtime.cli bench --chunks 6 --warmup 3 --precision fp8 --compile \
  --json $OUT/bench_fp8_compile.json 2>&1 | grep -v "Warn\|W12\|_warn" | tail -14
echo "== GDN kernels (defaults)"
timeout 75 python3 -m bench.kernels --quick --json $OUT/kernels.json 2>&1 | tail -24
echo "== profile (bf16, compiled, no graphs)"
timeout 80 python3 -m runtime.cli bench --chunks 2 --warmup 2 --compile --profile $OUT/profile_bf16.txt \
  --json $OUT/bench_profile_run.json 2>&1 | tail -3
} 2>&1 | tee $OUT/log
