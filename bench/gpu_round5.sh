#!/usr/bin/env bash
# Round 5 (one ~10-minute call): the GPU tests after the NVFP4 kernel refactor, the quantized GEMMs with the FP8
# fast-accumulation / per-tensor variants (issue #11), the GDN kernels with and without the phase-A bf16
# experiment (issue #5, launch configs swept on bf16 inputs), and the full model with phase A in bf16 (issue #10).
# Carry .whl (diffusers). Everything lands in $OUT; copy the JSON files to bench/results with a README row each.
source bench/gpu_setup.sh
{
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
echo "== GPU tests (includes the phase-A bf16 error-budget test)"
timeout 170 python3 -m pytest tests/gpu tests/unit/test_quant.py -m gpu -q -p no:cacheprovider -rfE 2>&1 | tail -8
echo "== quantized GEMMs"
timeout 100 python3 -m bench.quant --m 2640,10560 --json $OUT/quant_gemm.json | tail -75
echo "== GDN kernels (default: phase A in TF32)"
timeout 80 python3 -m bench.kernels --quick --json $OUT/kernels_default.json 2>&1 | tail -22
echo "== GDN kernels, SANA_WM_GDN_PHASE_A=bf16, launch configs swept on bf16 inputs"
SANA_WM_GDN_PHASE_A=bf16 timeout 110 python3 -m bench.kernels --quick --tune --json $OUT/kernels_phase_a_bf16.json 2>&1 | tail -40
echo "== full model bf16 + compile, phase A bf16"
SANA_WM_GDN_PHASE_A=bf16 timeout 140 python3 -m runtime.cli bench --chunks 6 --warmup 3 --compile \
  --json $OUT/bench_bf16_compile_phase_a_bf16.json 2>&1 | grep -v "Warn\|W12\|_warn" | tail -14
} 2>&1 | tee $OUT/log
