#!/usr/bin/env bash
# Round 16 (one ~8-minute call), prepared in session 8 after the device time ran out:
#   1. GPU tests not yet run on a GPU: phase A with beta folded, the shipped scans at the streaming shape, the
#      camera-prep composition test (its RoPE tables were built on the CPU,
#      fixed in session 8), the UCPE prep at the model's shape head-major and token-major
#   2. FP8 (official scope) generator alone with the round-15 code (round 11: 178.2 ms/chunk)
#   3. kernel profile of the bf16 generator after round 15 (where the 190.3 ms go now)
#   4. the prep kernels replayed from CUDA graphs (bench.kernels timed them eagerly before: host time)
#   5. bench/phase_a_floor.py: phase A as shipped vs the same kernel with beta folded into its operands
#      (FOLDED: both tiles straight from memory) + the folding pass (#5)
#   6. the bf16 generator alone with SANA_WM_GDN_FOLD_BETA=1 (the scan launcher folds beta itself; round 15:
#      190.3 ms/chunk). If faster: make FOLD_BETA the default in kernels/gdn_triton.py
# Carry .whl (diffusers).
source bench/gpu_setup.sh
{
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
echo "== GPU tests"
timeout 120 python3 -m pytest tests/gpu/test_gdn_kernels_gpu.py tests/unit/test_gdn_kernels.py -q -p no:cacheprovider \
  -rfE -k "ucpe or launch_override or folded or bidirectional_streaming_shape" 2>&1 | grep -E "passed|failed|FAILED|Error" | tail -6
echo "== generator alone, fp8 (official scope) + compile"
timeout 110 python3 -m runtime.cli bench --precision fp8 --chunks 6 --warmup 3 --compile --no-decode \
  --json $OUT/bench_fp8_compile_generator.json 2>&1 | grep -v "Warn\|W12\|_warn" | tail -8
echo "== prep kernels, graph-replayed"
timeout 60 python3 -m bench.kernels --quick --only gdn_prep,ucpe_prep,ucpe_qkv,ucpe_out16 --json $OUT/kernels_prep.json 2>&1 \
  | grep -E "^(gdn|ucpe)" | tail -8
echo "== phase A floor experiment"
timeout 60 python3 -m bench.phase_a_floor --json $OUT/phase_a_floor.json 2>&1 | tail -2
echo "== generator alone, bf16 + compile, SANA_WM_GDN_FOLD_BETA=1"
SANA_WM_GDN_FOLD_BETA=1 timeout 100 python3 -m runtime.cli bench --chunks 6 --warmup 3 --compile --no-decode \
  --json $OUT/bench_bf16_fold_beta_generator.json 2>&1 | grep -v "Warn\|W12\|_warn" | tail -8
echo "== bf16 generator profile"
timeout 110 python3 -m runtime.cli bench --chunks 2 --warmup 2 --compile --no-decode \
  --profile $OUT/profile_bf16_generator.txt --json /tmp/p.json 2>&1 | tail -1
} 2>&1 | tee $OUT/log
