"""Benchmark: quantized-weight GEMMs at SANA-WM's linear shapes against bf16 cuBLAS, plus the model's weight bytes.

    python -m bench.quant --json out.json     # CUDA: time every GEMM, print one table, write JSON
    python -m bench.quant --sweep             # also try the NVFP4 Triton launch configs (for NVFP4_SM90_CONFIGS)
    python -m bench.quant --bytes-only        # weight bytes of the 2.6B model per format (no GPU needed)

Shapes: M = 2640 tokens (one 3-frame chunk, 3 x 880) and 10560 (12 frames); (K, N) = (2240, 6720) qkv,
(2240, 2240) proj, (2240, 13440) FFN in, (6720, 2240) FFN out. Rows:

    bf16              torch.matmul(x, W^T), bf16 cuBLAS: the baseline
    nvfp4_triton      quant.gemm.nvfp4_linear_triton (W4A16, weights dequantized in registers)
    nvfp4_dequant     one Triton pass dequantizes W to a bf16 scratch tensor every call, then cuBLAS
    nvfp4_auto        quant.gemm.nvfp4_linear's choice (fused below NVFP4_DEQUANT_MIN_M rows, else dequant)
    nvfp4_dequant_pass  the dequantization pass alone
    fp8_gemm          row-wise torch._scaled_mm on pre-quantized activations (the FP8 GEMM alone)
    fp8_gemm_fast     the same with use_fast_accum=True (Hopper: no periodic promotion of the FP8 accumulator)
    fp8_gemm_tensor   per-tensor scales (scalar activation and weight scales), fast accumulation
    fp8_linear        quant.gemm.fp8_linear_scaled_mm: per-token activation quantization (Triton) + _scaled_mm

Timings are triton.testing.do_bench medians (L2 flushed between runs) on random normal inputs (no zeros). Each row
also gives TFLOP/s, speed relative to bf16, the fraction of the bf16 matmul peak measured here on an 8192^3
matmul, the floor max(FLOPs / peak, bytes / copy bandwidth) as a fraction of the measured time, and the relative
RMS error against an fp32 matmul with the same quantized weights (so it measures the kernel, not the format).
"""
from __future__ import annotations

import argparse
import datetime
import functools
import json
import math
import sys
from pathlib import Path

import torch

from quant.fp8 import fp8_nbytes, quantize_fp8, quantize_fp8_per_row
from quant.nvfp4 import nvfp4_nbytes
from quant.policy import QuantPolicy, default_policy

TOKEN_COUNTS = (2640, 10560)
"""M: tokens of one 3-latent-frame chunk (3 x 880) and of 12 latent frames."""
LINEAR_SHAPES = (("qkv", 2240, 6720), ("proj", 2240, 2240), ("ffn_in", 2240, 13440), ("ffn_out", 6720, 2240))
"""(label, K, N) of the model's quantized GEMMs."""
SWEEP_CONFIGS = [
    {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8, "num_warps": w, "num_stages": s}
    for bm, bn, bk, w, s in [(128, 128, 64, 8, 4), (128, 128, 128, 8, 3), (128, 256, 64, 8, 3),
                             (256, 128, 64, 8, 3), (128, 128, 64, 4, 4), (64, 128, 128, 4, 4),
                             (128, 64, 128, 4, 4), (128, 256, 128, 8, 2)]
]


def _commit() -> str:
    from runtime.bench import git_commit

    return git_commit()


