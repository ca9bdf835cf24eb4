#!/usr/bin/env bash
# Round 5 (one ~10-minute call, for the next session): what session 4 could not re-measure.
#   1. the quantized GEMMs after 08196e8 (direct kernel calls outside torch.compile; NVFP4_DEQUANT_MIN_M = 256)
#   2. the full model in FP8 with torch.compile (per-token activation quantization since d258a0b)
#   3. the 60 s clip in bf16 with the page-locked decoder copy (issue #10: under 12 s)
#   4. the GDN kernels with the launch-config sweep (issue #5), and the phase-A bf16 experiment (test + bench)
# Carry .whl (diffusers). Everything lands in $OUT; copy the JSON files to bench/results with a README row each.
set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
unset TRITON_INTERPRET
{
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
echo "== GPU tests (the NVFP4 kernels were restructured after the last GPU run)"
timeout 150 python3 -m pytest tests/gpu tests/unit/test_quant.py -m gpu -q -p no:cacheprovider -rfE 2>&1 | tail -6
echo "== quantized GEMMs"
timeout 150 python3 -m bench.quant --m 256,2640,10560 --json $OUT/quant_gemm.json | tail -40
echo "== full model fp8 + compile"
timeout 200 python3 -m runtime.cli bench --chunks 6 --warmup 3 --precision fp8 --compile \
  --json $OUT/bench_fp8_compile.json 2>&1 | grep -v "Warn\|W12\|_warn" | tail -12
echo "== 60 s clip, bf16 + compile"
timeout 200 python3 -m runtime.cli bench --chunks 40 --warmup 3 --compile \
  --json $OUT/bench_bf16_60s_clip.json 2>&1 | grep -v "Warn\|W12\|_warn" | tail -12
echo "== GDN kernels, tuned"
timeout 120 python3 -m bench.kernels --quick --tune --json $OUT/kernels_tuned.json 2>&1 | tail -30
echo "== experiment: phase A in bf16 (SANA_WM_GDN_PHASE_A=bf16): its GPU test, then the kernel bench"
timeout 90 python3 -m pytest tests/gpu/test_gdn_kernels_gpu.py -k phase_a_bf16 -q -p no:cacheprovider -s 2>&1 | tail -12
SANA_WM_GDN_PHASE_A=bf16 timeout 90 python3 -m bench.kernels --quick --json $OUT/kernels_phase_a_bf16.json 2>&1 | tail -30
} 2>&1 | tee $OUT/log
