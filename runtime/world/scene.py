"""Procedural 3D worlds: analytic primitives on a flat ground plane, a sky, a sun and fog.

Axes are OpenCV world axes (+X right, +Y down, +Z forward, the first camera at the origin looking along +Z),
so the ground is the plane y = `ground_y` > 0 and "up" is -Y: an object of height h standing on the ground
spans y in [ground_y - h, ground_y].

A `Scene` is a flat list of primitives plus ground / sky parameters, all numpy (no torch here, so the
trajectory code and the tests can reason about a scene without a device). `Scene.random(seed)` builds a
biome (meadow, forest, desert, snow, city) at a time of day (day, sunset, night) deterministically from the
seed; `runtime.world.render.render` draws it.

Primitive encodings (the renderer reads `Scene.arrays()`):

=========  ===============================  ===============================
kind       p0                               p1
=========  ===============================  ===============================
BOX        (xmin, ymin, zmin)               (xmax, ymax, zmax)
CYLINDER   (cx, y_top, cz)                  (radius, y_bottom, 0)   vertical, capped at y_top
ELLIPSOID  (cx, cy, cz)                     (rx, ry, rz)
CONE       apex (cx, y_apex, cz)            (base radius, y_base, 0)  vertical, apex up, capped at y_base
=========  ===============================  ===============================
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

BOX, CYLINDER, ELLIPSOID, CONE = 0, 1, 2, 3
KIND_NAMES = ("box", "cylinder", "ellipsoid", "cone")

# Surface patterns of objects (evaluated per hit point in world coordinates by the renderer).
PLAIN, STRIPES, BRICKS, WINDOWS, BARK, BLOTCH, CHECKER = range(7)
# Ground patterns.
G_GRASS, G_SAND, G_SNOW, G_FOREST, G_CITY, G_CHECKER = range(6)
# Horizon silhouettes drawn in the sky (at infinity, so they move with rotation only).
H_NONE, H_MOUNTAINS, H_SKYLINE = range(3)

BIOMES = ("meadow", "forest", "desert", "snow", "city")
TIMES_OF_DAY = ("day", "sunset", "night")

CLEAR_RADIUS = 1.5
"""No object footprint comes closer than this (world units, horizontally) to the start position."""
FRONT_CLEAR = 3.0
"""... nor closer than this inside the +-35 degree sector in front of the first camera."""
_FRONT_HALF_ANGLE = math.radians(35.0)

Color = tuple[float, float, float]


@dataclass
class Sky:
    """Sky, light and atmosphere. Colours are display-referred RGB in [0, 1]; directions are world vectors."""

    zenith: Color = (0.25, 0.45, 0.85)
    horizon: Color = (0.72, 0.82, 0.95)
    sun_dir: Color = (0.3, -0.8, 0.5)
    """Unit vector toward the sun (or moon); up is -Y."""
    sun_color: Color = (1.0, 0.96, 0.88)
    """Direct light (multiplies Lambert's cosine)."""
    ambient: Color = (0.38, 0.42, 0.50)
    """Sky light on an upward-facing surface."""
    fog_color: Color = (0.72, 0.82, 0.95)
    fog_density: float = 0.012
    """Extinction per world unit: a point at distance s keeps exp(-density * s) of its colour."""
    sun_disk: float = 0.02
    """Angular radius of the visible sun / moon disk in radians (0: none)."""
    sun_disk_color: Color = (1.0, 0.98, 0.9)
    sun_glow: float = 0.5
    """Strength of the halo around the sun."""
    clouds: float = 0.4
    """Cloud coverage in [0, 1]."""
    cloud_color: Color = (1.0, 1.0, 1.0)
    horizon_kind: int = H_MOUNTAINS
    horizon_color: Color = (0.45, 0.52, 0.62)
    horizon_base: float = 0.05
    """Mean elevation (radians) of the mountains / skyline."""
    horizon_amps: tuple[float, ...] = (0.03, 0.015, 0.008)
    horizon_freqs: tuple[float, ...] = (3.0, 7.0, 13.0)
    """Integer frequencies in azimuth (so the silhouette is continuous all around)."""
    horizon_phases: tuple[float, ...] = (0.0, 1.0, 2.0)
    horizon_seed: int = 0
    shadows: float = 1.0
    """Strength of the sun's shadows in [0, 1] (lower at night)."""


@dataclass
class Ground:
    """The ground plane y = `y` (> 0: below the first camera) and its texture."""

    y: float = 1.6
    pattern: int = G_GRASS
    color1: Color = (0.30, 0.52, 0.20)
    color2: Color = (0.42, 0.60, 0.24)
    scale: float = 1.0
    """Frequency multiplier of the pattern."""
    road_width: float = 3.5
    """G_CITY: half width of the roads (the main road is |x| < road_width)."""
    block_length: float = 30.0
    """G_CITY: distance between cross streets along Z."""
    block_offset: float = 12.0
    """G_CITY: z of the first cross street's centre line."""


@dataclass
class _Prim:
    kind: int
    p0: tuple[float, float, float]
    p1: tuple[float, float, float]
    color1: Color
    color2: Color
    pattern: int
    scale: float
    emissive: float


@dataclass
class Scene:
    """A procedural world: primitives, ground, sky. Build one with `Scene.random(seed)` or by hand.

    Attributes:
        seed: the seed it was generated from (None for hand-built scenes).
        biome, time_of_day: names from `BIOMES` / `TIMES_OF_DAY` ("custom" for hand-built scenes).
        caption: short description, e.g. "a snowy forest at sunset".
        ground, sky: `Ground` and `Sky` parameters.
        region_radius: objects lie within this horizontal distance of the origin; trajectories stay inside.
    """

    seed: int | None = None
    biome: str = "custom"
    time_of_day: str = "day"
    caption: str = ""
    ground: Ground = field(default_factory=Ground)
    sky: Sky = field(default_factory=Sky)
    region_radius: float = 25.0
    _prims: list[_Prim] = field(default_factory=list, repr=False)
    _packed: dict | None = field(default=None, repr=False, compare=False)
    _device_cache: dict = field(default_factory=dict, repr=False, compare=False)

    # ---- building ---------------------------------------------------------------------------------------
    def _add(self, kind, p0, p1, color, color2, pattern, scale, emissive) -> int:
        c1 = tuple(float(c) for c in color)
        c2 = c1 if color2 is None else tuple(float(c) for c in color2)
        self._prims.append(_Prim(kind, tuple(float(v) for v in p0), tuple(float(v) for v in p1), c1, c2,
                                 int(pattern), float(scale), float(emissive)))
        self._packed = None
        self._device_cache.clear()
        return len(self._prims) - 1

    def add_box(self, bmin, bmax, color, color2=None, pattern=PLAIN, scale=1.0, emissive=0.0) -> int:
        """Axis-aligned box between corners `bmin` and `bmax` (world units, Y down). Returns its index."""
        lo = np.minimum(bmin, bmax)
        hi = np.maximum(bmin, bmax)
        return self._add(BOX, lo, hi, color, color2, pattern, scale, emissive)

    def add_cylinder(self, center_xz, y_top, y_bottom, radius, color, color2=None, pattern=PLAIN, scale=1.0,
                     emissive=0.0) -> int:
        """Vertical cylinder around (x, z) = `center_xz` from `y_top` up-side (smaller y) to `y_bottom`."""
        y0, y1 = min(y_top, y_bottom), max(y_top, y_bottom)
        return self._add(CYLINDER, (center_xz[0], y0, center_xz[1]), (radius, y1, 0.0), color, color2, pattern,
                         scale, emissive)

    def add_ellipsoid(self, center, radii, color, color2=None, pattern=PLAIN, scale=1.0, emissive=0.0) -> int:
        """Axis-aligned ellipsoid (a sphere when the three radii are equal)."""
        return self._add(ELLIPSOID, center, radii, color, color2, pattern, scale, emissive)

    def add_cone(self, apex, y_base, radius, color, color2=None, pattern=PLAIN, scale=1.0, emissive=0.0) -> int:
        """Vertical cone with its apex at `apex` = (x, y, z) and a base disk of `radius` at y = `y_base`
        (y_base > apex y: the apex points up)."""
        if y_base <= apex[1]:
            raise ValueError("add_cone: y_base must be below the apex (larger y: +Y is down)")
        return self._add(CONE, apex, (radius, y_base, 0.0), color, color2, pattern, scale, emissive)

    @property
    def num_objects(self) -> int:
        """Number of primitives."""
        return len(self._prims)

    # ---- packed views -----------------------------------------------------------------------------------
    def arrays(self) -> dict[str, np.ndarray]:
        """Primitives as arrays: kind [N] int64, p0 / p1 / color1 / color2 [N, 3] float32, pattern [N] int64,
        scale / emissive [N] float32, bound [N, 4] float32 (bounding sphere centre and radius)."""
        if self._packed is None:
            n = len(self._prims)
            out = {
                "kind": np.array([p.kind for p in self._prims], dtype=np.int64).reshape(n),
                "p0": np.array([p.p0 for p in self._prims], dtype=np.float32).reshape(n, 3),
                "p1": np.array([p.p1 for p in self._prims], dtype=np.float32).reshape(n, 3),
                "color1": np.array([p.color1 for p in self._prims], dtype=np.float32).reshape(n, 3),
                "color2": np.array([p.color2 for p in self._prims], dtype=np.float32).reshape(n, 3),
                "pattern": np.array([p.pattern for p in self._prims], dtype=np.int64).reshape(n),
                "scale": np.array([p.scale for p in self._prims], dtype=np.float32).reshape(n),
                "emissive": np.array([p.emissive for p in self._prims], dtype=np.float32).reshape(n),
            }
            lo, hi = _aabb(out["kind"], out["p0"], out["p1"])
            center = 0.5 * (lo + hi)
            radius = 0.5 * np.linalg.norm(hi - lo, axis=-1)
            out["bound"] = np.concatenate([center, radius[:, None]], axis=-1).astype(np.float32)
            out["aabb_min"], out["aabb_max"] = lo.astype(np.float32), hi.astype(np.float32)
            self._packed = out
        return self._packed

    def clearance(self, points, *, height_margin: float = 0.3) -> np.ndarray:
        """Horizontal distance from each point to the nearest object that overlaps the point's height.

        Args:
            points: [M, 3] world positions (e.g. camera centres).
            height_margin: an object counts when its vertical extent comes within this of the point's y.

        Returns:
            [M] float64 distances (negative inside an object's footprint; +inf with no object in range).
        """
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        arr = self.arrays()
        if arr["kind"].size == 0:
            return np.full(len(pts), np.inf)
        kind, p0, p1 = arr["kind"], arr["p0"].astype(np.float64), arr["p1"].astype(np.float64)
        lo, hi = arr["aabb_min"].astype(np.float64), arr["aabb_max"].astype(np.float64)
        px, py, pz = pts[:, 0:1], pts[:, 1:2], pts[:, 2:3]  # [M, 1]
        in_band = (py >= lo[None, :, 1] - height_margin) & (py <= hi[None, :, 1] + height_margin)
        # Boxes: distance to the rectangle; the round kinds: distance to the circle at the point's height.
        dxb = np.maximum(np.maximum(lo[None, :, 0] - px, px - hi[None, :, 0]), 0.0)
        dzb = np.maximum(np.maximum(lo[None, :, 2] - pz, pz - hi[None, :, 2]), 0.0)
        inside = (px > lo[None, :, 0]) & (px < hi[None, :, 0]) & (pz > lo[None, :, 2]) & (pz < hi[None, :, 2])
        depth = np.minimum(np.minimum(px - lo[None, :, 0], hi[None, :, 0] - px),
                           np.minimum(pz - lo[None, :, 2], hi[None, :, 2] - pz))
        d_box = np.where(inside, -depth, np.hypot(dxb, dzb))
        cx, cz = p0[None, :, 0], p0[None, :, 2]
        r_round = np.where(kind == ELLIPSOID, np.maximum(p1[:, 0], p1[:, 2]), p1[:, 0])[None, :]
        d_round = np.hypot(px - cx, pz - cz) - r_round
        dist = np.where((kind == BOX)[None, :], d_box, d_round)
        dist = np.where(in_band, dist, np.inf)
        return dist.min(axis=1)

    def to_device(self, device):
        """Torch copies of `arrays()` and the ground / sky parameters on `device` (cached per device)."""
        key = str(device)
        if key not in self._device_cache:
            import torch

            arr = self.arrays()
            if arr["kind"].size == 0:  # one inert row so per-pixel gathers stay valid (nothing is culled in)
                arr = {k: np.zeros((1, *v.shape[1:]), dtype=v.dtype) for k, v in arr.items()}
                arr["p1"][:] = 1.0
            dev = {k: torch.as_tensor(v).to(device) for k, v in arr.items()}
            self._device_cache[key] = dev
        return self._device_cache[key]

    # ---- random worlds ----------------------------------------------------------------------------------
    @classmethod
    def random(cls, seed: int, biome: str | None = None, time_of_day: str | None = None) -> Scene:
        """A random world, fully determined by (seed, biome, time_of_day).

        Args:
            seed: any non-negative int.
            biome: one of `BIOMES`, or None to draw it from the seed.
            time_of_day: one of `TIMES_OF_DAY`, or None to draw it from the seed (day most often).

        Returns:
            a Scene with about 30-80 objects (composite objects such as trees count once) within
            `region_radius` of the origin, none within `CLEAR_RADIUS` of the start position.
        """
        rng = np.random.Generator(np.random.PCG64([int(seed) & 0xFFFFFFFF, int(seed) >> 32, 0x5CE4E]))
        if biome is None:
            biome = BIOMES[int(rng.integers(len(BIOMES)))]
        else:
            rng.integers(len(BIOMES))  # keep the stream aligned so a forced biome changes nothing else
        if time_of_day is None:
            time_of_day = TIMES_OF_DAY[int(rng.choice(3, p=[0.6, 0.25, 0.15]))]
        else:
            rng.choice(3, p=[0.6, 0.25, 0.15])
        if biome not in BIOMES:
            raise ValueError(f"unknown biome {biome!r} (expected one of {', '.join(BIOMES)})")
        if time_of_day not in TIMES_OF_DAY:
            raise ValueError(f"unknown time of day {time_of_day!r} (expected one of {', '.join(TIMES_OF_DAY)})")
        scene = cls(seed=int(seed), biome=biome, time_of_day=time_of_day)
        scene.ground.y = float(rng.uniform(1.3, 1.9))
        scene.sky = _make_sky(rng, biome, time_of_day)
        place = _Placer(rng, scene.region_radius)
        _BIOME_BUILDERS[biome](scene, rng, place)
        scene.caption = _caption(rng, scene)
        return scene


def _aabb(kind: np.ndarray, p0: np.ndarray, p1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned bounds [N, 3] x 2 of packed primitives."""
    lo = np.empty_like(p0)
    hi = np.empty_like(p0)
    box, cyl, ell, cone = (kind == k for k in (BOX, CYLINDER, ELLIPSOID, CONE))
    lo[box], hi[box] = p0[box], p1[box]
    for m in (cyl, cone):
        r = p1[m, 0]
        lo[m] = np.stack([p0[m, 0] - r, p0[m, 1], p0[m, 2] - r], -1)
        hi[m] = np.stack([p0[m, 0] + r, p1[m, 1], p0[m, 2] + r], -1)
    lo[ell], hi[ell] = p0[ell] - p1[ell], p0[ell] + p1[ell]
    return lo, hi


# --------------------------------------------------------------------------------------------------------
# Sky and light per time of day
# --------------------------------------------------------------------------------------------------------
def _jitter(rng, color, amount=0.04) -> Color:
    return tuple(float(np.clip(c + rng.uniform(-amount, amount), 0.0, 1.0)) for c in color)


def _sun_vector(elevation: float, azimuth: float) -> Color:
    # Azimuth 0 = +Z (ahead of the first camera), positive toward +X; up is -Y.
    ce = math.cos(elevation)
    return (math.sin(azimuth) * ce, -math.sin(elevation), math.cos(azimuth) * ce)


def _make_sky(rng, biome: str, tod: str) -> Sky:
    sky = Sky()
    az = float(rng.uniform(-math.pi, math.pi))
    if tod == "day":
        elev = math.radians(rng.uniform(30, 70))
        sky.zenith = _jitter(rng, (0.22, 0.42, 0.82))
        sky.horizon = _jitter(rng, (0.70, 0.80, 0.93))
        sky.sun_color = _jitter(rng, (1.0, 0.95, 0.86), 0.03)
        sky.ambient = _jitter(rng, (0.36, 0.40, 0.48), 0.03)
        sky.sun_disk_color = (1.0, 0.98, 0.92)
        sky.fog_density = float(rng.uniform(0.006, 0.018))
        sky.clouds = float(rng.uniform(0.2, 0.7))
        sky.cloud_color = (0.97, 0.97, 0.98)
        sky.shadows = 1.0
        sky.sun_glow = 0.45
    elif tod == "sunset":
        elev = math.radians(rng.uniform(3, 12))
        # Half of the sunsets face the camera so the sun and the glow are in view.
        if rng.random() < 0.5:
            az = float(rng.uniform(-0.6, 0.6))
        sky.zenith = _jitter(rng, (0.18, 0.22, 0.45))
        sky.horizon = _jitter(rng, (0.98, 0.58, 0.32))
        sky.sun_color = _jitter(rng, (1.0, 0.62, 0.32), 0.03)
        sky.ambient = _jitter(rng, (0.30, 0.26, 0.34), 0.03)
        sky.sun_disk_color = (1.0, 0.82, 0.55)
        sky.fog_density = float(rng.uniform(0.01, 0.022))
        sky.clouds = float(rng.uniform(0.2, 0.6))
        sky.cloud_color = (1.0, 0.66, 0.5)
        sky.shadows = 0.85
        sky.sun_glow = 0.9
    else:  # night: a moon, dark blue ambient, lit windows and lamps
        elev = math.radians(rng.uniform(25, 60))
        sky.zenith = _jitter(rng, (0.01, 0.02, 0.07), 0.01)
        sky.horizon = _jitter(rng, (0.06, 0.09, 0.17), 0.02)
        sky.sun_color = _jitter(rng, (0.34, 0.38, 0.52), 0.03)
        sky.ambient = _jitter(rng, (0.15, 0.17, 0.26), 0.02)
        sky.sun_disk_color = (0.92, 0.94, 1.0)
        sky.fog_density = float(rng.uniform(0.012, 0.03))
        sky.clouds = float(rng.uniform(0.1, 0.5))
        sky.cloud_color = (0.16, 0.18, 0.25)
        sky.shadows = 0.6
        sky.sun_glow = 0.15
    sky.sun_dir = _sun_vector(elev, az)
    sky.sun_disk = float(rng.uniform(0.02, 0.035))
    sky.fog_color = sky.horizon
    if biome == "desert":
        sky.fog_density *= 0.6
        sky.clouds *= 0.4
    if biome == "snow" and tod == "day":
        sky.horizon = _jitter(rng, (0.82, 0.86, 0.92), 0.02)
        sky.fog_color = sky.horizon
    n = 4
    sky.horizon_kind = H_SKYLINE if biome == "city" else H_MOUNTAINS
    sky.horizon_base = float(rng.uniform(0.02, 0.07))
    sky.horizon_freqs = tuple(float(f) for f in rng.integers(2, 16, size=n))
    sky.horizon_amps = tuple(float(a) for a in rng.uniform(0.004, 0.035, size=n) / np.arange(1, n + 1) ** 0.5)
    sky.horizon_phases = tuple(float(p) for p in rng.uniform(0, 2 * math.pi, size=n))
    sky.horizon_seed = int(rng.integers(1 << 20))
    base = {"meadow": (0.42, 0.50, 0.56), "forest": (0.30, 0.40, 0.38), "desert": (0.70, 0.50, 0.38),
            "snow": (0.80, 0.84, 0.92), "city": (0.42, 0.44, 0.50)}[biome]
    if tod == "night":
        base = tuple(0.25 * c for c in base)
    elif tod == "sunset":
        base = tuple(c * m for c, m in zip(base, (0.8, 0.55, 0.55)))
    sky.horizon_color = _jitter(rng, base, 0.03)
    return sky


# --------------------------------------------------------------------------------------------------------
# Placement
# --------------------------------------------------------------------------------------------------------
class _Placer:
    """Rejection sampling of non-overlapping footprint circles, keeping the start area clear."""

    def __init__(self, rng, radius: float):
        self.rng = rng
        self.radius = radius
        self.circles: list[tuple[float, float, float]] = []

    def ok(self, x: float, z: float, r: float, spacing: float = 0.4) -> bool:
        d0 = math.hypot(x, z)
        if d0 - r < CLEAR_RADIUS:
            return False
        # Keep the view of the first frame open: nothing right in front of the camera.
        if d0 - r < FRONT_CLEAR and z > 0 and abs(math.atan2(x, z)) < _FRONT_HALF_ANGLE + r / max(d0, 1e-6):
            return False
        for cx, cz, cr in self.circles:
            if (x - cx) ** 2 + (z - cz) ** 2 < (r + cr + spacing) ** 2:
                return False
        return True

    def claim(self, x: float, z: float, r: float) -> None:
        self.circles.append((x, z, r))

    def sample(self, r: float, *, rmin: float = 0.0, rmax: float | None = None, front: bool = False,
               spacing: float = 0.4, tries: int = 40) -> tuple[float, float] | None:
        """A free position for a footprint of radius `r`, or None after `tries` rejections.

        front: draw within +-55 degrees of +Z (in view of the first camera) instead of all around.
        """
        rmax = self.radius if rmax is None else rmax
        for _ in range(tries):
            d = math.sqrt(self.rng.uniform(rmin ** 2, rmax ** 2))
            a = self.rng.uniform(-0.96, 0.96) if front else self.rng.uniform(-math.pi, math.pi)
            x, z = d * math.sin(a), d * math.cos(a)
            if self.ok(x, z, r, spacing):
                self.claim(x, z, r)
                return x, z
        return None


def _populate(scene: Scene, rng, place: _Placer, table, count: int, front_fraction: float = 0.35) -> None:
    """Place `count` objects drawn from `table` = [(weight, builder(scene, rng, x, z) , footprint_r)]."""
    weights = np.array([t[0] for t in table], dtype=np.float64)
    weights /= weights.sum()
    for _ in range(count):
        _, build, fr = table[int(rng.choice(len(table), p=weights))]
        r = float(fr(rng)) if callable(fr) else float(fr)
        front = rng.random() < front_fraction
        pos = place.sample(r, rmin=2.5 if front else 0.0, rmax=16.0 if front else None, front=front)
        if pos is not None:
            build(scene, rng, pos[0], pos[1], r)


# --------------------------------------------------------------------------------------------------------
# Object builders: each takes (scene, rng, x, z, footprint radius) and adds one or a few primitives.
# --------------------------------------------------------------------------------------------------------
def _shade(rng, color, amount=0.06) -> Color:
    k = rng.uniform(1 - amount * 2, 1 + amount * 2)
    return tuple(float(np.clip(c * k + rng.uniform(-amount, amount) * 0.5, 0, 1)) for c in color)


_BARK = (0.36, 0.25, 0.16)
_BARK2 = (0.25, 0.17, 0.11)


def _round_tree(scene, rng, x, z, r, green=(0.22, 0.48, 0.16), green2=(0.16, 0.36, 0.12)):
    g = scene.ground.y
    crown = r
    trunk_h = rng.uniform(1.2, 2.4) * (0.6 + 0.4 * crown)
    trunk_r = rng.uniform(0.12, 0.22) * (0.7 + 0.3 * crown)
    cy = g - trunk_h - crown * 0.75
    scene.add_cylinder((x, z), cy, g, trunk_r, _shade(rng, _BARK), _BARK2, BARK, 6.0)
    scene.add_ellipsoid((x, cy, z), (crown, crown * rng.uniform(0.8, 1.25), crown), _shade(rng, green),
                        _shade(rng, green2), BLOTCH, rng.uniform(0.9, 1.6))


def _pine(scene, rng, x, z, r, green=(0.12, 0.34, 0.16), green2=(0.08, 0.24, 0.12), snowy=False):
    g = scene.ground.y
    trunk_h = rng.uniform(0.5, 1.0)
    scene.add_cylinder((x, z), g - trunk_h - 0.3, g, rng.uniform(0.12, 0.2), _shade(rng, _BARK), _BARK2, BARK, 6.0)
    height = rng.uniform(3.0, 6.5) * (0.5 + 0.5 * r / 1.4)
    tiers = int(rng.integers(2, 4))
    base = g - trunk_h
    c1 = (0.88, 0.9, 0.95) if snowy else _shade(rng, green)
    c2 = _shade(rng, green2)
    for i in range(tiers):
        frac = i / tiers
        rad = r * (1.0 - 0.28 * i)
        y_base = base - height * frac * 0.8
        apex = y_base - height * (1.0 - frac * 0.55) / (1.0 + 0.3 * i)
        scene.add_cone((x, apex, z), y_base, rad, c1, c2, BLOTCH, rng.uniform(1.0, 2.0))


def _rock(scene, rng, x, z, r, color=(0.50, 0.50, 0.48), color2=(0.38, 0.38, 0.37)):
    g = scene.ground.y
    ry = r * rng.uniform(0.4, 0.9)
    scene.add_ellipsoid((x, g - ry * rng.uniform(0.3, 0.7), z), (r, ry, r * rng.uniform(0.6, 1.0)),
                        _shade(rng, color), _shade(rng, color2), BLOTCH, rng.uniform(0.8, 2.0))


def _bush(scene, rng, x, z, r, color=(0.20, 0.42, 0.14), color2=(0.30, 0.50, 0.18)):
    g = scene.ground.y
    scene.add_ellipsoid((x, g - r * 0.45, z), (r, r * 0.75, r), _shade(rng, color), _shade(rng, color2),
                        BLOTCH, rng.uniform(1.5, 3.0))


_WALLS = ((0.86, 0.82, 0.72), (0.78, 0.36, 0.28), (0.92, 0.92, 0.88), (0.70, 0.62, 0.48), (0.55, 0.62, 0.70),
          (0.85, 0.75, 0.50))
_ROOFS = ((0.55, 0.20, 0.16), (0.30, 0.30, 0.34), (0.42, 0.28, 0.18), (0.20, 0.30, 0.42))


def _house(scene, rng, x, z, r, snowy=False):
    g = scene.ground.y
    hx, hz = r * rng.uniform(0.5, 0.6), r * rng.uniform(0.5, 0.6)
    h = rng.uniform(2.2, 3.5)
    wall = _shade(rng, _WALLS[int(rng.integers(len(_WALLS)))])
    pattern = int(rng.choice([BRICKS, STRIPES, PLAIN]))
    scene.add_box((x - hx, g - h, z - hz), (x + hx, g, z + hz), wall, _shade(rng, wall, 0.1) if pattern != BRICKS
                  else (0.85, 0.83, 0.8), pattern, rng.uniform(2.5, 4.5))
    roof = (0.92, 0.93, 0.96) if snowy else _shade(rng, _ROOFS[int(rng.integers(len(_ROOFS)))])
    o = 0.2
    if rng.random() < 0.5:
        scene.add_box((x - hx - o, g - h - 0.35, z - hz - o), (x + hx + o, g - h, z + hz + o), roof,
                      _shade(rng, roof), STRIPES, 4.0)
    else:
        scene.add_cone((x, g - h - rng.uniform(1.2, 2.2), z), g - h, math.hypot(hx, hz) + o, roof,
                       _shade(rng, roof), STRIPES, 3.0)
    # A door on the face toward the origin (dark, slightly proud of the wall).
    if abs(x) > abs(z):
        sx = -math.copysign(1.0, x)
        fx = x + sx * hx
        scene.add_box((fx - 0.04, g - 1.9, z - 0.45), (fx + 0.04, g, z + 0.45), (0.30, 0.20, 0.12))
    else:
        sz = -math.copysign(1.0, z)
        fz = z + sz * hz
        scene.add_box((x - 0.45, g - 1.9, fz - 0.04), (x + 0.45, g, fz + 0.04), (0.30, 0.20, 0.12))


def _haystack(scene, rng, x, z, r):
    g = scene.ground.y
    h = rng.uniform(0.8, 1.4)
    col = _shade(rng, (0.85, 0.72, 0.35))
    scene.add_cylinder((x, z), g - h, g, r, col, (0.70, 0.58, 0.25), STRIPES, 5.0)
    scene.add_cone((x, g - h - r * 0.8, z), g - h, r * 1.05, col, (0.70, 0.58, 0.25), STRIPES, 5.0)


def _post(scene, rng, x, z, r, color=(0.45, 0.33, 0.22)):
    g = scene.ground.y
    scene.add_cylinder((x, z), g - rng.uniform(0.9, 1.5), g, r, _shade(rng, color), None, BARK, 4.0)


def _mushroom(scene, rng, x, z, r):
    g = scene.ground.y
    h = rng.uniform(0.4, 0.9)
    scene.add_cylinder((x, z), g - h, g, r * 0.25, (0.90, 0.88, 0.80))
    cap = (0.80, 0.15, 0.12) if rng.random() < 0.6 else (0.75, 0.55, 0.30)
    scene.add_ellipsoid((x, g - h, z), (r, r * 0.45, r), cap, (0.95, 0.95, 0.9), BLOTCH, 3.5)


def _log(scene, rng, x, z, r):
    g = scene.ground.y
    rr = rng.uniform(0.2, 0.35)
    if rng.random() < 0.5:
        radii = (r, rr, rr)
    else:
        radii = (rr, rr, r)
    scene.add_ellipsoid((x, g - rr * 0.8, z), radii, _shade(rng, _BARK), _BARK2, STRIPES, 8.0)


def _cactus(scene, rng, x, z, r):
    g = scene.ground.y
    h = rng.uniform(1.5, 3.2)
    rad = rng.uniform(0.15, 0.28)
    col = _shade(rng, (0.28, 0.52, 0.25))
    col2 = _shade(rng, (0.20, 0.40, 0.18))
    scene.add_cylinder((x, z), g - h, g, rad, col, col2, BARK, 8.0)
    scene.add_ellipsoid((x, g - h, z), (rad, rad, rad), col, col2)
    for side in (-1, 1):
        if rng.random() < 0.6:
            ay = g - h * rng.uniform(0.35, 0.65)
            ax = x + side * rad * 2.6
            top = ay - rng.uniform(0.4, 0.9)
            scene.add_cylinder((ax, z), top, ay + rad * 0.5, rad * 0.7, col, col2, BARK, 8.0)
            scene.add_ellipsoid((ax, top, z), (rad * 0.7,) * 3, col, col2)
            scene.add_box((min(x, ax), ay - rad * 0.5, z - rad * 0.6), (max(x, ax), ay + rad * 0.5, z + rad * 0.6),
                          col, col2)


def _mesa(scene, rng, x, z, r):
    g = scene.ground.y
    h = rng.uniform(4.0, 10.0)
    hx, hz = r * rng.uniform(0.5, 0.7), r * rng.uniform(0.5, 0.7)
    col = _shade(rng, (0.72, 0.42, 0.26))
    scene.add_box((x - hx, g - h, z - hz), (x + hx, g, z + hz), col, _shade(rng, (0.82, 0.55, 0.36)), STRIPES,
                  rng.uniform(0.6, 1.2))


def _pyramid(scene, rng, x, z, r):
    g = scene.ground.y
    col = _shade(rng, (0.82, 0.68, 0.45))
    scene.add_cone((x, g - r * rng.uniform(0.9, 1.3), z), g, r, col, _shade(rng, (0.7, 0.56, 0.36)), BRICKS, 2.0)


def _snowman(scene, rng, x, z, r):
    g = scene.ground.y
    white = (0.93, 0.94, 0.97)
    r1, r2, r3 = r, r * 0.72, r * 0.5
    y1 = g - r1 * 0.9
    y2 = y1 - r1 * 0.8 - r2 * 0.8
    y3 = y2 - r2 * 0.8 - r3 * 0.8
    for rad, y in ((r1, y1), (r2, y2), (r3, y3)):
        scene.add_ellipsoid((x, y, z), (rad, rad, rad), white)
    scene.add_cone((x, y3 - r3 * 1.6, z), y3 - r3 * 0.7, r3 * 0.8, (0.15, 0.15, 0.17))  # a hat


def _igloo(scene, rng, x, z, r):
    g = scene.ground.y
    scene.add_ellipsoid((x, g, z), (r, r * 0.8, r), (0.92, 0.94, 0.98), (0.75, 0.80, 0.88), BRICKS, 2.5)


def _cabin(scene, rng, x, z, r):
    _house(scene, rng, x, z, r, snowy=True)


def _building(scene, rng, x0, x1, z0, z1, night: bool):
    g = scene.ground.y
    h = rng.uniform(4.0, 18.0)
    wall = _shade(rng, _WALLS[int(rng.integers(len(_WALLS)))], 0.08)
    glass = (0.95, 0.78, 0.45) if night else _shade(rng, (0.20, 0.26, 0.34))
    floor_h = rng.uniform(2.8, 3.6)
    scene.add_box((x0, g - h, z0), (x1, g, z1), wall, glass, WINDOWS, 1.0 / floor_h,
                  emissive=rng.uniform(0.6, 1.0) if night else 0.0)
    if rng.random() < 0.3:  # a roof structure
        cx, cz = 0.5 * (x0 + x1), 0.5 * (z0 + z1)
        w = 0.25 * min(x1 - x0, z1 - z0)
        scene.add_box((cx - w, g - h - rng.uniform(1.0, 2.5), cz - w), (cx + w, g - h, cz + w), _shade(rng, wall, 0.1))


def _lamp(scene, rng, x, z, night: bool):
    g = scene.ground.y
    h = rng.uniform(3.0, 4.0)
    scene.add_cylinder((x, z), g - h, g, 0.07, (0.18, 0.18, 0.2))
    scene.add_ellipsoid((x, g - h - 0.12, z), (0.2, 0.2, 0.2), (0.9, 0.9, 0.8), (1.0, 0.85, 0.55),
                        emissive=1.5 if night else 0.0)


def _crate(scene, rng, x, z, r):
    g = scene.ground.y
    s = r * 0.7
    h = rng.uniform(0.6, 1.2) * s * 1.4
    col = _shade(rng, (0.62, 0.46, 0.26) if rng.random() < 0.6 else (0.30, 0.45, 0.62))
    scene.add_box((x - s, g - h, z - s), (x + s, g, z + s), col, _shade(rng, col, 0.12),
                  int(rng.choice([STRIPES, CHECKER])), rng.uniform(2.0, 4.0))


def _pillar(scene, rng, x, z, r):
    g = scene.ground.y
    h = rng.uniform(1.5, 5.0)
    col = _shade(rng, (0.78, 0.76, 0.72))
    scene.add_cylinder((x, z), g - h, g, r * 0.6, col, _shade(rng, col, 0.1), STRIPES, rng.uniform(1.0, 3.0))


# --------------------------------------------------------------------------------------------------------
# Biomes
# --------------------------------------------------------------------------------------------------------
def _count(rng, lo: int, hi: int) -> int:
    return int(rng.integers(lo, hi + 1))


def _meadow(scene: Scene, rng, place: _Placer) -> None:
    gr = scene.ground
    gr.pattern = G_GRASS
    gr.color1 = _jitter(rng, (0.30, 0.52, 0.20), 0.04)
    gr.color2 = _jitter(rng, (0.46, 0.60, 0.24), 0.04)
    gr.scale = float(rng.uniform(0.8, 1.3))
    table = [
        (0.36, _round_tree, lambda r: r.uniform(0.9, 1.7)),
        (0.08, lambda s, r, x, z, fr: _pine(s, r, x, z, fr), lambda r: r.uniform(0.9, 1.4)),
        (0.18, _bush, lambda r: r.uniform(0.4, 0.9)),
        (0.16, _rock, lambda r: r.uniform(0.3, 1.1)),
        (0.08, _house, lambda r: r.uniform(2.2, 3.5)),
        (0.06, _haystack, lambda r: r.uniform(0.6, 1.0)),
        (0.08, _post, lambda r: r.uniform(0.08, 0.14)),
    ]
    _populate(scene, rng, place, table, _count(rng, 30, 60))


def _forest(scene: Scene, rng, place: _Placer) -> None:
    gr = scene.ground
    gr.pattern = G_FOREST
    gr.color1 = _jitter(rng, (0.24, 0.34, 0.14), 0.03)
    gr.color2 = _jitter(rng, (0.38, 0.30, 0.17), 0.03)
    gr.scale = float(rng.uniform(0.8, 1.3))
    place.radius = 22.0
    table = [
        (0.45, lambda s, r, x, z, fr: _pine(s, r, x, z, fr), lambda r: r.uniform(0.9, 1.6)),
        (0.25, _round_tree, lambda r: r.uniform(0.9, 1.6)),
        (0.08, _rock, lambda r: r.uniform(0.3, 1.0)),
        (0.08, _bush, lambda r: r.uniform(0.4, 0.8)),
        (0.07, _mushroom, lambda r: r.uniform(0.2, 0.4)),
        (0.07, _log, lambda r: r.uniform(0.8, 1.6)),
    ]
    _populate(scene, rng, place, table, _count(rng, 55, 80), front_fraction=0.25)


def _desert(scene: Scene, rng, place: _Placer) -> None:
    gr = scene.ground
    gr.pattern = G_SAND
    gr.color1 = _jitter(rng, (0.86, 0.72, 0.48), 0.03)
    gr.color2 = _jitter(rng, (0.76, 0.58, 0.38), 0.03)
    gr.scale = float(rng.uniform(0.8, 1.3))
    # A few big landmarks far away, then small things around.
    for _ in range(_count(rng, 2, 5)):
        r = rng.uniform(3.0, 6.0)
        pos = place.sample(r, rmin=14.0, rmax=scene.region_radius)
        if pos is not None:
            (_pyramid if rng.random() < 0.35 else _mesa)(scene, rng, pos[0], pos[1], r)
    table = [
        (0.36, _rock, lambda r: r.uniform(0.3, 1.5)),
        (0.30, _cactus, lambda r: r.uniform(0.95, 1.1)),
        (0.14, lambda s, r, x, z, fr: _bush(s, r, x, z, fr, (0.50, 0.45, 0.25), (0.42, 0.36, 0.2)),
         lambda r: r.uniform(0.3, 0.6)),
        (0.10, _post, lambda r: r.uniform(0.08, 0.12)),
        (0.10, _house, lambda r: r.uniform(2.0, 3.0)),
    ]
    _populate(scene, rng, place, table, _count(rng, 28, 50))


def _snow(scene: Scene, rng, place: _Placer) -> None:
    gr = scene.ground
    gr.pattern = G_SNOW
    gr.color1 = _jitter(rng, (0.92, 0.94, 0.97), 0.02)
    gr.color2 = _jitter(rng, (0.80, 0.85, 0.93), 0.02)
    gr.scale = float(rng.uniform(0.8, 1.3))
    table = [
        (0.45, lambda s, r, x, z, fr: _pine(s, r, x, z, fr, snowy=rng.random() < 0.5), lambda r: r.uniform(0.9, 1.6)),
        (0.15, lambda s, r, x, z, fr: _rock(s, r, x, z, fr, (0.40, 0.40, 0.42), (0.88, 0.9, 0.94)),
         lambda r: r.uniform(0.3, 1.2)),
        (0.12, _cabin, lambda r: r.uniform(2.2, 3.2)),
        (0.10, _snowman, lambda r: r.uniform(0.35, 0.55)),
        (0.08, _igloo, lambda r: r.uniform(1.2, 2.0)),
        (0.10, _post, lambda r: r.uniform(0.08, 0.12)),
    ]
    _populate(scene, rng, place, table, _count(rng, 35, 65))


def _city(scene: Scene, rng, place: _Placer) -> None:
    gr = scene.ground
    gr.pattern = G_CITY
    gr.color1 = _jitter(rng, (0.23, 0.23, 0.25), 0.02)
    gr.color2 = _jitter(rng, (0.62, 0.60, 0.57), 0.04)
    gr.scale = 1.0
    gr.road_width = float(rng.uniform(3.0, 4.2))
    gr.block_length = float(rng.uniform(26.0, 36.0))
    gr.block_offset = float(rng.uniform(10.0, 18.0))
    night = scene.time_of_day == "night"
    rw, L, z_off = gr.road_width, gr.block_length, gr.block_offset
    sidewalk = rng.uniform(2.0, 3.0)
    extent = scene.region_radius + 8.0
    # Buildings in rows along both sides of the main road, cut by the cross streets.
    for side in (-1.0, 1.0):
        for row in range(2):
            x_in = rw + sidewalk + row * 13.0
            z = -extent
            while z < extent:
                width = rng.uniform(4.0, 10.0)
                z0, z1 = z, min(z + width, extent)
                z = z1 + rng.uniform(0.0, 1.5)
                # Skip lots that overlap a cross street.
                k = math.floor((0.5 * (z0 + z1) - z_off) / L + 0.5)
                zc = z_off + k * L
                if z1 > zc - rw - 1.0 and z0 < zc + rw + 1.0:
                    continue
                if row == 1 and rng.random() < 0.3:
                    continue
                depth = rng.uniform(5.0, 11.0)
                xa, xb = side * x_in, side * (x_in + depth)
                _building(scene, rng, min(xa, xb), max(xa, xb), z0, z1, night)
                place.claim(0.5 * (xa + xb), 0.5 * (z0 + z1), 0.5 * math.hypot(depth, z1 - z0))
    # Street furniture on the sidewalks.
    lamp_gap = rng.uniform(7.0, 11.0)
    zl = -extent + rng.uniform(0, lamp_gap)
    while zl < extent:
        for side in (-1.0, 1.0):
            x = side * (rw + 0.5)
            if place.ok(x, zl, 0.2, spacing=0.2):
                place.claim(x, zl, 0.2)
                _lamp(scene, rng, x, zl, night)
        zl += lamp_gap
    table = [
        (0.35, _crate, lambda r: r.uniform(0.35, 0.6)),
        (0.25, _pillar, lambda r: r.uniform(0.25, 0.45)),
        (0.25, lambda s, r, x, z, fr: _round_tree(s, r, x, z, fr), lambda r: r.uniform(0.8, 1.2)),
        (0.15, lambda s, r, x, z, fr: _post(s, r, x, z, fr, (0.3, 0.3, 0.32)), lambda r: r.uniform(0.08, 0.12)),
    ]
    weights = np.array([t[0] for t in table])
    weights /= weights.sum()
    for _ in range(_count(rng, 14, 30)):
        _, build, fr = table[int(rng.choice(len(table), p=weights))]
        r = float(fr(rng))
        side = 1.0 if rng.random() < 0.5 else -1.0
        # On the sidewalk, or (crates, pillars) on the road edge; never in the driving lanes near the start.
        if rng.random() < 0.75:
            lo, hi = sorted((rw + 0.3 + r, rw + sidewalk - r - 0.1))
        else:
            lo, hi = sorted((rw * 0.5, rw - r - 0.1))
        x = side * rng.uniform(lo, hi)
        zz = rng.uniform(-extent, extent)
        if place.ok(x, zz, r, spacing=0.3):
            place.claim(x, zz, r)
            build(scene, rng, x, zz, r)


_BIOME_BUILDERS = {"meadow": _meadow, "forest": _forest, "desert": _desert, "snow": _snow, "city": _city}

_PLACES = {
    "meadow": ("a green meadow with trees", "a grassy meadow", "a countryside meadow"),
    "forest": ("a pine forest", "a dense forest", "a forest path"),
    "desert": ("a sandy desert", "a desert with cacti and rocks", "a rocky desert"),
    "snow": ("a snowy forest", "a snowy landscape", "a winter village in the snow"),
    "city": ("a city street", "a city street with tall buildings", "a downtown street"),
}
_TIMES = {"day": ("on a sunny day", "in daylight", "at noon"), "sunset": ("at sunset", "at dusk", "at sunset"),
          "night": ("at night", "at night", "in the evening")}


def _caption(rng, scene: Scene) -> str:
    place = _PLACES[scene.biome][int(rng.integers(3))]
    when = _TIMES[scene.time_of_day][int(rng.integers(3))]
    return f"{place} {when}"