# ---------------------------------------------------------------------------------------------------------------
# Weight bytes of the full model (spec section 7.3 key layout, computed from the config)
# ---------------------------------------------------------------------------------------------------------------
def stage1_param_shapes(cfg) -> dict[str, tuple[int, ...]]:
    """Every parameter of the Stage-1 DiT with its shape, named like the official checkpoint (buffers such as
    y_embedding / pos_embed excluded)."""
    c, heads, mh, ks = cfg.hidden_size, cfg.num_heads, cfg.mlp_hidden, cfg.conv_kernel_size
    s: dict[str, tuple[int, ...]] = {}

    def linear(name, n, k, bias=True):
        s[f"{name}.weight"] = (n, k)
        if bias:
            s[f"{name}.bias"] = (n,)

    s["x_embedder.proj.weight"], s["x_embedder.proj.bias"] = (c, cfg.in_channels, 1, 1, 1), (c,)
    linear("t_embedder.mlp.0", c, 256)
    linear("t_embedder.mlp.2", c, c)
    linear("t_block.1", 6 * c, c)
    linear("y_embedder.y_proj.fc1", c, cfg.caption_channels)
    linear("y_embedder.y_proj.fc2", c, c)
    s["attention_y_norm.weight"] = (c,)
    s["raymap_embedder.proj.weight"], s["raymap_embedder.proj.bias"] = (c, 3, 1, 1, 1), (c,)
    s["plucker_embedder.proj.weight"] = (c, cfg.plucker_channels, 1, 1, 1)
    s["plucker_embedder.proj.bias"] = (c,)
    linear("final_layer.linear", cfg.in_channels, c)
    s["final_layer.scale_shift_table"] = (2, c)
    for i in range(cfg.depth):
        b = f"blocks.{i}."
        gdn = i in cfg.gdn_blocks
        s[b + "scale_shift_table"] = (6, c)
        linear(b + "plucker_proj", c, c)
        linear(b + "attn.qkv", 3 * c, c, bias=False)
        linear(b + "attn.proj", c, c)
        s[b + "attn.q_norm.weight"] = s[b + "attn.k_norm.weight"] = (c,)
        linear(b + "attn.beta_proj", heads, c)
        linear(b + "attn.gate_proj", heads, c)
        s[b + "attn.A_log"] = s[b + "attn.dt_bias"] = (heads,)
        linear(b + "attn.output_gate", c, c)
        for cam in ("q", "k", "v", "out"):
            linear(b + f"attn.{cam}_proj_cam", c, c)
        s[b + "attn.q_norm_cam.weight"] = s[b + "attn.k_norm_cam.weight"] = (c,)
        if gdn:
            s[b + "attn.conv_k.weight"] = s[b + "attn.conv_k_cam.weight"] = (c, 1, ks)
        linear(b + "cross_attn.q_linear", c, c)
        linear(b + "cross_attn.kv_linear", 2 * c, c)
        linear(b + "cross_attn.proj", c, c)
        s[b + "cross_attn.q_norm.weight"] = s[b + "cross_attn.k_norm.weight"] = (c,)
        s[b + "mlp.inverted_conv.conv.weight"], s[b + "mlp.inverted_conv.conv.bias"] = (2 * mh, c, 1, 1), (2 * mh,)
        s[b + "mlp.depth_conv.conv.weight"], s[b + "mlp.depth_conv.conv.bias"] = (2 * mh, 1, 3, 3), (2 * mh,)
        s[b + "mlp.point_conv.conv.weight"] = (c, mh, 1, 1)
        s[b + "mlp.t_conv.weight"] = (c, c, cfg.t_kernel_size, 1)
    return s


def model_weight_bytes(cfg, policy: QuantPolicy) -> dict:
    """Bytes of the model's parameters with the policy's layers in its format and everything else in bf16."""
    shapes = stage1_param_shapes(cfg)
    q_params = q_bytes = rest_params = 0
    layers = 0
    for key, shape in shapes.items():
        name = key.rpartition(".")[0]
        linear_like = len(shape) == 2 or (len(shape) == 4 and shape[3] == 1)   # linear, 1x1 or (k, 1) conv
        if key.endswith(".weight") and linear_like and policy.selects(name):
            n, k = shape[0], math.prod(shape[1:])
            layers += 1
            q_params += n * k
            if policy.format == "nvfp4":
                q_bytes += nvfp4_nbytes(n, k)
            else:
                q_bytes += fp8_nbytes(n, k, policy.block_size if policy.format == "fp8_block" else None)
        else:
            rest_params += math.prod(shape)
    total_params = q_params + rest_params
    total = q_bytes + 2 * rest_params
    return {"format": policy.format, "quantized_layers": layers, "quantized_params": q_params,
            "quantized_bytes": q_bytes, "bf16_params": rest_params, "bf16_bytes": 2 * rest_params,
            "total_params": total_params, "total_bytes": total, "all_bf16_bytes": 2 * total_params,
            "ratio_vs_bf16": total / (2 * total_params)}


