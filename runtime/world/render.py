"""Batched analytic ray casting of `Scene`s in plain PyTorch (CPU or CUDA).

One primary ray per pixel (optionally s x s supersampled), intersected analytically with the ground plane and
every primitive that can be in view, then Lambert + ambient shading with one hard shadow ray toward the sun,
procedural textures, distance fog and a sky with sun, clouds and a horizon silhouette.

Conventions (spec 4.1 / 4.6): `c2w` are camera-to-world matrices in OpenCV axes (+X right, +Y down, +Z forward);
intrinsics (fx, fy, cx, cy) are in output pixels, and pixel (u, v) (integer indices) looks along
R @ ((u - cx) / fx, (v - cy) / fy, 1). With that unnormalised direction the ray parameter t at a hit is the
camera-space z, which is what the depth map holds.

Cost: the work is [frames, pixels, primitives] elementwise ops, so primitives are culled per chunk of frames
against the chunk's view frusta (and, for shadow casters, against the frusta swept along the sun direction),
and frames are processed in chunks that keep the largest intermediate near `max_elements`.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .scene import (
    BARK,
    BLOTCH,
    BOX,
    BRICKS,
    CHECKER,
    CONE,
    CYLINDER,
    ELLIPSOID,
    G_CHECKER,
    G_CITY,
    G_FOREST,
    G_GRASS,
    G_SAND,
    G_SNOW,
    H_MOUNTAINS,
    H_SKYLINE,
    PLAIN,
    STRIPES,
    WINDOWS,
    Scene,
)

_EPS = 1e-4
_INF = float("inf")
_FAR = 150.0
"""Primitives farther than this (bounding sphere) from every camera of a chunk are not drawn."""
_SHADOW_REACH = 40.0
"""Longest horizontal shadow (world units) considered when culling shadow casters."""
_TWO_PI = 2.0 * math.pi


# --------------------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------------------
@torch.no_grad()
def render(scene: Scene, c2w, intrinsics, height: int, width: int, device=None, *, shadows: bool = True,
           return_depth: bool = False, supersample: int = 1, max_elements: int | None = None):
    """Render frames of a scene.

    Args:
        scene: the world.
        c2w: [F, 4, 4] (or [4, 4]) camera-to-world poses, OpenCV axes; numpy or torch.
        intrinsics: (fx, fy, cx, cy) in pixels of the output image: a 4-sequence, [4] or [F, 4].
        height, width: output size in pixels.
        device: torch device to render on (default: CPU).
        shadows: cast one shadow ray per lit pixel.
        return_depth: also return the depth map.
        supersample: render s x s rays per pixel and average them (anti-aliasing; cost x s^2).
        max_elements: cap on the largest intermediate (frames x pixels x primitives); default 2^26 on CUDA,
            2^21 on CPU.

    Returns:
        uint8 [F, H, W, 3] on `device`; with return_depth, also float32 [F, H, W] camera-space z depth (+inf
        for the sky; the minimum over the sub-samples when supersampling).
    """
    dev = torch.device("cpu" if device is None else device)
    poses = _as_numpy(c2w).astype(np.float64).reshape(-1, 4, 4)
    num = poses.shape[0]
    K = np.broadcast_to(_as_numpy(intrinsics).astype(np.float64).reshape(-1, 4), (num, 4)).copy()
    s = int(supersample)
    if s < 1:
        raise ValueError(f"supersample must be >= 1, got {supersample}")
    if s > 1:
        # Sub-pixel j of pixel u sits at u + (j + 0.5) / s - 0.5 in output pixel units.
        K = np.stack([K[:, 0] * s, K[:, 1] * s, (K[:, 2] + 0.5) * s - 0.5, (K[:, 3] + 0.5) * s - 0.5], -1)
    H, W = int(height) * s, int(width) * s
    if max_elements is None:
        max_elements = 1 << 26 if dev.type == "cuda" else 1 << 21
    arr = scene.arrays()
    tables = scene.to_device(dev)
    cst = _consts(scene, dev)
    n_max = max([int((arr["kind"] == k).sum()) for k in range(4)] + [1])
    chunk = int(max(1, min(num, max_elements // (H * W * n_max))))
    rgb_out = torch.empty(num, H, W, 3, dtype=torch.float32 if s > 1 else torch.uint8, device=dev)
    depth_out = torch.empty(num, H, W, dtype=torch.float32, device=dev) if return_depth else None
    for start in range(0, num, chunk):
        sl = slice(start, min(num, start + chunk))
        rgb, depth = _render_chunk(scene, arr, tables, cst, poses[sl], K[sl], H, W, dev, shadows, max_elements,
                                   as_float=s > 1)
        rgb_out[sl] = rgb
        if depth_out is not None:
            depth_out[sl] = depth
    if s > 1:
        pooled = torch.nn.functional.avg_pool2d(rgb_out.permute(0, 3, 1, 2), s)
        rgb_out = _to_uint8(pooled.permute(0, 2, 3, 1))
        if depth_out is not None:
            depth_out = -torch.nn.functional.max_pool2d(-depth_out[:, None], s)[:, 0]
    if return_depth:
        return rgb_out, depth_out
    return rgb_out


def _as_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def _to_uint8(col: torch.Tensor) -> torch.Tensor:
    return (col.clamp(0.0, 1.0) * 255.0 + 0.5).to(torch.uint8)


# --------------------------------------------------------------------------------------------------------
# Culling (numpy, per chunk of frames)
# --------------------------------------------------------------------------------------------------------
def _frustum_visible(centers: np.ndarray, radii: np.ndarray, poses: np.ndarray, K: np.ndarray, H: int,
                     W: int) -> np.ndarray:
    """[N] bool: the sphere (centers [N, 3], radii [N]) intersects some frame's view frustum (up to _FAR)."""
    R = poses[:, :3, :3]
    o = poses[:, :3, 3]
    rel = centers[None, :, :] - o[:, None, :]                       # [F, N, 3]
    pc = np.einsum("fji,fnj->fni", R, rel)                          # camera coords (R^T rel)
    tx = np.maximum(np.abs(0.0 - K[:, 2]), np.abs(W - 1.0 - K[:, 2])) / K[:, 0] + 1.0 / K[:, 0]
    ty = np.maximum(np.abs(0.0 - K[:, 3]), np.abs(H - 1.0 - K[:, 3])) / K[:, 1] + 1.0 / K[:, 1]
    r = radii[None, :]
    ok = pc[..., 2] > -r
    ok &= np.abs(pc[..., 0]) <= tx[:, None] * pc[..., 2] + r * np.sqrt(1.0 + tx[:, None] ** 2)
    ok &= np.abs(pc[..., 1]) <= ty[:, None] * pc[..., 2] + r * np.sqrt(1.0 + ty[:, None] ** 2)
    ok &= np.linalg.norm(rel, axis=-1) - r < _FAR
    return ok.any(axis=0)


