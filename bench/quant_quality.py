"""Image quality of the quantized embedded model: frame PSNR of NVFP4 and FP8 against bf16 over a short walk.

    python -m bench.quant_quality --json out.json      # CPU is enough (the tiny model)

The tiny-world model is loaded in bf16, walks a fixed key path from the shipped start image, then the same model
is quantized with the project's policy (`quant.quantize`, official scope, then the compact scope that also takes
the camera / Plucker projections and the FFN temporal conv) and walks the same path with the same seed; FP8 also
with static activation scales (max calibration on another walk, `fp8_static`; over the official+tconv scope
`fp8_static_tconv`, with the layouts `compile_blocks` stores: `_stacked`, `_stacked_by_taps`), and with FP8 attention in the softmax
blocks (`attn_fp8` on the bf16 model, `attn_fp8_<operand>_only` rounding one of q, k, v, p, `fp8_static_attn_fp8`
on top of the static FP8 linears; `attn_int8qk_fp8pv` / `fp8_static_attn_int8qk_fp8pv` with INT8 per-token q and k;
`attn_int8_kernel` / `attn_int8_bf16v_kernel` and their `fp8_static_` pairs: the INT8 attention as the softmax
blocks run it, `runtime.attention.set_attention_kernel_`). Reported
per format and scope: mean / min frame PSNR against the bf16 frames, and how many layers were quantized.
The fp32 model is reported too, as the scale of "differences that do not matter".
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import platform
from pathlib import Path

import numpy as np
import torch

from runtime.bench import git_commit
from runtime.evaluate import psnr

WALK = "w-16,wa-16,d-16,wl-16,none-8"
CALIBRATION_WALK = "s-16,dj-16,a-16,wk-16,none-8"


def walk_frames(gen, actions: str, chunks: int, seed: int) -> np.ndarray:
    from runtime.camera import actions_to_c2w
    from runtime.cli import DEFAULT_IMAGE
    from runtime.pipeline import open_session

    c2w = actions_to_c2w(actions)
    session = open_session(gen, str(DEFAULT_IMAGE), "a green meadow with trees at noon", seed=seed)
    try:
        return np.concatenate([session.step(session.next_poses(c2w)).frames for _ in range(chunks)])
    finally:
        session.close()


def frame_psnr(frames: np.ndarray, ref: np.ndarray) -> dict:
    # Frame 0 is the conditioning image itself in every run: leave it out.
    values = [psnr(a, b) for a, b in zip(frames[1:], ref[1:])]
    return {"psnr_mean_db": float(np.mean(values)), "psnr_min_db": float(np.min(values))}


def run(chunks: int = 3, seed: int = 0) -> dict:
    from dataclasses import replace

    from quant import default_policy, quantize
    from quant.quantize import quantized_modules
    from runtime.pipeline import load_generator

    base = load_generator("tiny-world", dtype=torch.bfloat16)
    ref = walk_frames(base, WALK, chunks, seed)
    results = {}
    fp32 = load_generator("tiny-world", dtype=torch.float32)
    results["fp32"] = frame_psnr(walk_frames(fp32, WALK, chunks, seed), ref)
    for fmt, scope in (("fp8", "official"), ("nvfp4", "official"), ("fp8", "compact"), ("nvfp4", "compact")):
        net = quantize(copy.deepcopy(base.model), default_policy(fmt, scope))
        frames = walk_frames(replace(base, model=net), WALK, chunks, seed)
        key = fmt if scope == "official" else f"{fmt}_{scope}"
        results[key] = frame_psnr(frames, ref) | {"quantized_linears": len(quantized_modules(net))}
    # FP8 with static per-tensor activation scales (`sana-wm bench --act-scales static`), max-calibrated on a
    # different walk and seed than the one measured.
    from quant.calibrate import calibrate_fp8_inputs

    # Over the official scope, then official+tconv (the FFN temporal conv in FP8 too).
    static = {}
    for scope, key in (("official", "fp8_static"), ("official+tconv", "fp8_static_tconv")):
        static[scope] = net = quantize(copy.deepcopy(base.model), default_policy("fp8", scope))
        calibrate_fp8_inputs(net, lambda n=net: walk_frames(replace(base, model=n), CALIBRATION_WALK, chunks,
                                                            seed + 1))
        frames = walk_frames(replace(base, model=net), WALK, chunks, seed)
        results[key] = frame_psnr(frames, ref) | {"quantized_linears": len(quantized_modules(net))}
    # The same official+tconv model with each attention block's input projections stacked into one GEMM (what
    # compile_blocks runs; with static scales the stacked outputs take one more bf16 rounding).
    net = copy.deepcopy(static["official+tconv"])
    for blk in net.blocks:
        blk.attn.stack_input_projections_()
    frames = walk_frames(replace(base, model=net), WALK, chunks, seed)
    results["fp8_static_tconv_stacked"] = frame_psnr(frames, ref) | {"quantized_linears": len(quantized_modules(net))}
    # ... and the FFN temporal conv as one FP8 GEMM per tap (FP8TemporalConv.store_tap_weights_): all that
    # compile_blocks changes in an FP8 static official+tconv model (each tap's output takes a bf16 rounding).
    for blk in net.blocks:
        blk.mlp.t_conv.store_tap_weights_()
    frames = walk_frames(replace(base, model=net), WALK, chunks, seed)
    results["fp8_static_tconv_stacked_by_taps"] = frame_psnr(frames, ref) | {
        "quantized_linears": len(quantized_modules(net))}
    # FP8 attention in the softmax blocks (E4M3 q, k, v and probabilities, `quant.enable_fp8_attention_`, emulated):
    # on the bf16 model with every operand rounded, then each operand alone (which rounding costs the quality),
    # then on top of the FP8 static linears.
    from quant import enable_fp8_attention_

    attn_only = copy.deepcopy(base.model)
    for operands in ("qkvp", "q", "k", "v", "p"):
        enable_fp8_attention_(attn_only, operands)
        key = "attn_fp8" if operands == "qkvp" else f"attn_fp8_{operands}_only"
        results[key] = frame_psnr(walk_frames(replace(base, model=attn_only), WALK, chunks, seed), ref)
    # INT8 q and k with per-token scales, E4M3 values and probabilities (SageAttention's recipe).
    enable_fp8_attention_(attn_only, "ivp")
    results["attn_int8qk_fp8pv"] = frame_psnr(walk_frames(replace(base, model=attn_only), WALK, chunks, seed), ref)
    net = static["official"]
    for operands, key in (("qkvp", "fp8_static_attn_fp8"), ("ivp", "fp8_static_attn_int8qk_fp8pv")):
        enable_fp8_attention_(net, operands)
        frames = walk_frames(replace(base, model=net), WALK, chunks, seed)
        results[key] = frame_psnr(frames, ref) | {"quantized_linears": len(quantized_modules(net))}
    enable_fp8_attention_(net, "")
    enable_fp8_attention_(attn_only, "")
    # The INT8 attention as the model runs it (kernels.attention_int8; its PyTorch reference here, with the key
    # scales of the default launch), E4M3 values or the value product in bf16, on the bf16 and FP8 static models.
    from kernels.attention_int8 import launch_layout
    from runtime.attention import set_attention_kernel_

    for kind in ("int8", "int8_bf16v"):
        for model, key in ((attn_only, f"attn_{kind}_kernel"), (net, f"fp8_static_attn_{kind}_kernel")):
            set_attention_kernel_(model, kind)
            frames = walk_frames(replace(base, model=model), WALK, chunks, seed)
            results[key] = frame_psnr(frames, ref) | {"keys_per_k_scale": launch_layout()[0]}
            set_attention_kernel_(model, "sdpa")
    return {"bench": "quant_quality", "date": datetime.date.today().isoformat(), "commit": git_commit(),
            "device": platform.processor() or platform.machine(), "torch": torch.__version__, "model": "tiny-world",
            "walk": WALK, "chunks": chunks, "frames": len(ref), "reference": "bf16", "results": results}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chunks", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the record here")
    args = p.parse_args(argv)
    record = run(args.chunks, args.seed)
    for name, r in record["results"].items():
        extra = f"  ({r['quantized_linears']} linears)" if "quantized_linears" in r else ""
        print(f"{name:<6} vs bf16: frame PSNR mean {r['psnr_mean_db']:.2f} dB, min {r['psnr_min_db']:.2f} dB{extra}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(record, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
