"""Benchmark: streaming LTX-2 VAE decode, one chunk of 3 latent frames (24 frames at 704x1280) at a time.

    python -m bench.vae                       # full LTX-2 VAE config, random bf16 weights, CUDA
    python -m bench.vae --weights PATH        # a real diffusers VAE folder (or hf:// ref) instead
    python -m bench.vae --json out.json       # also write the results as JSON
    python -m bench.vae --smoke               # tiny config on the CPU (checks the script, times nothing useful)

Per chunk it reports the decoder alone (CUDA events around `decode_float`, median over repeats) and the
full `decode` (uint8 conversion + copy to the host), the conv FLOPs of a chunk and the floor they imply at
the measured bf16 matmul rate, peak memory, the stream's cache size, and a check that the streamed frames
match diffusers' whole-video decode of the same latents.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

FPS = 16


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
                             check=False, cwd=Path(__file__).resolve().parents[1])
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class Timer:
    """Milliseconds of a region: CUDA events on GPU (no host sync inside the region), perf_counter on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def __call__(self, fn):
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn()
            end.record()
            end.synchronize()
            return out, start.elapsed_time(end)
        t0 = time.perf_counter()
        out = fn()
        return out, (time.perf_counter() - t0) * 1e3


def count_conv_flops(ae, run) -> float:
    """FLOPs of the Conv3d layers during `run()` (2 per multiply-add); the decoder's other ops are minor."""
    from diffusers.models.autoencoders.autoencoder_kl_ltx2 import LTX2VideoCausalConv3d

    total = [0.0]

    def hook_for(conv: torch.nn.Conv3d):
        def hook(module, args, out):
            total[0] += 2.0 * out.numel() * (conv.in_channels // conv.groups) * math.prod(conv.kernel_size)
        return hook

    # The stream runs the causal convs' kernels itself (F.conv3d on its padded buffer, not the inner nn.Conv3d),
    # so those are counted at the wrapper, whose output is the conv's; plain Conv3d (shortcuts) at themselves.
    modules = list(ae.vae.decoder.modules())
    wrapped = {id(m.conv): m for m in modules if isinstance(m, LTX2VideoCausalConv3d)}
    handles = [w.register_forward_hook(hook_for(w.conv)) for w in wrapped.values()]
    handles += [m.register_forward_hook(hook_for(m)) for m in modules
                if isinstance(m, torch.nn.Conv3d) and id(m) not in wrapped]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return total[0]


def matmul_tflops(device: torch.device, dtype: torch.dtype) -> float:
    """Measured dense matmul rate (TFLOP/s) at a large square size: the compute roof for the floor."""
    n = 8192 if device.type == "cuda" else 512
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    timer = Timer(device)
    for _ in range(3):
        a @ b
    times = [timer(lambda: a @ b)[1] for _ in range(10)]
    return 2 * n**3 / (statistics.median(times) * 1e-3) / 1e12


def never_zero(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x == 0, torch.full_like(x, 1e-3), x)


def build(args, device: torch.device, dtype: torch.dtype):
    from runtime.ltx2_vae import LTX2Autoencoder, ltx2_config

    if args.weights:
        from runtime.decoder import load_autoencoder

        return load_autoencoder(args.weights, device=device, dtype=dtype), f"weights {args.weights}"
    if args.smoke:
        cfg = dict(ltx2_config(causal=True), latent_channels=8, block_out_channels=(8, 16, 32, 32),
                   decoder_block_out_channels=(8, 16, 32), layers_per_block=(1, 1, 1, 1, 1),
                   decoder_layers_per_block=(1, 1, 1, 1))
        return LTX2Autoencoder.from_config(cfg, device=device, dtype=dtype), "tiny smoke config, random weights"
    return (LTX2Autoencoder.from_config(ltx2_config(causal=True), device=device, dtype=dtype),
            "full LTX-2 VAE config (decoder_causal=True), random weights")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default="", help="a diffusers VAE folder or hf:// ref (default: random weights)")
    p.add_argument("--height", type=int, default=704)
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--chunk-latents", type=int, default=3, help="latent frames per timed chunk")
    p.add_argument("--warmup", type=int, default=2, help="untimed chunks after the first frame")
    p.add_argument("--repeats", type=int, default=10, help="timed chunks (the stream moves on every chunk)")
    p.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16")
    p.add_argument("--no-check", action="store_true", help="skip the streamed-vs-whole-video comparison")
    p.add_argument("--no-cudnn-benchmark", action="store_true")
    p.add_argument("--smoke", action="store_true", help="tiny config on the CPU, to test the script")
    p.add_argument("--json", default="", help="write the results here")
    args = p.parse_args(argv)

    if args.smoke:
        device, args.height, args.width = torch.device("cpu"), 64, 96
        args.warmup, args.repeats, args.dtype = 1, 2, "fp32"
    elif not torch.cuda.is_available():
        print("bench/vae.py needs a CUDA GPU (torch.cuda.is_available() is False); "
              "use --smoke to run the script on the CPU", file=sys.stderr)
        return 2
    else:
        device = torch.device("cuda")
        torch.backends.cudnn.benchmark = not args.no_cudnn_benchmark
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]

    t0 = time.perf_counter()
    ae, source = build(args, device, dtype)
    load_s = time.perf_counter() - t0
    if not ae.causal:
        print("note: non-causal decoder -> overlap streaming (approximate at chunk edges)", file=sys.stderr)
    _, sh, sw = ae.stride
    if args.height % sh or args.width % sw:
        print(f"height/width must be multiples of {sh}x{sw}", file=sys.stderr)
        return 2
    grid = (args.height // sh, args.width // sw)
    n = args.chunk_latents
    total = 1 + n * (args.warmup + args.repeats)
    gen = torch.Generator(device="cpu").manual_seed(0)
    z = never_zero(torch.randn(1, ae.latent_channels, total, *grid, generator=gen)).to(device)
    image = never_zero(torch.rand(1, 3, args.height, args.width, generator=gen) * 2 - 1).to(device)
    weights_gb = sum(t.numel() * t.element_size() for t in ae.vae.decoder.state_dict().values()) / 1e9
    timer = Timer(device)

    ae.encode_image(image)                                   # warm the encoder
    _, encode_ms = timer(lambda: ae.encode_image(image))

    stream = ae.open_stream()
    _, first_ms = timer(lambda: stream.decode_float(z[:, :, :1]))
    pos = 1
    flops = 0.0
    for i in range(args.warmup):
        chunk = z[:, :, pos:pos + n]
        if i == args.warmup - 1:
            flops = count_conv_flops(ae, lambda c=chunk: stream.decode_float(c))
        else:
            stream.decode_float(chunk)
        pos += n
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_mem = torch.cuda.memory_allocated()
    snap = stream.snapshot()
    start_pos = pos
    decoder_ms = []
    for _ in range(args.repeats):
        _, ms = timer(lambda p0=pos: stream.decode_float(z[:, :, p0:p0 + n]))
        decoder_ms.append(ms)
        pos += n
    peak_gb = (torch.cuda.max_memory_allocated() / 1e9) if device.type == "cuda" else float("nan")
    act_gb = ((torch.cuda.max_memory_allocated() - base_mem) / 1e9) if device.type == "cuda" else float("nan")
    # Same chunks again through decode(): adds the uint8 conversion and the device-to-host copy.
    stream.restore(snap)
    pos = start_pos
    full_ms = []
    for _ in range(args.repeats):
        frames, ms = timer(lambda p0=pos: stream.decode(z[:, :, p0:p0 + n]))
        full_ms.append(ms)
        pos += n
    frames_per_chunk = int(frames.shape[0])
    cache_mb = stream.cache_bytes() / 1e6
    stream.close()

    check = None
    if not args.no_check:
        t_check = 1 + 2 * n
        whole = ae.decode_reference(z[:, :, :t_check]).float()
        s2 = ae.open_stream()
        parts = [s2.decode_float(z[:, :, :1])] + [s2.decode_float(z[:, :, 1 + k * n:1 + (k + 1) * n]) for k in range(2)]
        streamed = torch.cat(parts, dim=2).float()
        check = float((streamed - whole).double().norm() / whole.double().norm().clamp_min(1e-30))
        del whole, streamed, parts
        s2.close()

    tflops = matmul_tflops(device, dtype)
    dec = statistics.median(decoder_ms)
    full = statistics.median(full_ms)
    floor_ms = flops / (tflops * 1e12) * 1e3
    video_ms = frames_per_chunk / FPS * 1e3
    gpu = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    results = {
        "bench": "vae_streaming_decode",
        "gpu": gpu,
        "commit": _commit(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "diffusers": __import__("diffusers").__version__,
        "source": source,
        "causal": ae.causal,
        "dtype": args.dtype,
        "height": args.height,
        "width": args.width,
        "latent_grid": list(grid),
        "latent_channels": ae.latent_channels,
        "chunk_latent_frames": n,
        "frames_per_chunk": frames_per_chunk,
        "repeats": args.repeats,
        "load_s": round(load_s, 2),
        "decoder_weights_gb": round(weights_gb, 3),
        "encode_image_ms": round(encode_ms, 2),
        "first_frame_decode_ms": round(first_ms, 2),
        "decoder_ms_per_chunk_median": round(dec, 2),
        "decoder_ms_per_chunk_min": round(min(decoder_ms), 2),
        "decoder_ms_per_chunk_max": round(max(decoder_ms), 2),
        "decode_to_host_uint8_ms_per_chunk_median": round(full, 2),
        "ms_per_frame": round(full / frames_per_chunk, 3),
        "times_real_time": round(video_ms / full, 2),
        "conv_tflop_per_chunk": round(flops / 1e12, 3),
        "matmul_tflops_measured": round(tflops, 1),
        "floor_ms_per_chunk": round(floor_ms, 2),
        "fraction_of_floor": round(floor_ms / dec, 3),
        "peak_memory_gb": round(peak_gb, 3),
        "peak_activation_gb": round(act_gb, 3),
        "stream_cache_mb": round(cache_mb, 1),
        "stream_vs_whole_rel_err": check,
    }
    width = max(len(k) for k in results)
    print(f"{'metric':<{width}}  value")
    for k, v in results.items():
        print(f"{k:<{width}}  {v}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