def print_bytes_table(rows: list[dict]) -> None:
    print(f"\nSANA-WM Stage-1 DiT weights ({rows[0]['total_params'] / 1e9:.4f} B parameters; "
          f"all-bf16 {rows[0]['all_bf16_bytes'] / 1e9:.3f} GB)")
    print(f"{'scope':<9} {'format':<10} {'layers':>6} {'quant params':>13} {'quant GB':>9} {'bf16 rest GB':>13} "
          f"{'total GB':>9} {'vs bf16':>8}")
    for r in rows:
        print(f"{r.get('scope', 'official'):<9} {r['format']:<10} {r['quantized_layers']:>6} "
              f"{r['quantized_params'] / 1e9:>12.4f}B "
              f"{r['quantized_bytes'] / 1e9:>9.3f} {r['bf16_bytes'] / 1e9:>13.3f} {r['total_bytes'] / 1e9:>9.3f} "
              f"{r['ratio_vs_bf16']:>8.3f}")


# ---------------------------------------------------------------------------------------------------------------
# GEMM timings
# ---------------------------------------------------------------------------------------------------------------
def _rel_rms(test: torch.Tensor, ref: torch.Tensor) -> float:
    return ((test.float() - ref).norm() / ref.norm()).item()


def measure_peaks(do_bench) -> tuple[float, float]:
    """(bf16 matmul TFLOP/s on 8192^3, device copy GB/s counting read + write)."""
    ab = torch.randn(2, 8192, 8192, device="cuda", dtype=torch.bfloat16)
    ms = do_bench(lambda: torch.matmul(ab[0], ab[1]), warmup=50, rep=300, return_mode="median")
    tflops = 2 * 8192 ** 3 / ms / 1e9
    ab = None  # free 256 MiB before the copy test
    src = torch.randn(256 * 2 ** 20, device="cuda")  # 1 GiB
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), warmup=20, rep=100, return_mode="median")
    gbps = 2 * src.numel() * src.element_size() / ms / 1e6
    return tflops, gbps