def _cull(scene: Scene, arr: dict, poses: np.ndarray, K: np.ndarray, H: int, W: int):
    """Indices of the primitives to intersect with primary rays and with shadow rays."""
    bound = arr["bound"].astype(np.float64)
    centers, radii = bound[:, :3], bound[:, 3]
    primary = _frustum_visible(centers, radii, poses, K, H, W)
    L = np.asarray(scene.sky.sun_dir, dtype=np.float64)
    # The shadow of a primitive lies on the segment from its centre down the light direction to the ground.
    lam = np.clip((scene.ground.y - centers[:, 1]) / max(-L[1], 0.05), 0.0, _SHADOW_REACH)
    mid = centers - 0.5 * lam[:, None] * L[None, :]
    shadow = primary | _frustum_visible(mid, radii + 0.5 * lam, poses, K, H, W)
    return np.nonzero(primary)[0], np.nonzero(shadow)[0]


# --------------------------------------------------------------------------------------------------------
# Ray / primitive intersections. Ray components broadcast against per-primitive [N] parameters:
# primary rays pass origins [F, 1, 1] and directions [F, P, 1]; shadow rays origins [Q, 1] and scalar
# directions. Each returns the nearest hit distance t > _EPS per (ray, primitive), +inf for a miss.
# --------------------------------------------------------------------------------------------------------
def _safe_inv(x):
    if isinstance(x, torch.Tensor):
        return 1.0 / torch.where(x.abs() < 1e-9, torch.full_like(x, 1e-9), x)
    return 1.0 / (x if abs(x) >= 1e-9 else 1e-9)


def _hit_box(o, d, p0, p1):
    ox, oy, oz = o
    ix, iy, iz = (_safe_inv(c) for c in d)
    t1 = (p0[:, 0] - ox) * ix
    t2 = (p1[:, 0] - ox) * ix
    tn = torch.minimum(t1, t2)
    tf = torch.maximum(t1, t2)
    t1 = (p0[:, 1] - oy) * iy
    t2 = (p1[:, 1] - oy) * iy
    tn = torch.maximum(tn, torch.minimum(t1, t2))
    tf = torch.minimum(tf, torch.maximum(t1, t2))
    t1 = (p0[:, 2] - oz) * iz
    t2 = (p1[:, 2] - oz) * iz
    tn = torch.maximum(tn, torch.minimum(t1, t2))
    tf = torch.minimum(tf, torch.maximum(t1, t2))
    hit = (tn <= tf) & (tn > _EPS)
    return torch.where(hit, tn, _INF)


def _hit_cylinder(o, d, p0, p1, caps: bool):
    ox, oy, oz = o
    dx, dy, dz = d
    cx, y0, cz = p0[:, 0], p0[:, 1], p0[:, 2]
    r, y1 = p1[:, 0], p1[:, 1]
    px, pz = ox - cx, oz - cz
    a = dx * dx + dz * dz
    a = a.clamp_min(1e-12) if isinstance(a, torch.Tensor) else max(a, 1e-12)
    b = px * dx + pz * dz
    c = px * px + pz * pz - r * r
    disc = b * b - a * c
    t = (-b - disc.clamp_min(0.0).sqrt()) / a
    y = oy + t * dy
    t = torch.where((disc >= 0) & (t > _EPS) & (y >= y0) & (y <= y1), t, _INF)
    if caps:  # the top disk, seen from above
        tc = (y0 - oy) * _safe_inv(dy)
        qx = px + tc * dx
        qz = pz + tc * dz
        t = torch.minimum(t, torch.where((tc > _EPS) & (qx * qx + qz * qz <= r * r), tc, _INF))
    return t


