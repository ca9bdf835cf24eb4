#!/usr/bin/env bash
# Round 14 (one ~3-minute call): the compact scope's FFN temporal conv as an FP8 x FP8 GEMM over its token-major
# taps (round 13 still dequantized it to a bf16 kernel per call: 107 us per call, 100 calls per chunk).
#   1. the quantized taps GEMM on the GPU against the bf16 conv with the decoded kernel
#   2. the generator alone, FP8 compact scope (round 13: 171.3 ms/chunk)
# Carry .whl (diffusers).
source bench/gpu_setup.sh
{
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
echo "== FP8 temporal conv taps GEMM vs its decoded conv (full-size shape)"
python3 - <<'PY'
import torch, torch.nn as nn, torch.nn.functional as F
from quant import default_policy, quantize
torch.manual_seed(0)
C, T, P = 2240, 3, 880
m = nn.Module(); m.t_conv = nn.Conv2d(C, C, (3, 1), padding=(1, 0), bias=False)
nn.init.normal_(m.t_conv.weight, std=C ** -0.5)
m = m.cuda().bfloat16()
q = quantize(m, {"format": "fp8", "include": ["t_conv"], "exclude": []}).t_conv
x = torch.randn(1, C, T, P, device="cuda", dtype=torch.bfloat16)
frames = F.pad(x, (0, 0, 1, 1))
taps = torch.stack([frames[:, :, k:k + T] for k in range(3)], -1).permute(0, 2, 3, 1, 4).reshape(-1, 3 * C)
got = q(taps).float()
want = F.conv2d(x.float(), q.conv_weight(torch.float32), padding=(1, 0)).permute(0, 2, 3, 1).reshape(-1, C)
err = ((got - want).norm() / want.norm()).item()
print(f"rel rms {err:.2e} ({type(q).__name__})"); assert err < 0.05, err
PY
echo "== generator alone, fp8 compact scope + compile"
timeout 150 python3 -m runtime.cli bench --precision fp8 --scope compact --chunks 6 --warmup 3 --compile --no-decode \
  --json $OUT/bench_fp8_compact_compile_generator.json 2>&1 | grep -v "Warn\|W12\|_warn" | tail -8
} 2>&1 | tee $OUT/log