def bench_shape(do_bench, m: int, k: int, n: int, label: str, sweep: bool) -> list[dict]:
    from quant.gemm import nvfp4_dequant_triton, nvfp4_linear, nvfp4_linear_dequant, nvfp4_linear_triton
    from quant.nvfp4 import dequantize_nvfp4, quantize_nvfp4

    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(m, k, device="cuda", generator=g).bfloat16()
    w = (0.02 * torch.randn(n, k, device="cuda", generator=g)).bfloat16()
    q4 = quantize_nvfp4(w)
    q8 = quantize_fp8(w)
    xq, sx = quantize_fp8_per_row(x)                      # per-token activation scales, as fp8_linear does
    x8 = quantize_fp8(x, name="activation")               # one activation scale (static / per-tensor recipe)
    xq_t, sx_t = x8.weight, x8.weight_scale.float().reshape(())
    sw_t = q8.weight_scale.float().reshape(())
    wt = q8.weight.t()
    sw = q8.weight_scale.float().reshape(1, 1).expand(1, n).contiguous()

    ref_bf16 = x.float() @ w.float().t()
    ref_nvfp4 = x.float() @ dequantize_nvfp4(*q4).t()
    ref_fp8 = (xq.float() * sx) @ (q8.weight.float() * q8.weight_scale.float()).t()
    act, out = 2 * m * k, 2 * m * n  # bf16 activation in / out bytes
    cases = [
        ("bf16", lambda: torch.matmul(x, w.t()), ref_bf16, act + 2 * n * k + out),
        ("nvfp4_triton", lambda: nvfp4_linear_triton(x, *q4), ref_nvfp4, act + nvfp4_nbytes(n, k) + out),
        ("nvfp4_dequant", lambda: nvfp4_linear_dequant(x, *q4), ref_nvfp4,
         act + nvfp4_nbytes(n, k) + 4 * n * k + out),  # + write and read of the bf16 copy
        ("nvfp4_auto", lambda: nvfp4_linear(x, *q4), ref_nvfp4, act + nvfp4_nbytes(n, k) + out),
        # The dequantization pass alone (its "TFLOP/s" are those of the GEMM it serves).
        ("nvfp4_dequant_pass", lambda: nvfp4_dequant_triton(*q4), None, nvfp4_nbytes(n, k) + 2 * n * k),
        ("fp8_gemm", lambda: torch._scaled_mm(xq, wt, sx, sw, out_dtype=torch.bfloat16), ref_fp8,
         m * k + n * k + out),
        ("fp8_gemm_fast", lambda: torch._scaled_mm(xq, wt, sx, sw, out_dtype=torch.bfloat16, use_fast_accum=True),
         ref_fp8, m * k + n * k + out),
        ("fp8_gemm_tensor", lambda: torch._scaled_mm(xq_t, wt, sx_t, sw_t, out_dtype=torch.bfloat16,
                                                      use_fast_accum=True),
         (xq_t.float() * sx_t) @ (q8.weight.float() * sw_t).t(), m * k + n * k + out),
        ("fp8_linear", lambda: _fp8_linear(x, q8), ref_fp8, act + m * k + n * k + out),
    ]
    rows = []
    for name, fn, ref, nbytes in cases:
        err = _rel_rms(fn(), ref) if ref is not None else None
        ms = do_bench(fn, warmup=25, rep=200, return_mode="median")
        rows.append({"M": m, "K": k, "N": n, "layer": label, "kernel": name, "ms": ms,
                     "tflops": 2 * m * n * k / ms / 1e9, "bytes": nbytes, "rel_rms": err})
    if sweep:
        best = None
        for cfg in SWEEP_CONFIGS:
            try:
                fn = functools.partial(nvfp4_linear_triton, x, *q4, config=cfg)
                err = _rel_rms(fn(), ref_nvfp4)
                ms = do_bench(fn, warmup=25, rep=100, return_mode="median")
            except Exception as exc:  # noqa: BLE001 - a config that does not fit shared memory is just skipped
                print(f"  sweep {label} M={m} {cfg}: failed ({type(exc).__name__})")
                continue
            print(f"  sweep {label:<8} M={m:<6} {cfg} -> {ms:.3f} ms (rel rms {err:.2e})")
            if err < 1e-2 and (best is None or ms < best[0]):
                best = (ms, cfg)
        if best:
            rows.append({"M": m, "K": k, "N": n, "layer": label, "kernel": "nvfp4_triton_best", "ms": best[0],
                         "tflops": 2 * m * n * k / best[0] / 1e9, "bytes": rows[1]["bytes"],
                         "rel_rms": rows[1]["rel_rms"], "config": best[1]})
    return rows


