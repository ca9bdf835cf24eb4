"""`sana-wm bench`: streaming speed of the generator (and decoder) with random weights.

Speed does not depend on the weights, so the full 2.6B model is measured with random ones. Reported: time to
first frame, ms per chunk (p50 / p95) for the generator (each step's generate_ms) and end to end with the decoder
(wall time per chunk in steady state until its frames are in host memory; on CUDA chunk N decodes on a side
stream while chunk N+1 generates, so the generator shares the GPU with that decode), frames per second, times
real time, the fraction of the matmul floor reached (floor = the chunk's matmul FLOPs over the measured bf16
matmul rate), and peak GPU memory.
"""
from __future__ import annotations

import datetime
import json
import platform
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

from runtime.camera import actions_to_c2w


def matmul_peak_tflops(device, n: int = 8192, reps: int = 10) -> float:
    """Measured bf16 matmul rate on random data (never zeros: they run faster than real data)."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        a @ b
    end.record()
    torch.cuda.synchronize()
    return 2 * n**3 * reps / (start.elapsed_time(end) / 1e3) / 1e12


def chunk_flops(cfg, frames: int, cached_frames: int, passes: int) -> float:
    """Matmul + attention FLOPs of one chunk (all passes): linear layers, 1x1 convs, the FFN temporal conv,
    softmax attention over cache + chunk, cross-attention, and the GDN scans' D x D products."""
    C, S, H, D = cfg.hidden_size, cfg.tokens_per_frame, cfg.num_heads, cfg.head_dim
    N = frames * S
    Fh = cfg.mlp_hidden
    per_block_linear = (3 * C * C + C * C + C * C      # qkv, proj, output gate
                        + 4 * C * C                     # camera q/k/v/out
                        + C * C                         # plucker proj
                        + 2 * C * C                     # cross q + proj
                        + C * 2 * Fh + Fh * C           # FFN 1x1 convs
                        + 3 * C * C)                    # temporal conv (3 taps)
    flops = 2 * N * per_block_linear * cfg.depth
    flops += 2 * N * 9 * 2 * Fh * cfg.depth                              # depthwise 3x3
    L = cfg.text_max_length
    flops += 4 * N * L * C * cfg.depth                                    # cross-attention scores + values
    keys = (frames + cached_frames) * S
    flops += 2 * 4 * N * keys * C * len(cfg.softmax_blocks)               # main + camera softmax
    gdn = len(cfg.gdn_blocks)
    # Per frame and head: W = K^T B K and U = V^T B K (S x D x D each), outputs Q S^T: both directions,
    # main (+ z stream) and camera.
    flops += gdn * 2 * 2 * (2 * frames * H * S * D * D * 3 + frames * H * S * D * D * 2)
    return float(flops * passes)


