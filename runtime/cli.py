"""The `sana-wm` command line."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import runtime

ASSETS = Path(__file__).resolve().parent / "assets"
DEFAULT_IMAGE = ASSETS / "start.png"
DEFAULT_PROMPT = "a sunny meadow with trees and houses"
MIN_WINDOW, MAX_WINDOW = 64, 16384
"""Bounds of each side of `explore --window` (the HUD needs some room; GL textures stop at 16384)."""


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""


def _user_errors() -> tuple[type[BaseException], ...]:
    from runtime.checkpoint import CheckpointError
    from runtime.config import ConfigError
    from runtime.images import ImageLoadError
    from runtime.pipeline import GeneratorError
    from runtime.render import RenderInputError
    from runtime.weights import MissingWeightsError

    return (UsageError, ValueError, CheckpointError, ConfigError, ImageLoadError, GeneratorError,
            RenderInputError, MissingWeightsError, FileNotFoundError)


def _add_fast_path_args(p: argparse.ArgumentParser, precision_default: str | None = "bf16") -> None:
    """The chunk step's fast path (runtime.pipeline.FastPath), as `sana-wm bench` measures it."""
    from runtime.pipeline import PRECISIONS, QUANT_SCOPES

    p.add_argument("--precision", default=precision_default, choices=PRECISIONS,
                   help="bf16: the model as stored (fp32 on the CPU); fp8: E4M3 weights and activations with "
                        "static scales calibrated on a short walk first (CUDA compute capability >= 8.9; an "
                        "emulation on the CPU); nvfp4: 4-bit weights (less memory)"
                        + ("" if precision_default else " (default: a --replay's, else bf16)"))
    p.add_argument("--scope", default="official", choices=QUANT_SCOPES,
                   help="which layers --precision fp8 / nvfp4 quantize (as `sana-wm quantize --scope`)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile each block (faster chunks; the first ones take minutes to compile)")
    p.add_argument("--graphs", action=argparse.BooleanOptionalAction, default=True,
                   help="replay each steady chunk step from a CUDA graph (CUDA only; default on)")


def _fast_path(args, precision: str | None = None):
    """The FastPath of the --precision / --scope / --compile / --graphs arguments."""
    from runtime.pipeline import FastPath

    return FastPath(precision=precision or args.precision or "bf16", scope=args.scope, compile=args.compile,
                    cuda_graphs=args.graphs and str(args.device).startswith("cuda"))


def _fast_path_asked(args) -> bool:
    """Whether any fast-path argument differs from running the model as stored."""
    return (args.precision not in (None, "bf16")) or args.compile


# ------------------------------------------------------------------------------------------------------------
def cmd_info(args) -> int:
    from runtime.info import describe

    print(describe(args.target))
    return 0


