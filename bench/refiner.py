"""Benchmark: the stage-2 LTX-2 refiner at 720p, and the three-stream pipeline (stage 1 -> refiner -> decoder).

    python -m bench.refiner --json out.json          # H100: full configs, random weights (~2 min)
    python -m bench.refiner --tiny --json out.json   # tiny configs on the CPU (checks the script end to end)

Part 1, per precision (bf16, then FP8 = the video blocks' linears swapped in place for per-tensor FP8 E4M3
`torch._scaled_mm` linears): the full LTX-2 transformer config (48 layers, 4096 wide; only the video half is
materialised, built on the meta device then filled with random weights on the GPU) refines blocks of 3 latent
frames at 704x1280 (22 x 40 latent, 880 tokens per frame) autoregressively with the sink + 11-frame K/V window.
Reported: seconds per block (3 Euler passes + the K/V pass; CUDA-synchronised wall time per block) for the
blocks after the window is full and for every block, x real time (a block is 24 frames = 1.5 s at 16 fps), the
block's FLOPs and the rate reached, weights / K/V cache / peak memory.

Part 2, overlap: the full sana-wm-streaming stage-1 model (random weights, eager), the refiner and the full
LTX-2 causal VAE decoder (random weights) render the same walk twice through `runtime.refiner.render.refine_walk`:
once stage after stage, once pipelined on three CUDA streams. Reported: both totals, the sum of the stage times
of the sequential run, and the ratio (pipelined total / sum of stages < 1 shows the overlap).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from runtime.bench import git_commit

FPS = 16


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _gb(n: float) -> float:
    return round(n / 1e9, 3)


def tiny_transformer_config() -> dict:
    return {"in_channels": 128, "out_channels": 128, "num_attention_heads": 2, "attention_head_dim": 16,
            "cross_attention_dim": 32, "num_layers": 2, "caption_channels": 32, "rope_type": "split",
            "audio_in_channels": 8, "audio_out_channels": 8, "audio_num_attention_heads": 2,
            "audio_attention_head_dim": 8, "audio_cross_attention_dim": 16}


def block_flops(cfg: dict, tokens_per_frame: int, block: int, key_frames: int, text_len: int) -> float:
    """Matmul + attention FLOPs of one refined block: 3 predict passes and the K/V pass (counted as a full
    pass), each with `key_frames` frames of keys (window + block)."""
    d = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    layers = cfg["num_layers"]
    n = block * tokens_per_frame
    linear = 4 * d * d + (2 * d * d + 2 * d * cfg["cross_attention_dim"]) + 8 * d * d   # attn1, attn2, ff
    per_pass = layers * (2 * n * linear + 4 * n * key_frames * tokens_per_frame * d + 4 * n * text_len * d)
    return 4.0 * per_pass


def time_blocks(refiner, text, *, grid, blocks: int, warm_blocks: int, kv_max: int, device) -> dict:
    """Refine `warm_blocks + blocks` blocks of 3 frames of one clip; wall time of each (synchronised)."""
    from runtime.refiner.refine import BlockRefiner, RefineSettings

    h, w = grid
    gen = torch.Generator().manual_seed(0)
    total = warm_blocks + blocks
    z = torch.randn(1, 128, 1 + 3 * total, h, w, generator=gen).to(device, refiner.dtype)
    runner = BlockRefiner(refiner, text, RefineSettings(block_size=3, kv_max_frames=kv_max, fps=FPS))
    runner.start(z[:, :, :1])
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    secs = []
    for b in range(total):
        t0 = time.perf_counter()
        runner.push(z[:, :, 1 + 3 * b:4 + 3 * b])
        _sync(device)
        secs.append(time.perf_counter() - t0)
    cache = sum(e.k.numel() * e.k.element_size() + e.v.numel() * e.v.element_size()
                for e in (runner.history or []) + runner.sink_pre)
    steady = secs[warm_blocks:]
    out = {"s_per_block_p50": round(statistics.median(steady), 4), "s_per_block_min": round(min(steady), 4),
           "s_per_block_all": [round(s, 4) for s in secs], "blocks_timed": len(steady),
           "x_realtime": round(3 * 8 / FPS / statistics.median(steady), 3), "kv_cache_gb": _gb(cache),
           "window_frames": runner.cache_frames() + 1}
    if device.type == "cuda":
        out["peak_memory_gb"] = _gb(torch.cuda.max_memory_allocated(device))
    return out


def overlap_demo(refiner, *, tiny: bool, device, chunks: int) -> dict:
    """The same walk through refine_walk sequentially and pipelined (fresh session each time)."""
    from runtime.camera import actions_to_c2w
    from runtime.config import load_config
    from runtime.ltx2_vae import LTX2Autoencoder, ltx2_config
    from runtime.model import build_model
    from runtime.pipeline import latent_intrinsics
    from runtime.refiner.refine import RefineSettings
    from runtime.refiner.render import refine_walk
    from runtime.session import WorldSession

    dtype = refiner.dtype
    if tiny:
        cfg = dataclasses.replace(load_config("tiny-world"), name="tiny-ltx", in_channels=128, vae="ltx2-causal",
                                  vae_stride=(8, 32, 32), height=64, width=96)
        vae_cfg = dict(ltx2_config(causal=True), block_out_channels=(8, 16, 32, 32),
                       decoder_block_out_channels=(8, 16, 32), layers_per_block=(1, 1, 1, 1, 1),
                       decoder_layers_per_block=(1, 1, 1, 1))
    else:
        cfg, vae_cfg = load_config("sana-wm-streaming"), ltx2_config(causal=True)
    net = build_model(cfg, device=device, dtype=dtype, init="random", seed=0)
    ae = LTX2Autoencoder.from_config(vae_cfg, device=device, dtype=dtype)
    gen = torch.Generator().manual_seed(0)
    stage1_text = net.prepare_text(torch.randn(1, cfg.text_max_length, cfg.caption_channels, generator=gen)
                                   .to(device, dtype), torch.ones(1, cfg.text_max_length, device=device))
    ref_text = refiner.prepare_text(torch.randn(1, 1024 if not tiny else 16,
                                                refiner.transformer.config.caption_channels, generator=gen))
    first = torch.randn(1, 128, 1, cfg.latent_height, cfg.latent_width, generator=gen).to(device, dtype)
    poses = actions_to_c2w(",".join(["w-40,wd-30,l-20,w-40,ai-20"] * 4))
    settings = RefineSettings(block_size=3, kv_max_frames=11, fps=FPS)

    def run(n_chunks: int, pipelined: bool) -> dict:
        session = WorldSession(net, stage1_text, first_latent=first, intrinsics_latent=latent_intrinsics(cfg),
                               seed=0, autoencoder=ae)
        frames = [0]

        def on_chunk(k, f, ms):
            frames[0] += 0 if f is None else len(f)

        num_frames = 8 * (cfg.first_chunk_size + cfg.chunk_size * (n_chunks - 1) - 1) + 1
        _sync(device)
        t0 = time.perf_counter()
        stats = refine_walk(session, poses, num_frames, refiner, ref_text, settings, on_chunk, pipelined=pipelined)
        _sync(device)
        wall = time.perf_counter() - t0
        session.close()
        summary = stats.summary()
        summary["wall_s"] = round(wall, 3)
        summary["frames"] = frames[0]
        return summary

    run(2, True)                                    # warm-up: allocator, cuBLAS / Triton, both paths
    run(2, False)
    seq = run(chunks, False)
    pipe = run(chunks, True)
    sum_stages = seq["sum_of_stages_ms"]
    return {"chunks": chunks, "frames": pipe["frames"], "stage1": cfg.name,
            "sequential_total_ms": seq["total_ms"], "pipelined_total_ms": pipe["total_ms"],
            "sum_of_stages_ms": sum_stages,
            "stage_ms_sequential": {k: round(sum(v), 2) for k, v in seq["stage_ms"].items()},
            "stage_ms_pipelined": {k: round(sum(v), 2) for k, v in pipe["stage_ms"].items()},
            "pipelined_over_sum_of_stages": round(pipe["total_ms"] / sum_stages, 3),
            "pipelined_over_sequential": round(pipe["total_ms"] / seq["total_ms"], 3),
            # One host thread and no streams on the CPU: there the pipelined run is the same work in another order.
            "overlap_shown": (pipe["total_ms"] < sum_stages) if device.type == "cuda" else None}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny configs (CPU by default): tests the script")
    p.add_argument("--device", default=None, help="default: cuda, or cpu with --tiny")
    p.add_argument("--precisions", default="bf16,fp8", help="comma list of bf16, fp8 (run in this order)")
    p.add_argument("--blocks", type=int, default=4, help="timed blocks once the window is full")
    p.add_argument("--kv-max-frames", type=int, default=11)
    p.add_argument("--overlap-chunks", type=int, default=6, help="stage-1 chunks of the overlap demo (0: skip)")
    p.add_argument("--json", default="", help="write the results here")
    args = p.parse_args(argv)

    from runtime.refiner.model import (
        LTX2Refiner,
        build_random_video_transformer,
        ltx2_transformer_config,
        swap_fp8_linears,
        video_tensors,
    )

    device = torch.device(args.device or ("cpu" if args.tiny else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench/refiner.py needs a CUDA GPU; use --tiny to run it on the CPU", file=sys.stderr)
        return 2
    precisions = [s.strip() for s in args.precisions.split(",") if s.strip()]
    if any(s not in ("bf16", "fp8") for s in precisions):
        print(f"--precisions: bf16 and/or fp8, got {args.precisions!r}", file=sys.stderr)
        return 2
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    cfg = tiny_transformer_config() if args.tiny else ltx2_transformer_config()
    grid = (2, 3) if args.tiny else (704 // 32, 1280 // 32)
    text_len = 16 if args.tiny else 1024
    # The window fills after ceil((kv_max - 1) / 3) blocks; one more block warms the steady shape.
    warm_blocks = -(-(args.kv_max_frames - 1) // 3) + 1

    t0 = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    transformer = build_random_video_transformer(cfg, device=device, dtype=dtype, seed=0)
    refiner = LTX2Refiner(transformer, device=device, dtype=dtype)
    gen = torch.Generator().manual_seed(1)
    text = refiner.prepare_text(torch.randn(1, text_len, cfg["caption_channels"], generator=gen))
    result = {"bench": "refiner", "config": "tiny" if args.tiny else "LTX-2 full (video half)",
              "device": torch.cuda.get_device_name(device) if device.type == "cuda" else
              (platform.processor() or "cpu"), "dtype": str(dtype).replace("torch.", ""),
              "latent_grid": list(grid), "tokens_per_frame": grid[0] * grid[1], "block_frames": 3,
              "kv_max_frames": args.kv_max_frames, "text_tokens": text_len, "sigmas": [0.909375, 0.725, 0.421875, 0.0],
              "build_s": round(time.perf_counter() - t0, 2), "commit": git_commit(),
              "date": datetime.date.today().isoformat(), "torch": torch.__version__, "precisions": {}}
    key_frames = args.kv_max_frames + 2    # sink + 10 history + 3 block
    flops = block_flops(cfg, grid[0] * grid[1], 3, key_frames, text_len)
    result["block_tflop"] = round(flops / 1e12, 3)
    for prec in precisions:
        if prec == "fp8":
            result["fp8_linears"] = swap_fp8_linears(refiner.transformer)
            if device.type == "cuda":
                torch.cuda.empty_cache()
        weights = sum(t.numel() * t.element_size() for _, _, t in video_tensors(refiner.transformer))
        r = time_blocks(refiner, text, grid=grid, blocks=args.blocks, warm_blocks=warm_blocks,
                        kv_max=args.kv_max_frames, device=device)
        r["weights_gb"] = _gb(weights)
        r["achieved_tflops"] = round(flops / r["s_per_block_p50"] / 1e12, 2)
        result["precisions"][prec] = r
        print(f"{prec}: {r['s_per_block_p50']} s per block of 3 latent frames ({r['x_realtime']}x real time), "
              f"peak {r.get('peak_memory_gb', 'n/a')} GB", flush=True)
    if args.overlap_chunks > 0:
        result["overlap"] = overlap_demo(refiner, tiny=args.tiny, device=device, chunks=args.overlap_chunks)
        result["overlap"]["refiner_precision"] = precisions[-1] if precisions else "bf16"
        o = result["overlap"]
        print(f"overlap: pipelined {o['pipelined_total_ms']:.0f} ms vs sum of stages {o['sum_of_stages_ms']:.0f} ms "
              f"(sequential {o['sequential_total_ms']:.0f} ms)", flush=True)
    if device.type == "cuda":
        result["peak_memory_gb"] = _gb(torch.cuda.max_memory_allocated(device))
    result["total_s"] = round(time.perf_counter() - t0, 1)
    text_out = json.dumps(result, indent=1)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text_out)
        print(f"wrote {args.json}")
    else:
        print(text_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
