#!/usr/bin/env bash
# Round 3 (one ~10-minute call): full model bf16 with the fused camera path, the stage-2 refiner (bf16 + FP8,
# three-stream overlap), the full model with FP8 linears, then the GPU tests.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
unset TRITON_INTERPRET
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
echo "== full model bf16, triton + graphs + compile"
timeout 200 python3 -m runtime.cli bench --model sana-wm-streaming --chunks 6 --warmup 3 --compile \
  --json $OUT/bench_bf16.json 2>&1 | grep -v Warning | tail -14
echo "== refiner"; timeout 150 python3 -m bench.refiner --json $OUT/refiner.json 2>&1 | tail -20
echo "== full model fp8, triton + graphs"
timeout 110 python3 -m runtime.cli bench --model sana-wm-streaming --chunks 6 --warmup 3 --precision fp8 \
  --json $OUT/bench_fp8.json 2>&1 | grep -v Warning | tail -12
echo "== gpu tests"; timeout 100 python3 -m pytest tests/gpu -q -p no:cacheprovider -rfE -x 2>&1 | tail -8
ls $OUT