def cmd_render(args) -> int:
    import torch

    from runtime.pipeline import check_device, load_generator
    from runtime.render import (
        load_sidecar,
        plan_from_actions,
        plan_from_camera,
        plan_from_sidecar,
        render_walk,
    )

    out = Path(args.out)
    if out.suffix.lower() != ".mp4":
        raise UsageError(f"--out must name an .mp4 file, got {args.out!r}")
    check_device(args.device)
    sources = [s for s in (args.actions, args.camera, args.replay) if s is not None]
    if len(sources) != 1:
        raise UsageError("give exactly one of --actions, --camera or --replay")
    image, prompt, seed, model = args.image, args.prompt, args.seed, args.model
    if args.replay:
        log = load_sidecar(args.replay)
        plan = plan_from_sidecar(log)
        image = image or log.get("image")
        prompt = log["prompt"] if prompt is None else prompt
        seed = log["seed"] if seed is None else seed
        model = model or log["model"]
    elif args.actions is not None:
        plan = plan_from_actions(args.actions, args.frames)
    else:
        plan = plan_from_camera(args.camera, args.intrinsics, args.frames)
    image = image or str(DEFAULT_IMAGE)
    if not Path(image).is_file():
        raise UsageError(f"--image: no such file {image!r}")
    from runtime.images import open_rgb

    open_rgb(image)   # unreadable images fail here, before any file is written
    refine = None
    logged_refiner = log.get("refiner") if args.replay else None
    if args.refine or (args.refine is None and logged_refiner):
        # Stage-2 refiner: the model and the refiner's weights are checked before anything heavy is loaded.
        from runtime.refiner.render import prepare_refine

        refine = prepare_refine(args, model or "tiny-world", logged_refiner)
    _check_backend(args)
    if args.backend != "torch" and _fast_path_asked(args):
        raise UsageError(f"--precision / --compile are torch-backend options (--backend {args.backend} runs the "
                         "engines as exported: choose the precision with `sana-wm export-trt --precision`)")
    logged_fast = (log.get("fast_path") or {}) if args.replay else {}
    fast = _fast_path(args, precision=args.precision or logged_fast.get("precision"))
    gen = load_generator(model or "tiny-world", device=args.device,
                         dtype=torch.float32 if args.device == "cpu" else None,
                         fast=fast if args.backend == "torch" else None)
    gen = _engine_backend(gen, args)
    logged_attention = log.get("softmax_attention") if args.replay else None
    if logged_attention and len(logged_attention) == 1:
        # the same attention arithmetic as the logged render (SANA_WM_ATTENTION at the time), for an exact replay
        from runtime.attention import attention_kernels_of, set_attention_kernel_

        if attention_kernels_of(gen.model):   # a torch model with softmax blocks (not an engine's stand-in)
            set_attention_kernel_(gen.model, logged_attention[0])
    prompt = prompt if prompt is not None else DEFAULT_PROMPT
    sidecar = render_walk(gen, image, prompt, plan, out,
                          seed=0 if seed is None else seed, image_ref=image, model_name=model or "tiny-world",
                          progress=not args.quiet,
                          refine=None if refine is None else refine.load(prompt, device=args.device))
    gen_ms = sum(c["generate_ms"] for c in sidecar["chunks"])
    secs = sidecar["frames_written"] / sidecar["fps"]
    print(f"wrote {out} ({sidecar['frames_written']} frames, {secs:.1f} s of video; generation "
          f"{gen_ms / 1e3:.1f} s = {secs / max(gen_ms / 1e3, 1e-9):.2f}x real time) and {out.with_suffix('.json')}")
    return 0


def cmd_bench(args) -> int:
    import torch

    from runtime.bench import format_table, run_bench, write_json

    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("no CUDA GPU here: `sana-wm bench` measures GPU speed (use --device cpu --model tiny-world "
                         "for a CPU figure)")
    if args.act_scales == "static" and args.precision != "fp8":
        raise UsageError("--act-scales static is an fp8 option (nvfp4 is weight-only here, bf16 has no scales)")
    # FP8 measures what the product runs (runtime.pipeline.FastPath calibrates static scales) unless told otherwise
    act_scales = args.act_scales or ("static" if args.precision == "fp8" else "dynamic")
    result = run_bench(args.model, precision=args.precision, chunks=args.chunks, warmup=args.warmup,
                       decode=args.decode, device=args.device, cuda_graphs=args.graphs,
                       compile=args.compile, profile=args.profile, scope=args.scope,
                       act_scales=act_scales, calib_chunks=args.calib_chunks)
    print(format_table(result))
    if args.json:
        write_json(result, args.json)
        print(f"wrote {args.json}")
    return 0