def _fp8_linear(x, q8):
    from quant.gemm import fp8_linear_scaled_mm

    return fp8_linear_scaled_mm(x, q8.weight, q8.weight_scale)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write the results here as JSON")
    parser.add_argument("--sweep", action="store_true", help="also time the NVFP4 Triton launch configs")
    parser.add_argument("--bytes-only", action="store_true", help="only the model weight bytes (no GPU)")
    parser.add_argument("--config", default="sana-wm-streaming", help="model config preset or YAML path")
    parser.add_argument("--m", default=",".join(map(str, TOKEN_COUNTS)),
                        help="comma-separated token counts M (e.g. 256,1024,2640 to place NVFP4_DEQUANT_MIN_M)")
    args = parser.parse_args(argv)

    from runtime.config import load_config

    cfg = load_config(args.config)
    bytes_rows = [model_weight_bytes(cfg, default_policy(f, scope)) | {"scope": scope}
                  for scope in ("official", "compact") for f in ("nvfp4", "fp8", "fp8_block")]
    print_bytes_table(bytes_rows)
    record = {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
              "commit": _commit(), "model_config": cfg.name, "model_weight_bytes": bytes_rows}
    if args.bytes_only:
        if args.json:
            args.json.write_text(json.dumps(record, indent=2))
        return 0
    if not torch.cuda.is_available():
        print("\nbench/quant.py: no CUDA device found; the GEMM timings need an NVIDIA GPU "
              "(use --bytes-only for the weight-bytes table alone).", file=sys.stderr)
        return 2
    try:
        from triton.testing import do_bench
    except ImportError:
        print("\nbench/quant.py: triton is not installed; it is needed for the NVFP4 kernel and do_bench.",
              file=sys.stderr)
        return 2
    cap = torch.cuda.get_device_capability()
    if cap < (8, 9):
        print(f"\nbench/quant.py: FP8 GEMMs need compute capability >= 8.9, this GPU is {cap}.", file=sys.stderr)
        return 2

    torch.backends.cuda.matmul.allow_tf32 = False
    peak, bw = measure_peaks(do_bench)
    gpu = torch.cuda.get_device_name()
    print(f"\n{gpu} (sm_{cap[0]}{cap[1]}), torch {torch.__version__}: bf16 matmul peak {peak:.0f} TFLOP/s "
          f"(8192^3), copy {bw:.0f} GB/s")
    rows = []
    for m in (int(v) for v in args.m.split(",")):
        for label, k, n in LINEAR_SHAPES:
            rows.extend(bench_shape(do_bench, m, k, n, label, args.sweep))
            torch.cuda.empty_cache()

    base = {(r["M"], r["K"], r["N"]): r["ms"] for r in rows if r["kernel"] == "bf16"}
    print(f"\n{'M':>6} {'layer':<8} {'K':>5} {'N':>6} {'kernel':<18} {'ms':>8} {'TFLOP/s':>8} {'vs bf16':>8} "
          f"{'of peak':>8} {'of floor':>8} {'rel rms':>9}")
    for r in rows:
        floor_ms = max(2 * r["M"] * r["N"] * r["K"] / (peak * 1e9), r["bytes"] / (bw * 1e6))
        r["speed_vs_bf16"] = base[r["M"], r["K"], r["N"]] / r["ms"]
        r["fraction_of_peak"] = r["tflops"] / peak
        r["floor_ms"] = floor_ms
        r["fraction_of_floor"] = floor_ms / r["ms"]
        print(f"{r['M']:>6} {r['layer']:<8} {r['K']:>5} {r['N']:>6} {r['kernel']:<18} {r['ms']:>8.3f} "
              f"{r['tflops']:>8.1f} {r['speed_vs_bf16']:>7.2f}x {r['fraction_of_peak']:>8.1%} "
              f"{r['fraction_of_floor']:>8.1%} {'' if r['rel_rms'] is None else format(r['rel_rms'], '.2e'):>9}")
    record.update({"gpu": gpu, "compute_capability": list(cap), "torch": torch.__version__,
                   "triton": __import__("triton").__version__, "bf16_peak_tflops": peak, "copy_gbps": bw,
                   "rows": rows})
    if args.json:
        args.json.write_text(json.dumps(record, indent=2))
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
