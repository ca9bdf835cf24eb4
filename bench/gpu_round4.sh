#!/usr/bin/env bash
# Round 4 (one ~10-minute call): the explorer headless on the GPU (key-to-photon latency), the GPU tests, the
# NVFP4 / FP8 GEMMs at four token counts, the full model in bf16 (compiled, with a kernel profile) and in FP8.
# Carry .whl (diffusers, pygame, moderngl, glcontext) and .gl (EGL loader debs, see the device README).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
unset TRITON_INTERPRET
for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig
export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
git log -1 --format=%h 2>/dev/null
echo "== explorer, headless, embedded model on cuda"
SDL_VIDEODRIVER=dummy timeout 120 python3 -m runtime.cli explore --headless --device cuda \
  --script "w-48,a-32,w-32,d-32,w-48,j-16,l-16,none-16" 2>&1 | grep -v Warning | tail -4
echo "== gpu tests"
timeout 170 python3 -m pytest tests/gpu tests/unit/test_quant.py -m gpu -q -p no:cacheprovider -rfE 2>&1 | tail -8
echo "== quantized GEMMs"
timeout 150 python3 -m bench.quant --m 256,1024,2640,10560 --json $OUT/quant_gemm.json 2>&1 | tail -75
echo "== full model bf16, triton + graphs + compile, profile"
timeout 230 python3 -m runtime.cli bench --model sana-wm-streaming --chunks 6 --warmup 3 --compile \
  --json $OUT/bench_bf16.json --profile $OUT/profile_bf16.txt 2>&1 | grep -v Warning | tail -14
head -45 $OUT/profile_bf16.txt
echo "== full model fp8 (per-token activation scales), triton + graphs"
timeout 110 python3 -m runtime.cli bench --model sana-wm-streaming --chunks 6 --warmup 3 --precision fp8 \
  --json $OUT/bench_fp8.json 2>&1 | grep -v Warning | tail -12
ls $OUT