def cmd_eval(args) -> int:
    import json

    from runtime.evaluate import EvalConfig, evaluate, stability
    from runtime.pipeline import load_generator

    gen = load_generator(args.model, device=args.device)
    report = evaluate(gen, EvalConfig(clips=args.clips, seconds=args.seconds, seed=args.seed))
    if args.long_seconds > 0:
        report["stability"] = stability(gen, args.long_seconds, seed=args.seed)
    s = report["summary"]
    for key in sorted(s):
        print(f"{key:<34}{s[key]:.4f}" if isinstance(s[key], float) else f"{key:<34}{s[key]}")
    if "stability" in report:
        print(f"{'long walk ' + str(args.long_seconds) + ' s no collapse':<34}{report['stability']['no_collapse']}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1))
        print(f"wrote {args.json}")
    return 0


def cmd_quantize(args) -> int:
    from safetensors.torch import save_file

    from quant import default_policy, quantize_state_dict
    from runtime.checkpoint import iter_checkpoint

    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise UsageError(f"--out must name a .safetensors file, got {args.out!r}")
    state = dict(iter_checkpoint(args.input))
    q = quantize_state_dict(state, default_policy(args.format, args.scope))
    n_q = sum(1 for k in q if k.endswith(".weight_scale"))
    if n_q == 0:
        raise UsageError(f"{args.input}: the {args.format} policy ({args.scope} scope) selects no layer of this "
                         "checkpoint")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".safetensors.tmp")
    save_file({k: v.contiguous() for k, v in q.items()}, str(tmp),
              metadata={"quantization": args.format, "quantization_scope": args.scope})
    tmp.replace(out)
    size = lambda d: sum(t.numel() * t.element_size() for t in d.values())
    print(f"wrote {out}: {n_q} layers in {args.format}, {size(state) / 1e6:.1f} MB -> {size(q) / 1e6:.1f} MB")
    return 0


def cmd_serve(args) -> int:
    from runtime.pipeline import check_device
    from runtime.server import serve_command

    check_device(args.device)
    return serve_command(host=args.host, port=args.port, model=args.model, device=args.device,
                         max_sessions=args.max_sessions, token_file=args.token_file, fast=_fast_path(args))


def cmd_explore(args) -> int:
    import os

    from explorer.app import ExploreOptions, parse_hostport, run_explorer

    if args.headless and not args.script:
        raise UsageError("--headless needs --script ACTIONS (e.g. --script \"w-32,a-16\")")
    if args.script is not None:
        from runtime.camera import parse_actions

        parse_actions(args.script)            # raises ValueError naming the bad segment
    if args.record is not None and Path(args.record).suffix.lower() != ".mp4":
        raise UsageError(f"--record must name an .mp4 file, got {args.record!r}")
    if args.image is not None and not Path(args.image).is_file():
        raise UsageError(f"--image: no such file {args.image!r}")
    if args.connect is None:
        from runtime.pipeline import check_device

        check_device(args.device)             # before a window opens
    else:
        parse_hostport(args.connect)          # raises ValueError on a malformed HOST:PORT
        if _fast_path_asked(args):
            raise UsageError("--precision / --compile set up a local model: give them to `sana-wm serve` instead")
    try:
        w, h = (int(v) for v in args.window.lower().split("x"))
    except ValueError:
        raise UsageError(f"--window: expected WIDTHxHEIGHT, got {args.window!r}") from None
    if not (MIN_WINDOW <= w <= MAX_WINDOW and MIN_WINDOW <= h <= MAX_WINDOW):
        raise UsageError(f"--window: each side must be in [{MIN_WINDOW}, {MAX_WINDOW}] pixels, got {w}x{h}")
    opts = ExploreOptions(image=args.image, prompt=DEFAULT_PROMPT if args.prompt is None else args.prompt,
                          model=args.model, device=args.device, connect=args.connect,
                          token=args.token or os.environ.get("SANA_WM_TOKEN"), seed=args.seed,
                          record=args.record, headless=args.headless, script=args.script, size=(w, h),
                          fullscreen=args.fullscreen, hud="off" if args.no_hud else "hud", out_dir=args.out_dir,
                          fast=_fast_path(args))
    return run_explorer(opts)