def _hit_ellipsoid(o, d, p0, p1):
    ox, oy, oz = o
    dx, dy, dz = d
    inv = 1.0 / (p1 * p1)
    px, py, pz = ox - p0[:, 0], oy - p0[:, 1], oz - p0[:, 2]
    a = (dx * dx) * inv[:, 0] + (dy * dy) * inv[:, 1] + (dz * dz) * inv[:, 2]
    b = dx * (px * inv[:, 0]) + dy * (py * inv[:, 1]) + dz * (pz * inv[:, 2])
    c = px * px * inv[:, 0] + py * py * inv[:, 1] + pz * pz * inv[:, 2] - 1.0
    disc = b * b - a * c
    t = (-b - disc.clamp_min(0.0).sqrt()) / a
    return torch.where((disc >= 0) & (t > _EPS), t, _INF)


def _hit_cone(o, d, p0, p1, caps: bool):
    ox, oy, oz = o
    dx, dy, dz = d
    r, yb = p1[:, 0], p1[:, 1]
    height = yb - p0[:, 1]
    k2 = (r / height) ** 2
    px, py, pz = ox - p0[:, 0], oy - p0[:, 1], oz - p0[:, 2]
    a = (dx * dx + dz * dz) - k2 * (dy * dy)
    b = px * dx + pz * dz - (k2 * py) * dy
    c = px * px + pz * pz - k2 * py * py
    disc = b * b - a * c
    sq = disc.clamp_min(0.0).sqrt()
    a = torch.where(a.abs() < 1e-9, torch.full_like(a, 1e-9), a) if isinstance(a, torch.Tensor) else a
    ok = disc >= 0
    best = None
    for sign in (-1.0, 1.0):
        t = (-b + sign * sq) / a
        y = py + t * dy
        tt = torch.where(ok & (t > _EPS) & (y >= 0) & (y <= height), t, _INF)
        best = tt if best is None else torch.minimum(best, tt)
    if caps:  # the base disk, seen from below
        tc = (yb - oy) * _safe_inv(dy)
        qx = px + tc * dx
        qz = pz + tc * dz
        best = torch.minimum(best, torch.where((tc > _EPS) & (qx * qx + qz * qz <= r * r), tc, _INF))
    return best


# --------------------------------------------------------------------------------------------------------
# Procedural noise (float hash: identical ops on CPU and CUDA, no int64 arithmetic)
# --------------------------------------------------------------------------------------------------------
def _frac(x):
    return x - torch.floor(x)


def _hash2(x, y):
    """Pseudo-random in [0, 1) for lattice points (Hoskins' hash without sine)."""
    a = _frac(x * 0.1031)
    b = _frac(y * 0.1031)
    dot = a * (b + 33.33) + b * (a + 33.33) + a * (a + 33.33)
    return _frac((2.0 * a + b + 3.0 * dot) * (a + dot))


def _hash3(x, y, z):
    a = _frac(x * 0.1031)
    b = _frac(y * 0.1030)
    c = _frac(z * 0.0973)
    dot = a * (b + 33.33) + b * (c + 33.33) + c * (a + 33.33)
    return _frac((a + b + 2.0 * dot) * (c + dot))


def _smooth(t):
    return t * t * (3.0 - 2.0 * t)


def _noise2(x, y):
    """Value noise in [0, 1], unit lattice."""
    fx, fy = torch.floor(x), torch.floor(y)
    ux, uy = _smooth(x - fx), _smooth(y - fy)
    h00 = _hash2(fx, fy)
    h10 = _hash2(fx + 1.0, fy)
    h01 = _hash2(fx, fy + 1.0)
    h11 = _hash2(fx + 1.0, fy + 1.0)
    top = h00 + (h10 - h00) * ux
    bot = h01 + (h11 - h01) * ux
    return top + (bot - top) * uy


def _noise3(x, y, z):
    fx, fy, fz = torch.floor(x), torch.floor(y), torch.floor(z)
    ux, uy, uz = _smooth(x - fx), _smooth(y - fy), _smooth(z - fz)
    out = None
    for dz, wz in ((0.0, 1.0 - uz), (1.0, uz)):
        h00 = _hash3(fx, fy, fz + dz)
        h10 = _hash3(fx + 1.0, fy, fz + dz)
        h01 = _hash3(fx, fy + 1.0, fz + dz)
        h11 = _hash3(fx + 1.0, fy + 1.0, fz + dz)
        top = h00 + (h10 - h00) * ux
        bot = h01 + (h11 - h01) * ux
        layer = (top + (bot - top) * uy) * wz
        out = layer if out is None else out + layer
    return out


def _aa(fw, freq):
    """Contrast kept by a pattern of `freq` cycles per world unit seen with a pixel footprint `fw` (units):
    1 while a cycle spans >= 4 pixels, fading to 0 at 1.33 pixels (a cheap stand-in for mip-mapping)."""
    return (1.5 - 2.0 * fw * freq).clamp(0.0, 1.0)


def _fbm2(x, y, fw, freq, octaves):
    """Band-limited fractal value noise around 0 (about +-0.5), `freq` cycles per unit at octave 0."""
    total = torch.zeros_like(x)
    amp, f = 0.5, freq
    norm = 0.0
    for i in range(octaves):
        total = total + amp * (_noise2(x * f + 17.0 * i, y * f - 31.0 * i) - 0.5) * _aa(fw, f)
        norm += amp
        amp *= 0.5
        f *= 2.03
    return total / norm


