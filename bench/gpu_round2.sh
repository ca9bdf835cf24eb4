#!/usr/bin/env bash
# Kernel GPU tests + kernel bench + the full-model streaming bench with the Triton kernels.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
unset TRITON_INTERPRET
echo "== gpu tests"; timeout 150 python3 -m pytest tests/gpu -q -p no:cacheprovider -rfE --maxfail=10 2>&1 | tail -12
echo "== kernels"; timeout 150 python3 -m bench.kernels --quick --json $OUT/kernels.json 2>&1 | tail -30
echo "== full model, triton + graphs + compile"; timeout 220 python3 -m runtime.cli bench --model sana-wm-streaming --chunks 8 --warmup 3 --compile --json $OUT/bench_bf16_triton.json 2>&1 | tail -12