# ------------------------------------------------------------------------------------------------------------
# TensorRT: `export-trt` and `render --backend` (runtime/export_onnx.py, runtime/trt_backend.py)
def cmd_export_trt(args) -> int:
    import torch

    from runtime import export_onnx as ex
    from runtime.pipeline import load_generator

    if args.build:
        try:
            ex.import_tensorrt()          # before the export, which can take long for the full model
        except ex.TensorRTUnavailable as exc:
            raise UsageError(f"--build: {exc}; nothing was written (run without --build for the graphs)") from None
    out = Path(args.out)
    gen = load_generator(args.model, device=args.device, dtype=torch.float32, random_weights=args.random_weights)
    try:
        manifest = ex.export_generator(gen, out, args.precision, dtype=args.dtype,
                                       calib_chunks=args.calib_chunks, log=(lambda msg: None) if args.quiet else print)
    except ex.ExportError as exc:
        raise UsageError(str(exc)) from None
    print(f"wrote {len(manifest['graphs'])} ONNX graphs ({args.precision}, {args.dtype}), {ex.MANIFEST} and "
          f"{ex.BUILD_SCRIPT} to {out}")
    if args.build:
        try:
            built = ex.build_engines(out)
        except (ex.TensorRTUnavailable, ex.ExportError) as exc:
            raise UsageError(str(exc)) from None
        print(f"built {len(built)} TensorRT engines in {out}")
    return 0


def _check_backend(args) -> None:
    """Fail on a backend that cannot run here before any model is loaded."""
    if args.backend == "torch":
        return
    if not args.engines:
        raise UsageError(f"--backend {args.backend} needs --engines DIR (written by `sana-wm export-trt`)")
    if args.backend == "tensorrt":
        from runtime.export_onnx import TensorRTUnavailable, import_tensorrt

        try:
            import_tensorrt()
        except TensorRTUnavailable as exc:
            raise UsageError(str(exc)) from None
        if args.device == "cpu":
            raise UsageError("--backend tensorrt runs on a GPU: add --device cuda")
    elif args.device != "cpu":
        raise UsageError("--backend onnxruntime runs on the CPU: use --device cpu")


def _engine_backend(gen, args):
    """`gen` with its chunk step on the engines of --engines (unchanged for --backend torch)."""
    if args.backend == "torch":
        return gen
    from runtime.export_onnx import TensorRTUnavailable
    from runtime.trt_backend import EngineError, engine_generator

    try:
        return engine_generator(gen, args.engines, args.backend, device=args.device)
    except (TensorRTUnavailable, EngineError) as exc:
        raise UsageError(str(exc)) from None


