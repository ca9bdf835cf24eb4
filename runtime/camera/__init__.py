"""Camera control and camera conditioning, numpy only (no torch at import: the explorer client uses it).

Intent (keys held, an action string, a camera file) -> per-raw-frame c2w poses -> the per-latent-frame
camera tensors the model reads. Conventions: c2w matrices, OpenCV axes (+X right, +Y down, +Z forward),
first-frame-relative, intrinsics in latent pixels for the model. See docs/camera.md.

- `actions`: action DSL, velocity model, `PoseIntegrator`, `actions_to_c2w`;
- `files`: `CameraPath`, `load_camera` / `save_camera`, `load_intrinsics`;
- `intrinsics`: layouts, resize + crop map, latent scaling, `default_intrinsics`;
- `frames`: raw / latent / chunk bookkeeping;
- `conditions`: `relative_to_first`, `camera_conditions`, `chunk_plucker`, `ucpe_ray_matrices`.
GPU twins of the last two live in `runtime.camera_torch`.
"""
from .actions import (
    ACTION_KEYS,
    CONTROLS,
    DEFAULT_FPS,
    KEY_ALIASES,
    MAX_ACTION_FRAMES,
    SCHEME_DEFAULTS,
    SCHEMES,
    TAU_COAST_S,
    TAU_PRESS_S,
    PoseIntegrator,
    SchemeDefaults,
    actions_to_c2w,
    format_actions,
    parse_actions,
    rot_x,
    rot_y,
)
from .conditions import (
    NORM_EPS,
    camera_conditions,
    camera_tensors,
    chunk_plucker,
    plucker_raw_indices,
    relative_to_first,
    ucpe_ray_matrices,
)
from .files import (
    LAST_ROW_TOL,
    MIN_FRAMES,
    ORTHONORMAL_TOL,
    CameraPath,
    load_camera,
    load_intrinsics,
    save_camera,
    validate_c2w,
)
from .frames import (
    DEFAULT_CHUNK,
    DEFAULT_FIRST_CHUNK,
    DEFAULT_STRIDE,
    chunk_latent_range,
    chunk_layout,
    latent_frame_count,
    raw_frame_count,
    raw_frames_for_chunk,
    raw_frames_of_latent,
    snap_num_frames,
)
from .intrinsics import (
    DEFAULT_HFOV_DEG,
    cover_resize_crop,
    crop_intrinsics,
    default_intrinsics,
    fov_deg,
    intrinsics_to_latent,
    intrinsics_to_vec4,
    validate_intrinsics,
    vec4_to_matrix,
)

__all__ = [
    "ACTION_KEYS",
    "CONTROLS",
    "DEFAULT_CHUNK",
    "DEFAULT_FIRST_CHUNK",
    "DEFAULT_FPS",
    "DEFAULT_HFOV_DEG",
    "DEFAULT_STRIDE",
    "KEY_ALIASES",
    "LAST_ROW_TOL",
    "MAX_ACTION_FRAMES",
    "MIN_FRAMES",
    "NORM_EPS",
    "ORTHONORMAL_TOL",
    "SCHEMES",
    "SCHEME_DEFAULTS",
    "TAU_COAST_S",
    "TAU_PRESS_S",
    "CameraPath",
    "PoseIntegrator",
    "SchemeDefaults",
    "actions_to_c2w",
    "camera_conditions",
    "camera_tensors",
    "chunk_latent_range",
    "chunk_layout",
    "chunk_plucker",
    "cover_resize_crop",
    "crop_intrinsics",
    "default_intrinsics",
    "format_actions",
    "fov_deg",
    "intrinsics_to_latent",
    "intrinsics_to_vec4",
    "latent_frame_count",
    "load_camera",
    "load_intrinsics",
    "parse_actions",
    "plucker_raw_indices",
    "raw_frame_count",
    "raw_frames_for_chunk",
    "raw_frames_of_latent",
    "relative_to_first",
    "rot_x",
    "rot_y",
    "save_camera",
    "snap_num_frames",
    "ucpe_ray_matrices",
    "validate_c2w",
    "validate_intrinsics",
    "vec4_to_matrix",
]