def _smoothstep(e0, e1, x):
    t = ((x - e0) / (e1 - e0)).clamp(0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _mix(a, b, m):
    return a + (b - a) * m


# --------------------------------------------------------------------------------------------------------
# Surfaces
# --------------------------------------------------------------------------------------------------------
def _ground_albedo(scene: Scene, x, z, fw, cst):
    """Ground colour [..., 3] at world (x, z) with pixel footprint fw."""
    gr = scene.ground
    c1, c2 = cst["ground1"], cst["ground2"]
    sc = gr.scale
    large = _fbm2(x, z, fw, 0.06 * sc, 2)
    if gr.pattern == G_GRASS:
        m = _smoothstep(-0.2, 0.2, large)
        bright = (1.0 + 0.06 * torch.sin(_TWO_PI * 0.25 * sc * x) * _aa(fw, 0.25 * sc)
                  + 0.5 * _fbm2(x, z, fw, 1.3 * sc, 3))
    elif gr.pattern == G_SAND:
        warp = 1.5 * _noise2(x * 0.25 * sc, z * 0.25 * sc)
        f = 1.1 * sc
        ripple = torch.sin(_TWO_PI * (f * z + 0.4 * f * x + warp)) * _aa(fw, f)
        m = _smoothstep(-0.25, 0.25, large)
        bright = 1.0 + 0.07 * ripple + 0.25 * _fbm2(x, z, fw, 4.0 * sc, 2)
    elif gr.pattern == G_SNOW:
        m = _smoothstep(-0.3, 0.3, large) * 0.8
        bright = 1.0 + 0.12 * _fbm2(x, z, fw, 1.5 * sc, 3)
    elif gr.pattern == G_FOREST:
        m = _smoothstep(-0.15, 0.15, 0.6 * _fbm2(x, z, fw, 0.45 * sc, 2) + 0.4 * large)
        bright = 1.0 + 0.7 * _fbm2(x, z, fw, 2.5 * sc, 3)
    elif gr.pattern == G_CITY:
        return _city_ground(gr, x, z, fw, c1, c2, cst["paint"])
    elif gr.pattern == G_CHECKER:
        parity = (torch.floor(x * sc) + torch.floor(z * sc)) % 2.0
        m = 0.5 + (parity - 0.5) * _aa(fw, 0.5 * sc)
        bright = 1.0 + 0.2 * _fbm2(x, z, fw, 2.0 * sc, 2)
    else:
        raise ValueError(f"unknown ground pattern {gr.pattern}")
    return _mix(c1, c2, m[..., None]) * bright[..., None]


def _coverage(dist, half_width, fw):
    """Anti-aliased coverage of a band |coordinate| < half_width given the signed-free distance `dist`."""
    return ((half_width - dist) / fw.clamp_min(1e-4) + 0.5).clamp(0.0, 1.0)


def _city_ground(gr, x, z, fw, asphalt, concrete, paint_col):
    rw, L, z0 = gr.road_width, gr.block_length, gr.block_offset
    ax = x.abs()
    zz = torch.remainder(z - z0 + 0.5 * L, L) - 0.5 * L          # signed distance to the nearest cross street
    az = zz.abs()
    road = torch.maximum(_coverage(ax, rw, fw), _coverage(az, rw, fw))
    grain = 1.0 + 0.5 * _fbm2(x, z, fw, 3.0, 2)
    road_col = asphalt * grain[..., None]
    # Dashed centre line along the main road, solid edge lines, zebra crossings at the cross streets.
    dash = _coverage(ax, 0.08, fw) * _coverage((torch.remainder(z, 3.0) - 0.75).abs(), 0.75, fw)
    dash = dash * (1.0 - _coverage(az, rw + 0.5, fw))
    edge = _coverage((ax - (rw - 0.3)).abs(), 0.06, fw) * (1.0 - _coverage(az, rw, fw))
    zebra = (_coverage((az - (rw + 1.0)).abs(), 0.6, fw) * _coverage(ax, rw, fw)
             * _coverage((torch.remainder(x, 1.0) - 0.5).abs(), 0.25, fw))
    paint = torch.maximum(torch.maximum(dash, edge), zebra)
    road_col = _mix(road_col, paint_col, paint[..., None])
    # Sidewalk tiles: 1-unit squares with grout lines, faint checker.
    gx = (torch.remainder(x, 1.0) - 0.5).abs()
    gz = (torch.remainder(z, 1.0) - 0.5).abs()
    grout = torch.maximum(_coverage(0.5 - gx, 0.03, fw), _coverage(0.5 - gz, 0.03, fw)) * _aa(fw, 1.0)
    parity = (torch.floor(x) + torch.floor(z)) % 2.0
    tile = 1.0 + 0.08 * (parity - 0.5) * _aa(fw, 0.5) + 0.3 * _fbm2(x, z, fw, 2.0, 2) - 0.25 * grout
    walk_col = concrete * tile[..., None]
    return _mix(walk_col, road_col, road[..., None])


def _object_albedo(pat, x, y, z, n, fw, c1, c2, scale, p0, p1, present):
    """Albedo [..., 3] and emission mask [...] of object surfaces (per-pixel gathered parameters)."""
    m = torch.zeros_like(x)
    bright = torch.ones_like(x)
    glow = torch.zeros_like(x)
    if PLAIN in present:
        sel = pat == PLAIN
        v = 1.0 + 0.3 * (_noise3(x * 2.0 * scale, y * 2.0 * scale, z * 2.0 * scale) - 0.5) * _aa(fw, 2.0 * scale)
        bright = torch.where(sel, v, bright)
    if STRIPES in present:
        sel = pat == STRIPES
        s = torch.sin(_TWO_PI * y * scale)
        v = 0.5 + (s * 1.5).clamp(-0.5, 0.5) * _aa(fw, scale)
        m = torch.where(sel, v, m)
    if BRICKS in present:
        sel = pat == BRICKS
        v_ = y * scale * 2.0
        row = torch.floor(v_)
        u_ = (x + z) * scale + 0.5 * row
        fu, fv = _frac(u_), _frac(v_)
        mortar = ((fu < 0.07) | (fv < 0.12)).float()
        a = _aa(fw, 2.0 * scale)
        m = torch.where(sel, mortar * a + 0.18 * (1.0 - a), m)
        bright = torch.where(sel, 1.0 + (_hash2(torch.floor(u_), row) - 0.5) * 0.3 * a, bright)
    if WINDOWS in present:
        sel = pat == WINDOWS
        u_ = (x + z) / 2.2
        v_ = y * scale
        fu, fv = _frac(u_), _frac(v_)
        wall = n[..., 1].abs() < 0.5
        win = ((fu > 0.22) & (fu < 0.78) & (fv > 0.3) & (fv < 0.78) & wall).float()
        a = _aa(fw, 1.0 / 2.2 * 2.0)
        cov = torch.where(wall, win * a + 0.27 * (1.0 - a), torch.zeros_like(win))
        lit = (_hash2(torch.floor(u_), torch.floor(v_)) > 0.45).float()
        m = torch.where(sel, cov, m)
        glow = torch.where(sel, cov * (lit * a + 0.55 * (1.0 - a)), glow)
        bright = torch.where(sel & wall, 1.0 + 0.15 * (lit - 0.5) * win * a, bright)
    if BARK in present:
        sel = pat == BARK
        ang = torch.atan2(z - p0[..., 2], x - p0[..., 0])
        k = torch.round(scale)
        s = torch.sin(ang * k + 2.0 * torch.sin(y * 3.0))
        freq = k / (_TWO_PI * p1[..., 0].clamp_min(0.02))
        m = torch.where(sel, 0.5 + 0.5 * s * _aa(fw, freq), m)
    if BLOTCH in present:
        sel = pat == BLOTCH
        f = scale
        nz = (0.65 * (_noise3(x * f, y * f, z * f) - 0.5) * _aa(fw, f)
              + 0.35 * (_noise3(x * 2.1 * f + 5.0, y * 2.1 * f, z * 2.1 * f) - 0.5) * _aa(fw, 2.1 * f))
        m = torch.where(sel, _smoothstep(-0.12, 0.12, nz), m)
        detail = 1.0 + 0.35 * (_noise3(x * 5.0 * f, y * 5.0 * f, z * 5.0 * f) - 0.5) * _aa(fw, 5.0 * f)
        bright = torch.where(sel, detail, bright)
    if CHECKER in present:
        sel = pat == CHECKER
        parity = (torch.floor(x * scale) + torch.floor(y * scale) + torch.floor(z * scale)) % 2.0
        m = torch.where(sel, 0.5 + (parity - 0.5) * _aa(fw, 0.5 * scale), m)
    albedo = _mix(c1, c2, m[..., None]) * bright[..., None]
    return albedo, glow


def _normals(kind, px, py, pz, p0, p1, cst):
    """Outward unit normals [..., 3] at hit points of gathered primitives."""
    p = torch.stack([px, py, pz], -1)
    # Box: the face whose normalised coordinate is largest.
    center = 0.5 * (p0 + p1)
    half = (0.5 * (p1 - p0)).clamp_min(1e-6)
    q = (p - center) / half
    aq = q.abs()
    nb = torch.where(aq >= aq.amax(-1, keepdim=True), torch.sign(q), torch.zeros_like(q))
    # Cylinder: radial, or the top disk.
    rel_x, rel_z = px - p0[..., 0], pz - p0[..., 2]
    rr = torch.sqrt(rel_x * rel_x + rel_z * rel_z).clamp_min(1e-9)
    zero = torch.zeros_like(px)
    nc = torch.stack([rel_x / rr, zero, rel_z / rr], -1)
    top = (py - p0[..., 1]) < 1e-3 * (1.0 + p1[..., 0])
    up = cst["up"].expand_as(nc)
    nc = torch.where(top[..., None], up, nc)
    # Ellipsoid: gradient of the implicit function.
    ne = (p - p0) / (p1 * p1).clamp_min(1e-12)
    # Cone: gradient of x^2 + z^2 - k^2 (y - y_apex)^2, or the base disk (facing +Y, down).
    height = (p1[..., 1] - p0[..., 1]).clamp_min(1e-6)
    k2 = (p1[..., 0] / height) ** 2
    nk = torch.stack([rel_x, -k2 * (py - p0[..., 1]), rel_z], -1)
    base = (p1[..., 1] - py) < 1e-3 * (1.0 + height)
    down = cst["down"].expand_as(nk)
    nk = torch.where(base[..., None], down, nk)
    kk = kind[..., None]
    n = torch.where(kk == BOX, nb, torch.where(kk == CYLINDER, nc, torch.where(kk == ELLIPSOID, ne, nk)))
    return n / n.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _sky(scene: Scene, dn, ox, oz, fpx, cst):
    """Sky colour [..., 3] along unit directions dn [..., 3] seen from (ox, oz); fpx: pixels per radian."""
    sky = scene.sky
    zen, hor = cst["zenith"], cst["horizon"]
    el = -dn[..., 1]
    col = _mix(hor, zen, el.clamp(0.0, 1.0).sqrt()[..., None])
    cs = (dn * cst["sun_dir"]).sum(-1)
    csp = cs.clamp_min(0.0)
    sun_col = cst["sun_color"]
    csp = csp.clamp_min(0.2)                           # below this the halo is ~0 (and no denormals)
    col = col + sun_col * (sky.sun_glow * (0.6 * csp ** 48 + 0.35 * csp ** 6))[..., None]
    if sky.sun_disk > 0:
        disk = _smoothstep(math.cos(sky.sun_disk * 1.3), math.cos(sky.sun_disk), cs)
        col = _mix(col, cst["sun_disk_color"], disk[..., None])
    if sky.clouds > 0:
        up = el.clamp_min(0.02)
        dist = 80.0 / up
        cx = ox + dist * dn[..., 0]
        cz = oz + dist * dn[..., 2]
        fw = dist / (fpx * up.clamp_min(0.1))
        nval = _fbm2(cx, cz, fw, 1.0 / 45.0, 4)
        th = 0.18 - 0.36 * sky.clouds
        alpha = _smoothstep(th, th + 0.2, nval) * _smoothstep(0.02, 0.2, el) * 0.9
        ccol = cst["cloud_color"] * (0.85 + 0.5 * nval.clamp(-0.3, 0.3))[..., None]
        col = _mix(col, ccol, alpha[..., None])
    if sky.horizon_kind in (H_MOUNTAINS, H_SKYLINE):
        phi = torch.atan2(dn[..., 0], dn[..., 2])
        e = torch.asin(el.clamp(-1.0, 1.0))
        if sky.horizon_kind == H_MOUNTAINS:
            h = torch.full_like(phi, sky.horizon_base)
            for a, f, ph in zip(sky.horizon_amps, sky.horizon_freqs, sky.horizon_phases):
                h = h + a * torch.sin(f * phi + ph)
        else:
            cells = 90.0
            idx = torch.floor((phi + math.pi) / _TWO_PI * cells)
            rnd = _hash2(idx, torch.full_like(idx, float(sky.horizon_seed % 997)))
            h = sky.horizon_base * (0.4 + 1.6 * rnd) * (rnd > 0.15).float()
        h = h.clamp_min(0.0)
        alpha = ((h - e) * fpx + 0.5).clamp(0.0, 1.0)
        rel = (e / h.clamp_min(1e-4)).clamp(0.0, 1.0)
        mcol = cst["horizon_color"] * (0.85 + 0.3 * rel)[..., None]
        mcol = _mix(mcol, cst["fog_color"], (0.45 * (1.0 - rel))[..., None])
        col = _mix(col, mcol, alpha[..., None])
    return col


# --------------------------------------------------------------------------------------------------------
# One chunk of frames
# --------------------------------------------------------------------------------------------------------
def _consts(scene: Scene, dev) -> dict[str, torch.Tensor]:
    """The scene's colours and directions as [3] tensors on `dev`, uploaded in one copy."""
    sky, gr = scene.sky, scene.ground
    named = {"ground1": gr.color1, "ground2": gr.color2, "paint": (0.9, 0.85, 0.6), "up": (0.0, -1.0, 0.0),
             "down": (0.0, 1.0, 0.0), "zenith": sky.zenith, "horizon": sky.horizon, "sun_dir": sky.sun_dir,
             "sun_color": sky.sun_color, "sun_disk_color": sky.sun_disk_color, "cloud_color": sky.cloud_color,
             "horizon_color": sky.horizon_color, "fog_color": sky.fog_color, "ambient": sky.ambient}
    table = torch.as_tensor(np.array(list(named.values()), dtype=np.float32)).to(dev)
    return {k: table[i] for i, k in enumerate(named)}


def _primitive_groups(arr, prim_idx, shadow_idx, poses):
    """(kind, indices, caps) groups for primary rays and (kind, indices) groups for shadow rays."""
    kinds = arr["kind"]
    cam_y_min = float(poses[:, 1, 3].min())
    cam_y_max = float(poses[:, 1, 3].max())
    primary, shadow = [], []
    for k in (BOX, CYLINDER, ELLIPSOID, CONE):
        idx = prim_idx[kinds[prim_idx] == k]
        if k == CYLINDER:  # caps only where a camera is above the top
            capped = arr["p0"][idx, 1] > cam_y_min
            primary += [(k, idx[capped], True), (k, idx[~capped], False)]
        elif k == CONE:    # base disks only where a camera is below the base
            capped = arr["p1"][idx, 1] < cam_y_max
            primary += [(k, idx[capped], True), (k, idx[~capped], False)]
        else:
            primary.append((k, idx, False))
        shadow.append((k, shadow_idx[kinds[shadow_idx] == k], False))
    return [g for g in primary if g[1].size], [g for g in shadow if g[1].size]


def _upload_groups(groups, dev):
    """Index arrays of all groups in one host-to-device copy (each copy from pageable memory syncs)."""
    if not groups:
        return []
    flat = torch.as_tensor(np.concatenate([g[1] for g in groups]).astype(np.int64)).to(dev)
    out, start = [], 0
    for k, idx, caps in groups:
        out.append((k, flat[start:start + idx.size], caps))
        start += idx.size
    return out


def _render_chunk(scene, arr, tables, cst, poses, K, H, W, dev, shadows, max_elements, as_float):
    F = poses.shape[0]
    P = H * W
    prim_idx, shadow_idx = _cull(scene, arr, poses, K, H, W)
    primary_groups, shadow_groups = _primitive_groups(arr, prim_idx, shadow_idx, poses)
    n_primary = sum(g[1].size for g in primary_groups)
    uploaded = _upload_groups(primary_groups + (shadow_groups if shadows else []), dev)
    primary_groups, shadow_groups = uploaded[:len(primary_groups)], uploaded[len(primary_groups):]
    cam = torch.as_tensor(np.concatenate([poses.reshape(F, 16), K], 1).astype(np.float32)).to(dev)
    c2w = cam[:, :16].view(F, 4, 4)
    Kt = cam[:, 16:]
    R = c2w[:, :3, :3]
    o = c2w[:, :3, 3]
    v, u = torch.meshgrid(torch.arange(H, device=dev, dtype=torch.float32),
                          torch.arange(W, device=dev, dtype=torch.float32), indexing="ij")
    u = u.reshape(1, P)
    v = v.reshape(1, P)
    xc = (u - Kt[:, 2:3]) / Kt[:, 0:1]                                            # [F, P]
    yc = (v - Kt[:, 3:4]) / Kt[:, 1:2]
    # World directions R @ (xc, yc, 1), written out so no TF32 matmul can touch them.
    d = [xc * R[:, i, 0:1] + yc * R[:, i, 1:2] + R[:, i, 2:3] for i in range(3)]    # 3 x [F, P]

    # ---- primary visibility ---------------------------------------------------------------------------
    t_obj = torch.full((F, P), _INF, device=dev)
    id_obj = torch.full((F, P), -1, dtype=torch.long, device=dev)
    o3 = [o[:, i].view(F, 1, 1) for i in range(3)]
    d3 = [c.unsqueeze(-1) for c in d]
    for k, gid, caps in primary_groups:
        p0, p1 = tables["p0"][gid], tables["p1"][gid]
        # Split big primitive sets so the [F, P, n] intermediates stay under max_elements.
        step = max(1, max_elements // (F * P))
        for s0 in range(0, gid.numel(), step):
            sl = slice(s0, s0 + step)
            if k == BOX:
                t = _hit_box(o3, d3, p0[sl], p1[sl])
            elif k == CYLINDER:
                t = _hit_cylinder(o3, d3, p0[sl], p1[sl], caps)
            elif k == ELLIPSOID:
                t = _hit_ellipsoid(o3, d3, p0[sl], p1[sl])
            else:
                t = _hit_cone(o3, d3, p0[sl], p1[sl], caps)
            tm, am = t.min(-1)
            upd = tm < t_obj
            t_obj = torch.where(upd, tm, t_obj)
            id_obj = torch.where(upd, gid[sl][am], id_obj)
    g = scene.ground.y
    dy = d[1]
    t_gnd = torch.where(dy > 1e-6, (g - o[:, 1:2]) / dy.clamp_min(1e-6), _INF)
    is_obj = t_obj < t_gnd
    t_hit = torch.minimum(t_obj, t_gnd)
    is_sky = ~torch.isfinite(t_hit)
    t_s = torch.where(is_sky, torch.zeros_like(t_hit), t_hit)

    # ---- surface attributes (per pixel, flattened; each surface type shaded on its own pixels only) ------
    Q = F * P
    is_obj, is_sky = is_obj.reshape(Q), is_sky.reshape(Q)
    is_gnd = ~is_obj & ~is_sky
    # One host sync: the three index sets, so object / ground / sky shading skip the other pixels.
    i_obj, i_gnd, i_sky = (m.nonzero().squeeze(1) for m in (is_obj, is_gnd, is_sky))
    t_s = t_s.reshape(Q)
    ox, oy, oz = (o[:, i:i + 1].expand(F, P).reshape(Q) for i in range(3))
    dvec = torch.stack(d, -1).reshape(Q, 3)
    px, py, pz = ox + t_s * dvec[:, 0], oy + t_s * dvec[:, 1], oz + t_s * dvec[:, 2]
    dlen = dvec.norm(dim=-1)
    dn = dvec / dlen[:, None]
    fpx = Kt[:, 0:1].expand(F, P).reshape(Q)                           # pixels per unit tangent ~ per radian
    dist = t_s * dlen
    gid = id_obj.reshape(Q)[i_obj]
    kind, p0, p1 = tables["kind"][gid], tables["p0"][gid], tables["p1"][gid]
    n = cst["up"].expand(Q, 3).clone()
    n[i_obj] = _normals(kind, px[i_obj], py[i_obj], pz[i_obj], p0, p1, cst)
    n = torch.where(((n * dvec).sum(-1) > 0)[:, None], -n, n)          # face the viewer
    cos_v = (n * dn).sum(-1).abs()
    fw = dist / (fpx * cos_v.clamp_min(0.12))                          # pixel footprint in world units
    albedo = torch.zeros(Q, 3, device=dev)
    emission = torch.zeros(Q, 3, device=dev)
    if i_obj.numel():
        no, fo = n[i_obj], fw[i_obj]
        # Textures read a point just inside the surface so box faces never sit on a lattice boundary.
        sx, sy, sz = (c[i_obj] - 0.01 * no[:, j] for j, c in enumerate((px, py, pz)))
        present = {int(v) for v in np.unique(arr["pattern"][prim_idx])} if n_primary else set()
        pat = tables["pattern"][gid]
        alb_obj, glow = _object_albedo(pat, sx, sy, sz, no, fo, tables["color1"][gid], tables["color2"][gid],
                                       tables["scale"][gid], p0, p1, present)
        albedo[i_obj] = alb_obj
        emis = tables["emissive"][gid] * torch.where(pat == WINDOWS, glow, torch.ones_like(glow))
        emission[i_obj] = emis[:, None] * tables["color2"][gid]
    if i_gnd.numel():
        albedo[i_gnd] = _ground_albedo(scene, px[i_gnd], pz[i_gnd], fw[i_gnd], cst)

    # ---- lighting ---------------------------------------------------------------------------------------
    sky = scene.sky
    lam = (n * cst["sun_dir"]).sum(-1).clamp_min(0.0)
    lam = torch.where(is_sky, torch.zeros_like(lam), lam)
    if shadows and sky.shadows > 0 and shadow_groups:
        vis = _shadow_visibility(scene, tables, shadow_groups, px, py, pz, n, lam > 0, max_elements)
        lam = lam * (1.0 - sky.shadows * (1.0 - vis))
    ambient = cst["ambient"] * (0.55 + 0.45 * (-n[:, 1]))[:, None]
    col = albedo * (ambient + cst["sun_color"] * lam[:, None]) + emission
    fog = torch.exp(-(sky.fog_density * dist).clamp_max(60.0))[:, None]
    col = col * fog + cst["fog_color"] * (1.0 - fog)
    if i_sky.numel():
        col[i_sky] = _sky(scene, dn[i_sky], ox[i_sky], oz[i_sky], fpx[i_sky], cst)
    col = col.view(F, H, W, 3)
    rgb = col.clamp(0.0, 1.0) if as_float else _to_uint8(col)
    depth = torch.where(is_sky, _INF, t_hit.reshape(Q)).view(F, H, W)
    return rgb, depth


def _shadow_visibility(scene, tables, groups, px, py, pz, n, need, max_elements):
    """[F, P] 1 where the sun is visible from the surface point, 0 where a primitive blocks it."""
    vis = torch.ones_like(px)
    flat = need.reshape(-1).nonzero().squeeze(-1)      # one host sync per chunk: skip sky and unlit pixels
    if flat.numel() == 0:
        return vis
    L = scene.sky.sun_dir
    q = [(c.reshape(-1)[flat] + 0.02 * n[:, i][flat]) for i, c in enumerate((px, py, pz))]
    blocked = torch.zeros(flat.numel(), dtype=torch.bool, device=px.device)
    for k, gid, _ in groups:
        p0, p1 = tables["p0"][gid], tables["p1"][gid]
        rows = max(1, max_elements // gid.numel())
        for r0 in range(0, flat.numel(), rows):
            o = [c[r0:r0 + rows, None] for c in q]
            if k == BOX:
                t = _hit_box(o, L, p0, p1)
            elif k == CYLINDER:
                t = _hit_cylinder(o, L, p0, p1, False)
            elif k == ELLIPSOID:
                t = _hit_ellipsoid(o, L, p0, p1)
            else:
                t = _hit_cone(o, L, p0, p1, False)
            blocked[r0:r0 + rows] |= torch.isfinite(t).any(-1)
    vis.view(-1)[flat] = (~blocked).float()
    return vis


# --------------------------------------------------------------------------------------------------------
# Benchmark / preview: python -m runtime.world.render --device cuda [--out sheet.png]
# --------------------------------------------------------------------------------------------------------
def _main(argv=None) -> None:
    import argparse
    import json
    import time

    from .dataset import generate_clip

    ap = argparse.ArgumentParser(description="Render random clips; print frames/s; optionally save a sheet.")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--clips", type=int, default=4)
    ap.add_argument("--frames", type=int, default=25)
    ap.add_argument("--height", type=int, default=144)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-shadows", action="store_true")
    ap.add_argument("--out", default=None, help="PNG contact sheet: first / middle / last frame of each clip")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    generate_clip(args.seed, 9, args.height, args.width, dev)  # warm-up (allocator, kernels)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    rows = []
    t0 = time.perf_counter()
    for i in range(args.clips):
        clip = generate_clip(args.seed + i, args.frames, args.height, args.width, dev, shadows=not args.no_shadows)
        rows.append(clip)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    total = args.clips * args.frames
    report = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
              "threads": torch.get_num_threads(), "frames": total, "seconds": round(dt, 3),
              "frames_per_s": round(total / dt, 1), "size": [args.height, args.width],
              "shadows": not args.no_shadows}
    print(json.dumps(report))
    if args.out:
        from PIL import Image

        picks = [0, args.frames // 2, args.frames - 1]
        sheet = torch.cat([torch.cat([c["frames"][j].cpu() for j in picks], 1) for c in rows], 0)
        Image.fromarray(sheet.numpy()).save(args.out)
        for i, c in enumerate(rows):
            print(i, c["caption"], "|", c["actions"][:80])


if __name__ == "__main__":
    _main()
