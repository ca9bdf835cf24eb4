"""`sana-wm render`: a camera path (actions, camera file, or a recorded log) -> MP4 + a replayable sidecar.

The MP4 is fragmented and the sidecar is rewritten after every chunk, so an interrupted render leaves a
playable file and a log of what it holds.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from runtime.camera import (
    actions_to_c2w,
    format_actions,
    load_camera,
    load_intrinsics,
    parse_actions,
    snap_num_frames,
)

SIDECAR_VERSION = 1


class RenderInputError(ValueError):
    """Bad user input for a render: one line, exit code 2."""


@dataclass
class WalkPlan:
    """Everything that determines a walk's frames (what the sidecar stores for an exact replay)."""

    c2w: np.ndarray                 # [N, 4, 4] raw-frame poses
    num_frames: int                 # frames to write (8k + 1)
    actions: str | None = None      # the action string, when the walk came from keys
    intrinsics: np.ndarray | None = None   # [4] or [F, 4] source-image pixels
    image_hw: tuple[int, int] | None = None
    meta: dict = field(default_factory=dict)


def plan_from_actions(actions: str, frames: int | None, **speeds) -> WalkPlan:
    keys = parse_actions(actions)            # raises ValueError naming the segment
    c2w = actions_to_c2w(keys, **speeds)
    n = snap_num_frames(len(c2w) if frames is None else frames, max_frames=len(c2w) if frames is None else None)
    return WalkPlan(_extend(c2w, n), n, actions=format_actions(keys))


def plan_from_camera(path: str, intrinsics_path: str | None, frames: int | None) -> WalkPlan:
    cam = load_camera(path)                  # raises ValueError naming the file and problem
    if frames is not None and frames > cam.num_frames:
        raise RenderInputError(f"--frames {frames} is longer than the camera path ({cam.num_frames} frames in "
                               f"{path})")
    n = snap_num_frames(cam.num_frames if frames is None else frames, max_frames=cam.num_frames)
    intr = cam.intrinsics
    if intrinsics_path is not None:
        intr = load_intrinsics(intrinsics_path, cam.num_frames)
    return WalkPlan(cam.c2w[:n], n, intrinsics=intr, image_hw=cam.image_size)


def _extend(c2w: np.ndarray, n: int) -> np.ndarray:
    """At least n poses: a path shorter than the video holds its last pose."""
    if len(c2w) >= n:
        return c2w[:n]
    return np.concatenate([c2w, np.repeat(c2w[-1:], n - len(c2w), axis=0)])


def _file_digest(path: str | None) -> str | None:
    if path is None or not Path(path).is_file():
        return None
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def sidecar_path(out: Path) -> Path:
    return out.with_suffix(".json")


def load_sidecar(path: str | Path) -> dict:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise RenderInputError(f"{path}: no such replay log") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RenderInputError(f"{path}: not a sana-wm log ({exc})") from None
    if not isinstance(data, dict) or data.get("kind") != "sana-wm-walk" or "c2w" not in data:
        raise RenderInputError(f"{path}: not a sana-wm walk log")
    return data


def plan_from_sidecar(data: dict) -> WalkPlan:
    c2w = np.asarray(data["c2w"], dtype=np.float64)
    intr = None if data.get("intrinsics") is None else np.asarray(data["intrinsics"], dtype=np.float64)
    hw = tuple(data["image_hw"]) if data.get("image_hw") else None
    return WalkPlan(c2w, int(data["num_frames"]), actions=data.get("actions"), intrinsics=intr, image_hw=hw)


def render_walk(gen, image, prompt: str, plan: WalkPlan, out: Path, *, seed: int, image_ref: str | None,
                model_name: str, progress: bool = True, refine=None) -> dict:
    """Generate the walk chunk by chunk into `out` (MP4) and its sidecar; returns the sidecar dict.

    refine: a `runtime.refiner.render.RefineJob` to pass the latents through the stage-2 refiner before
    decoding (the first decoded frame, the input image, is then dropped: num_frames - 1 frames).
    """
    from tqdm import tqdm

    from runtime.attention import attention_kernels_of
    from runtime.pipeline import open_session
    from runtime.video import Mp4Writer

    cfg = gen.config
    # The refiner decodes its refined latents itself (it drops the session's decoder); otherwise chunk N decodes
    # on a side stream (CUDA) while chunk N+1 generates.
    session = open_session(gen, image, prompt, seed=seed, intrinsics=plan.intrinsics, src_hw=plan.image_hw,
                           overlap_decode=refine is None)
    sidecar = {
        "kind": "sana-wm-walk", "version": SIDECAR_VERSION, "model": model_name, "weights": gen.source,
        "fast_path": gen.fast.to_dict() if hasattr(gen, "fast") else None,
        "softmax_attention": attention_kernels_of(gen.model),
        "config": cfg.name, "seed": seed, "prompt": prompt, "image": image_ref,
        "image_sha256": _file_digest(image_ref), "actions": plan.actions,
        "num_frames": plan.num_frames, "fps": cfg.fps, "timesteps": list(session.timesteps),
        "intrinsics": None if plan.intrinsics is None else np.asarray(plan.intrinsics).tolist(),
        "image_hw": list(plan.image_hw) if plan.image_hw else None,
        "c2w": plan.c2w.tolist(), "chunks": [], "frames_written": 0, "complete": False,
    }
    side = sidecar_path(out)
    written = 0
    # A recording logs the poses to the end of its last chunk: keep them (a replay then matches exactly).
    c2w = plan.c2w if len(plan.c2w) >= plan.num_frames else _extend(plan.c2w, plan.num_frames)
    writer = Mp4Writer(out, (cfg.height, cfg.width), fps=cfg.fps)
    bar = tqdm(total=plan.num_frames, unit="frame", desc=f"render {out.name}", disable=not progress)
    try:
        if refine is not None:   # stage-2 refiner: its own stage-1 -> refiner -> decoder loop (runtime/refiner)
            written = refine.render(session, c2w, plan.num_frames, writer, sidecar, side, bar)

        def finish(result, t0: float) -> None:
            nonlocal written
            frames = result.frames[: plan.num_frames - written]   # waits for the chunk's decode
            writer.write(frames)
            written += len(frames)
            # wall_ms: step call to frames written (with overlap it spans the next chunk's launch too).
            sidecar["chunks"].append({"index": result.chunk_index, "frames": len(frames),
                                      **{k: round(v, 2) for k, v in result.timings.items()},
                                      "wall_ms": round(1e3 * (time.perf_counter() - t0), 2)})
            sidecar["frames_written"] = written
            write_json_atomic(side, sidecar)
            bar.update(len(frames))

        # One chunk in flight: step chunk N+1 (its generation) before writing chunk N, whose decode then
        # overlaps it. `ahead` counts the frames the pending chunk will bring, so no chunk is generated past
        # the end; a short count (decoders yield exactly the chunk's raw frames) just loops once more.
        pending = None
        while refine is None:
            ahead = len(pending[0].raw_frames) if pending is not None else 0
            launched = None
            if written + ahead < plan.num_frames:
                t0 = time.perf_counter()
                launched = (session.step(session.next_poses(c2w)), t0)
            if pending is not None:
                finish(*pending)
            pending = launched
            if pending is None and written >= plan.num_frames:
                break
    finally:
        bar.close()
        writer.close()
        session.close()
    sidecar["complete"] = True
    write_json_atomic(side, sidecar)
    return sidecar