# ------------------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sana-wm", description="SANA-WM interactive world explorer")
    p.add_argument("--version", action="version", version=f"sana-wm {runtime.__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    info = sub.add_parser("info", help="parameters, memory and block layout of a config or checkpoint")
    info.add_argument("target", nargs="?", default="tiny-world", help="preset name, YAML file or checkpoint")
    info.set_defaults(func=cmd_info)

    r = sub.add_parser("render", help="render a camera walk to an MP4 (+ a replayable .json sidecar)")
    r.add_argument("--image", help="first frame (default: the built-in start image)")
    r.add_argument("--prompt", help="text prompt")
    r.add_argument("--actions", help='key string, e.g. "w-40,a-16,wd-24" (w/s move, a/d turn, i/k look, j/l strafe)')
    r.add_argument("--camera", help="camera file: .npy [F,4,4] c2w, .npz (c2w, intrinsics) or .json")
    r.add_argument("--intrinsics", help=".npy intrinsics (3,3), (F,3,3), (4,) or (F,4) in image pixels")
    r.add_argument("--replay", help="a sidecar .json of an earlier render or recording: reproduce it")
    r.add_argument("--frames", type=int, help="frames to render (snapped to 8k+1)")
    r.add_argument("--seed", type=int, help="noise seed (default 0)")
    r.add_argument("--model", help="tiny-world (default, embedded), a preset, or a model folder")
    r.add_argument("--device", default="cpu", help="cpu or cuda")
    r.add_argument("--out", required=True, help="output .mp4")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    # Stage-2 refiner (runtime/refiner): LTX-2 models only.
    r.add_argument("--refine", action=argparse.BooleanOptionalAction, default=None,
                   help="refine the latents with the LTX-2 refiner before decoding (off by default; a --replay "
                        "follows its log); drops the first decoded frame")
    r.add_argument("--refiner-root", help="refiner folder or hf:// ref with transformer/ and connectors/ "
                                          "(default: the model preset's official one)")
    r.add_argument("--refiner-gemma-root", help="its Gemma-3 text encoder folder (default: beside the root)")
    r.add_argument("--refiner-block-size", type=int,
                   help="latent frames per autoregressive refiner block (default 3; 0: one sink-bidirectional "
                        "pass over the whole clip)")
    r.add_argument("--refiner-kv-max-frames", type=int, help="sink + recent frames a block attends (default 11)")
    r.add_argument("--refiner-seed", type=int, help="re-noising seed (default 42)")
    r.add_argument("--refiner-offload", choices=["none", "model", "blocks"], default="none",
                   help="keep the refiner in CPU memory: per component (model) or streamed block by block")
    r.add_argument("--refiner-precision", choices=["bf16", "fp8"], default="bf16")
    # TensorRT backend (runtime/trt_backend.py).
    r.add_argument("--backend", default="torch", choices=["torch", "tensorrt", "onnxruntime"],
                   help="run the chunk step in torch (default), on TensorRT engines, or as the exported graphs "
                        "through onnxruntime on the CPU (to check an export); the last two need --engines")
    r.add_argument("--engines", metavar="DIR", help="output folder of `sana-wm export-trt` (and its built engines)")
    _add_fast_path_args(r, precision_default=None)
    r.set_defaults(func=cmd_render)

    sv = sub.add_parser("serve", help="serve world sessions over TCP to remote explorers (docs/protocol.md)")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (beyond loopback needs --token-file)")
    sv.add_argument("--port", type=int, default=7717, help="TCP port (0: any free port; default 7717)")
    sv.add_argument("--model", default="tiny-world", help="tiny-world (default, embedded), a preset, or a model folder")
    sv.add_argument("--device", default="cpu", help="cpu or cuda")
    sv.add_argument("--max-sessions", type=int, default=2, help="sessions at once on this GPU (default 2)")
    sv.add_argument("--token-file", help="file holding the shared secret clients must send")
    _add_fast_path_args(sv)
    sv.set_defaults(func=cmd_serve)

    x = sub.add_parser("explore", help="explore a world live: WASD/IJKL drive the camera (docs/explorer.md)")
    x.add_argument("--image", help="first frame (default: the built-in start image)")
    x.add_argument("--prompt", help="text prompt")
    x.add_argument("--model", default="tiny-world", help="tiny-world (default, embedded), a preset, or a model folder")
    x.add_argument("--device", default="cpu", help="cpu or cuda (local model)")
    x.add_argument("--connect", metavar="HOST:PORT", help="use a `sana-wm serve` server instead of a local model")
    x.add_argument("--token", help="shared secret for --connect (default: $SANA_WM_TOKEN)")
    x.add_argument("--seed", type=int, default=0, help="noise seed (N picks the next one; default 0)")
    x.add_argument("--record", metavar="OUT.mp4", help="record from the start (+ OUT.json for render --replay)")
    x.add_argument("--headless", action="store_true", help="no window: play --script offscreen, then exit")
    x.add_argument("--script", metavar="ACTIONS", help='keys to play as if held, e.g. "w-32,a-16,none-8"')
    x.add_argument("--window", default="960x540", help="window size WIDTHxHEIGHT (default 960x540)")
    x.add_argument("--fullscreen", action="store_true", help="start fullscreen (F11 toggles)")
    x.add_argument("--no-hud", action="store_true", help="start with the HUD hidden (H cycles it)")
    x.add_argument("--out-dir", default=".", help="folder for F12 screenshots and R recordings (default .)")
    _add_fast_path_args(x)
    x.set_defaults(func=cmd_explore)

    e = sub.add_parser("eval", help="PSNR / SSIM / camera following / stability on held-out procedural walks")
    e.add_argument("--model", default="tiny-world")
    e.add_argument("--device", default="cpu")
    e.add_argument("--clips", type=int, default=32, help="held-out walks with motion to score (32 give ~30 turning "
                   "segments; 16 gave 17, too few to read a 95%% sign agreement)")
    e.add_argument("--seconds", type=float, default=4.0)
    e.add_argument("--long-seconds", type=float, default=60.0, help="length of the stability walk (0: skip)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--json", help="write the full report as JSON")
    e.set_defaults(func=cmd_eval)

    qz = sub.add_parser("quantize", help="write an NVFP4 / FP8 checkpoint (modelopt layout) of a checkpoint")
    qz.add_argument("--in", dest="input", required=True, help="checkpoint (.safetensors / .pt)")
    qz.add_argument("--out", required=True, help="output .safetensors")
    qz.add_argument("--format", default="nvfp4", choices=["nvfp4", "fp8", "fp8_block"])
    qz.add_argument("--scope", default="official", choices=["official", "official+tconv", "compact"],
                    help="official: the release's layers; official+tconv: also the FFN temporal conv; compact: also "
                         "the camera / Plucker projections (smaller, less accurate; docs/quantization.md)")
    qz.set_defaults(func=cmd_quantize)

    b = sub.add_parser("bench", help="streaming speed with random weights (GPU)")
    b.add_argument("--model", default="sana-wm-streaming", help="sana-wm-streaming, tiny-world or a config path")
    b.add_argument("--precision", default="bf16", choices=["bf16", "fp8", "nvfp4"])
    b.add_argument("--scope", default="official", choices=["official", "official+tconv", "compact"],
                   help="which layers fp8 / nvfp4 quantize (as `sana-wm quantize --scope`)")
    b.add_argument("--act-scales", default=None, choices=["dynamic", "static"],
                   help="fp8 activations: static per-tensor scales from max calibration on --calib-chunks eager "
                        "chunks first (the default, as render / explore / serve run FP8; ModelOpt's recipe; "
                        "docs/quantization.md), or dynamic per-token ones")
    b.add_argument("--calib-chunks", type=int, default=2, help="chunks of the --act-scales static calibration")
    b.add_argument("--chunks", type=int, default=10, help="timed chunks")
    b.add_argument("--warmup", type=int, default=3, help="untimed chunks (the CUDA graph is captured in chunk 2)")
    b.add_argument("--decode", action=argparse.BooleanOptionalAction, default=True, help="include the decoder")
    b.add_argument("--device", default="cuda")
    b.add_argument("--graphs", action=argparse.BooleanOptionalAction, default=True,
                   help="replay the steady-state chunk step from a CUDA graph")
    b.add_argument("--compile", action="store_true", help="torch.compile each block")
    b.add_argument("--json", help="write the result as JSON")
    b.add_argument("--profile", metavar="OUT.txt", help="also write a torch.profiler kernel table of two "
                   "chunks of an extra session run without CUDA graphs")
    b.set_defaults(func=cmd_bench)

    t = sub.add_parser("export-trt", help="ONNX graphs of the streaming chunk step + a TensorRT build script "
                                          "(README: TensorRT export)")
    t.add_argument("--model", default="tiny-world", help="tiny-world (default, embedded), a preset, or a model folder")
    t.add_argument("--precision", default="nvfp4", choices=["nvfp4", "fp8", "bf16"],
                   help="quantize the precision policy's layers (quant/policy.py) to NVFP4 or FP8, or none (bf16)")
    t.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"],
                   help="dtype of the unquantized math: bf16 for TensorRT, fp32 to check with onnxruntime")
    t.add_argument("--out", required=True, help="output folder")
    t.add_argument("--device", default="cpu", help="where to trace and calibrate: cpu or cuda")
    t.add_argument("--random-weights", action="store_true", help="skip the checkpoint (the graphs' structure only)")
    t.add_argument("--calib-chunks", type=int, default=2, help="fp8: chunks of the calibration walk (default 2)")
    t.add_argument("--build", action="store_true", help="also build the engines (needs TensorRT importable here)")
    t.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    t.set_defaults(func=cmd_export_trt)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="sana-wm: %(levelname)s: %(message)s")
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("sana-wm: interrupted", file=sys.stderr)
        return 130
    except _user_errors() as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"sana-wm: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