def git_commit(repo: str | Path | None = None) -> str:
    """The checkout's short commit, with "-dirty" when tracked files differ from it (a record must not name a
    commit whose code it did not run: e.g. a copied working tree whose .git is older); "unknown" outside git."""
    try:
        return subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=7"], capture_output=True,
                              text=True, check=False, timeout=10,
                              cwd=repo or Path(__file__).resolve().parents[1]).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_bench(model: str = "sana-wm-streaming", *, precision: str = "bf16", chunks: int = 10, warmup: int = 3,
              decode: bool = True, device: str = "cuda", seed: int = 0, cuda_graphs: bool = True,
              compile: bool = False, profile: str | None = None, scope: str = "official",
              act_scales: str = "dynamic", calib_chunks: int = 2) -> dict:
    from runtime.attention import attention_kernels_of
    from runtime.model import build_model
    from runtime.pipeline import latent_intrinsics
    from runtime.session import WorldSession

    if act_scales not in ("dynamic", "static"):
        raise ValueError(f"act_scales must be 'dynamic' or 'static', got {act_scales!r}")
    if act_scales == "static" and precision != "fp8":
        raise ValueError("static activation scales are an fp8 option (nvfp4 here is weight-only, bf16 has none)")
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
    t_build = time.perf_counter()
    net = build_model(model, device=dev, dtype=dtype, init="random", seed=seed)
    if precision != "bf16":
        from quant import default_policy, quantize

        quantize(net, default_policy(precision, scope))
    cfg = net.cfg
    ae = None
    if decode:
        ae = _bench_autoencoder(cfg, dev, dtype)
    build_s = time.perf_counter() - t_build
    g = torch.Generator(device="cpu").manual_seed(seed)
    emb = torch.randn(1, cfg.text_max_length, cfg.caption_channels, generator=g).to(dev, dtype)
    text = net.prepare_text(emb, torch.ones(1, cfg.text_max_length, device=dev))
    image = (torch.rand(1, 3, cfg.height, cfg.width, generator=g) * 2 - 1).to(dev, dtype)
    total_chunks = warmup + chunks
    # Decode chunk N on a side stream while chunk N+1 generates (CUDA only; a CPU session decodes in line).
    overlap = cuda and ae is not None
    poses = actions_to_c2w("w-40,wd-30,l-20,w-40,ai-20," * (1 + total_chunks // 4) + "none-10")

    def new_session(graphs: bool = cuda_graphs and cuda):
        first = ae.encode_image(image) if ae is not None else torch.randn(
            1, cfg.in_channels, 1, cfg.latent_height, cfg.latent_width, generator=g).to(dev, dtype)
        return WorldSession(net, text, first_latent=first, intrinsics_latent=latent_intrinsics(cfg), seed=seed,
                            autoencoder=ae, cuda_graphs=graphs, overlap_decode=overlap)

    def step(session):
        raw = session.next_raw_frames()
        return session.step(poses[raw.start:raw.stop])

    if act_scales == "static":
        # ModelOpt's FP8 recipe: one input scale per layer from max calibration, here on a short eager walk (the
        # weights are random, so are the scales; the speed is what is measured).
        from quant.calibrate import calibrate_fp8_inputs

        def calibration_walk():
            s = new_session(graphs=False)
            for _ in range(calib_chunks):
                step(s)
            s.close()

        calibrate_fp8_inputs(net, calibration_walk)
    if compile:
        from runtime.model import compile_blocks

        compile_blocks(net)

    # Warm-up session (allocator, cuDNN / cuBLAS heuristics, Triton compilation), then a fresh one timed.
    s = new_session()
    for _ in range(min(warmup, 2)):
        step(s)
    s.close()
    _sync(dev)
    t0 = time.perf_counter()
    s = new_session()
    first = step(s)
    first.wait()                       # time to first frame: the first chunk's frames in host memory
    _sync(dev)
    ttff = time.perf_counter() - t0
    # End to end = wall time between successive iterations in steady state, each iteration generating chunk k
    # and collecting chunk k-1's frames (decoded meanwhile on the side stream): the rate at which frames reach
    # host memory. Without overlap, step() has already decoded, so this is generate + decode per chunk.
    gen_ms, total_ms, host_ms, graph_ms = [], [], [], []
    prev, t_prev = first, time.perf_counter()
    for i in range(total_chunks - 1):
        r = step(s)
        prev.wait()
        now = time.perf_counter()
        if i >= warmup - 1:
            gen_ms.append(r.timings["generate_ms"])
            if "graph_gpu_ms" in r.timings:
                host_ms.append(r.timings["host_ms"])
                graph_ms.append(r.timings["graph_gpu_ms"])
            total_ms.append(1e3 * (now - t_prev))
        prev, t_prev = r, now
    prev.wait()
    s.close()
    if profile and cuda:
        profile_chunks(lambda: new_session(graphs=False), step, profile)  # graph replays hide kernels
    frames_per_chunk = cfg.chunk_size * cfg.frames_per_latent
    video_s = frames_per_chunk / cfg.fps
    p50_gen, p50_total = statistics.median(gen_ms), statistics.median(total_ms)
    result = {
        "model": model, "precision": precision, "quant_scope": scope if precision != "bf16" else None,
        "fp8_activation_scales": None if precision != "fp8" else (
            "dynamic per token" if act_scales == "dynamic"
            else f"static per tensor (max calibration, {calib_chunks} chunks)"),
        "device": torch.cuda.get_device_name(dev) if cuda else
        platform.processor() or "cpu", "chunks_timed": len(gen_ms), "warmup_chunks": warmup,
        "build_s": round(build_s, 2), "time_to_first_frame_s": round(ttff, 4),
        "first_chunk_ms": round(first.timings["total_ms"], 2),
        "generator_ms_per_chunk_p50": round(p50_gen, 2),
        "generator_ms_per_chunk_p95": round(float(np.percentile(gen_ms, 95)), 2),
        # where the generator's time goes (graph-replayed steps): host work in front of the replay, the graph's GPU time
        "generator_host_ms_p50": round(statistics.median(host_ms), 2) if host_ms else None,
        "generator_graph_gpu_ms_p50": round(statistics.median(graph_ms), 2) if graph_ms else None,
        "with_decoder_ms_per_chunk_p50": round(p50_total, 2) if decode else None,
        "with_decoder_ms_per_chunk_p95": round(float(np.percentile(total_ms, 95)), 2) if decode else None,
        "generator_fps": round(frames_per_chunk / (p50_gen / 1e3), 1),
        "generator_x_realtime": round(video_s / (p50_gen / 1e3), 2),
        "end_to_end_x_realtime": round(video_s / (p50_total / 1e3), 2) if decode else None,
        "frames_per_chunk": frames_per_chunk,
        "commit": git_commit(), "date": datetime.date.today().isoformat(),
        "torch": torch.__version__, "cuda_graphs": cuda_graphs and cuda, "compile": compile,
        "overlap_decode": overlap,
        "kernels": __import__("os").environ.get("SANA_WM_KERNELS", "auto"),
        "softmax_attention": attention_kernels_of(net),
    }
    if compile:   # what compile_blocks did, for the record (both have environment switches for A/Bs)
        from runtime.block import ADALN_KERNEL
        from runtime.model import STACK_INPUT_PROJECTIONS

        result["stacked_input_projections"] = STACK_INPUT_PROJECTIONS
        result["adaln_kernel"] = ADALN_KERNEL
        result["inductor_options"] = __import__("os").environ.get("SANA_WM_INDUCTOR", "")
    if cuda:
        from kernels.glu_conv_triton import CONFIG as GLU_CONFIG

        result["depthwise_glu_launch"] = ",".join(str(v) for v in GLU_CONFIG)
    passes = len(cfg.denoising_timesteps)   # denoising steps + the cache pass
    cached = cfg.first_chunk_size + cfg.chunk_size * max(0, cfg.kv_cache_chunks - 1)
    flops = chunk_flops(cfg, cfg.chunk_size, cached, passes)
    result["chunk_tflop"] = round(flops / 1e12, 2)
    if cuda:
        peak = matmul_peak_tflops(dev)
        floor_ms = flops / (peak * 1e12) * 1e3
        result.update({"matmul_peak_tflops": round(peak, 1), "matmul_floor_ms_per_chunk": round(floor_ms, 2),
                       "fraction_of_floor": round(floor_ms / p50_gen, 3),
                       "achieved_tflops": round(flops / (p50_gen / 1e3) / 1e12, 1),
                       "peak_memory_gb": round(torch.cuda.max_memory_allocated(dev) / 1e9, 2)})
    return result


def profile_chunks(new_session, step, path: str, chunks: int = 2) -> None:
    """Kernel-level breakdown of `chunks` steady-state chunks (after two warm-up chunks) with torch.profiler,
    written as a table to `path`; `new_session` should build a session without CUDA graphs (their replays hide
    the kernels from the profiler)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    s = new_session()
    for _ in range(2):
        step(s)
    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True) as prof:
        for _ in range(chunks):
            step(s)
        torch.cuda.synchronize()
    s.close()
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=90, max_name_column_width=70)
    # The same ops split by input shapes: which GEMM, copy or elementwise op the time goes to.
    shapes = prof.key_averages(group_by_input_shape=True).table(sort_by="self_cuda_time_total", row_limit=60,
                                                                max_name_column_width=40, max_shapes_column_width=90)
    Path(path).write_text(f"torch.profiler over {chunks} chunks (times are totals over them)\n{table}\n\n"
                          f"By input shapes (self CUDA time)\n{shapes}\n\n"
                          f"Every GPU kernel, per chunk\n{kernel_table(prof.events(), chunks)}\n\n"
                          f"Memsets by the ops that launch them, per chunk\n"
                          f"{launch_sources(prof.events(), chunks, 'Memset')}\n")


def kernel_table(events, chunks: int) -> str:
    """Every GPU kernel the profiler saw, with its full name: ms and launches per chunk, us per launch, sorted by
    time (the op tables above cut names and rows; the fused inductor kernels are only told apart here)."""
    from torch.autograd import DeviceType

    totals: dict[str, list[float]] = {}
    for e in events:
        # ("## Call CompiledFxGraph ... ##" rows are inductor's annotations spanning a graph's kernels, not kernels)
        if e.device_type == DeviceType.CUDA and not e.name.startswith("## "):
            t = totals.setdefault(e.name, [0.0, 0])
            t[0] += e.time_range.elapsed_us()
            t[1] += 1
    busy_us = sum(t for t, _ in totals.values())
    launches = sum(n for _, n in totals.values())
    lines = [f"{busy_us / chunks / 1e3:.2f} ms of kernels per chunk, {launches / chunks:.0f} launches per chunk",
             f"{'ms/chunk':>9} {'launches':>8} {'us each':>8}  kernel"]
    for name, (us, n) in sorted(totals.items(), key=lambda kv: -kv[1][0]):
        lines.append(f"{us / chunks / 1e3:9.3f} {n / chunks:8.1f} {us / n:8.1f}  {name}")
    return "\n".join(lines)


def launch_sources(events, chunks: int, kernel_prefix: str) -> str:
    """Which ops launch the GPU work whose name starts with `kernel_prefix` (e.g. the memsets, a graph node each
    in the replayed step): launches per chunk by the launching op and its two enclosing ops."""
    from torch.autograd import DeviceType

    counts: dict[str, int] = {}
    for e in events:
        if e.device_type != DeviceType.CPU:
            continue
        n = sum(1 for k in e.kernels if k.name.startswith(kernel_prefix))
        if n:
            chain, parent = [e.name], e.cpu_parent
            while parent is not None and len(chain) < 3:
                chain.append(parent.name)
                parent = parent.cpu_parent
            key = " < ".join(chain)
            counts[key] = counts.get(key, 0) + n
    if not counts:
        return f"(no {kernel_prefix} launches linked to an op in this profile)"
    return "\n".join(f"{n / chunks:8.1f}  {key}" for key, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def _bench_autoencoder(cfg, dev, dtype):
    if cfg.vae in ("ltx2", "ltx2-causal"):
        from diffusers import AutoencoderKLLTX2Video

        from runtime.ltx2_vae import LTX2Autoencoder, ltx2_config

        with torch.device(dev):
            vae = AutoencoderKLLTX2Video(**ltx2_config(causal=cfg.vae == "ltx2-causal"))
        return LTX2Autoencoder(vae, device=dev, dtype=dtype)
    from runtime.decoder import load_autoencoder

    return load_autoencoder(cfg.vae, device=dev, dtype=dtype)


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def format_table(r: dict) -> str:
    scope = f" ({r['quant_scope']} scope)" if r.get("quant_scope") else ""
    if r.get("fp8_activation_scales"):
        scope += f", activations {r['fp8_activation_scales']}"
    rows = [("GPU / device", r["device"]), ("model / precision", f"{r['model']} / {r['precision']}{scope}"),
            ("time to first frame", f"{r['time_to_first_frame_s']:.3f} s"),
            ("generator ms/chunk p50 / p95", f"{r['generator_ms_per_chunk_p50']} / {r['generator_ms_per_chunk_p95']}"),
            ("generator fps, x real time", f"{r['generator_fps']}, {r['generator_x_realtime']}x")]
    if r.get("generator_graph_gpu_ms_p50") is not None:
        split = f"{r['generator_host_ms_p50']} / {r['generator_graph_gpu_ms_p50']} ms p50"
        rows.append(("  host before replay / graph GPU", split))
    if r.get("with_decoder_ms_per_chunk_p50") is not None:
        rows.append(("with decoder ms/chunk p50 / p95",
                     f"{r['with_decoder_ms_per_chunk_p50']} / {r['with_decoder_ms_per_chunk_p95']}"))
        rows.append(("end to end x real time", f"{r['end_to_end_x_realtime']}x"))
    if "fraction_of_floor" in r:
        rows.append(("matmul floor ms/chunk (fraction)", f"{r['matmul_floor_ms_per_chunk']} ({r['fraction_of_floor']})"))
        rows.append(("peak memory", f"{r['peak_memory_gb']} GB"))
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{w}}  {v}" for k, v in rows)


def write_json(result: dict, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
