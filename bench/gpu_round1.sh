#!/usr/bin/env bash
# One device call: full-model streaming bench, VAE decode bench, quant GEMMs, GDN kernel tests + bench.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
git rev-parse --short HEAD 2>/dev/null
echo "== bench full model bf16 (no decode)"; timeout 170 python3 -m runtime.cli bench --model sana-wm-streaming --chunks 6 --warmup 2 --no-decode --json $OUT/bench_bf16.json 2>&1 | tail -14
echo "== vae"; timeout 120 python3 -m bench.vae --json $OUT/vae.json 2>&1 | tail -14
echo "== quant"; timeout 100 python3 -m bench.quant --json $OUT/quant.json 2>&1 | tail -16
echo "== gdn gpu tests"; timeout 90 python3 -m pytest -q -x tests/gpu 2>&1 | tail -4
echo "== kernels"; timeout 100 python3 -m bench.kernels --json $OUT/kernels.json 2>&1 | tail -22
