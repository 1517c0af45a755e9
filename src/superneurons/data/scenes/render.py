"""Ray-cast renderer for CLEVR-like scenes: one camera, a ground plane, a key light and shadows.

World axes: x to the camera's right, y away from the camera, z up; the ground is z = 0.
Every ray of the image is cast at once with numpy; the only Python loop is over objects.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from superneurons.data.scenes.sample import Scene, SceneObject

# CLEVR's own palette (sRGB, 0-255).
COLORS: dict[str, tuple[int, int, int]] = {
    "gray": (87, 87, 87),
    "red": (173, 35, 35),
    "blue": (42, 75, 215),
    "green": (29, 105, 20),
    "brown": (129, 74, 25),
    "purple": (129, 38, 192),
    "cyan": (41, 208, 208),
    "yellow": (255, 238, 51),
}
SHAPES: tuple[str, ...] = ("cube", "sphere", "cylinder")
MATERIALS: tuple[str, ...] = ("rubber", "metal")
# Sphere/cylinder radius and cube half-extent, in world units.
SIZES: dict[str, float] = {"small": 0.35, "large": 0.7}

GROUND_ALBEDO = 0.62
SKY = 0.55
AMBIENT = 0.38
DIFFUSE = 0.72
METAL_DIFFUSE = 0.7  # metals keep less diffuse colour, the highlight makes up for it
SPECULAR = 0.9
SHININESS = 60.0
LIGHT_DIR = np.array([-0.55, -0.35, 1.0]) / np.linalg.norm([-0.55, -0.35, 1.0])  # toward light
EPS = 1e-6
SHADOW_OFFSET = 1e-4  # lifts shadow-ray origins off the surface so they do not hit it again


@dataclass(frozen=True)
class Camera:
    """A pinhole camera with a square image; ``fov_deg`` is the full field of view."""

    position: tuple[float, float, float] = (0.0, -8.5, 6.2)
    target: tuple[float, float, float] = (0.0, 1.0, 0.0)
    fov_deg: float = 40.0

    def basis(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Forward, right and up unit vectors."""
        forward = np.subtract(self.target, self.position).astype(float)
        forward /= np.linalg.norm(forward)
        right = np.cross(forward, [0.0, 0.0, 1.0])
        right /= np.linalg.norm(right)
        return forward, right, np.cross(right, forward)

    def project(self, points: np.ndarray, resolution: int) -> np.ndarray:
        """Pixel coordinates (x right, y down; pixel k spans [k, k+1)) of world points (N, 3)."""
        forward, right, up = self.basis()
        v = np.atleast_2d(points) - np.asarray(self.position)
        depth = v @ forward
        half = np.tan(np.radians(self.fov_deg) / 2)
        x = (v @ right) / depth / half
        y = (v @ up) / depth / half
        return np.stack([(x + 1) / 2 * resolution, (1 - y) / 2 * resolution], axis=-1)

    def ground_forward(self) -> np.ndarray:
        """The camera's viewing direction flattened onto the ground (defines front/behind)."""
        forward = self.basis()[0].copy()
        forward[2] = 0.0
        return forward / np.linalg.norm(forward)


DEFAULT_CAMERA = Camera()


@dataclass
class RenderResult:
    """An image and what is seen at each pixel centre.

    ``depth[k]`` is the ray length to object k at each pixel centre as if it were alone in the
    scene (inf where it is missed); ``object_map`` is the nearest of them, -1 for the ground.
    """

    image: np.ndarray  # (H, W, 3) uint8
    object_map: np.ndarray  # (H, W) int16
    depth: np.ndarray  # (n_objects, H, W) float64


@lru_cache(maxsize=8)
def _ray_dirs(camera: Camera, resolution: int, samples: int) -> np.ndarray:
    """Unit ray directions ordered (row, col, sub-row, sub-col), flattened to (N, 3)."""
    forward, right, up = camera.basis()
    half = np.tan(np.radians(camera.fov_deg) / 2)
    sub = (np.arange(samples) + 0.5) / samples
    pix = np.arange(resolution)
    y = (pix[:, None] + sub[None, :]).reshape(-1)  # (H * s,) rows then sub-rows
    x = (pix[:, None] + sub[None, :]).reshape(-1)
    ndc_x = (x / resolution * 2 - 1) * half
    ndc_y = (1 - y / resolution * 2) * half
    d = (
        forward[None, None, :]
        + ndc_x[None, :, None] * right[None, None, :]
        + ndc_y[:, None, None] * up[None, None, :]
    )
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    # (H*s, W*s, 3) -> (H, s, W, s, 3) -> (H, W, s, s, 3)
    d = d.reshape(resolution, samples, resolution, samples, 3).transpose(0, 2, 1, 3, 4)
    d = np.ascontiguousarray(d.reshape(-1, 3))
    d.flags.writeable = False
    return d


def _rotation(obj: SceneObject) -> np.ndarray:
    """Rotation about z; ``v @ R`` maps world offsets into the object's frame."""
    a = np.radians(obj.rotation)
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # Explicit components: numpy reductions over a length-3 axis are several times slower.
    return a[..., 0] * b[..., 0] + a[..., 1] * b[..., 1] + a[..., 2] * b[..., 2]


def intersect(obj: SceneObject, origins: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    """Ray length to the first hit on ``obj`` (inf on a miss); origins/dirs broadcast (…, 3)."""
    r = SIZES[obj.size]
    o = origins - np.asarray(obj.position, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        if obj.shape == "sphere":
            b = _dot(dirs, o)
            disc = b * b - (_dot(o, o) - r * r)
            s = np.sqrt(np.maximum(disc, 0.0))
            t = np.where(-b - s > EPS, -b - s, -b + s)
            return np.where((disc >= 0) & (t > EPS), t, np.inf)
        if obj.shape == "cube":
            rot = _rotation(obj)
            lo, ld = o @ rot, dirs @ rot
            t1 = (-r - lo) / ld
            t2 = (r - lo) / ld
            lo_t, hi_t = np.minimum(t1, t2), np.maximum(t1, t2)
            near = np.maximum(np.maximum(lo_t[..., 0], lo_t[..., 1]), lo_t[..., 2])
            far = np.minimum(np.minimum(hi_t[..., 0], hi_t[..., 1]), hi_t[..., 2])
            t = np.where(near > EPS, near, far)
            return np.where((near <= far) & (t > EPS), t, np.inf)
        if obj.shape == "cylinder":
            # Vertical axis, height 2r, centred at z = r; the bottom cap lies on the ground.
            ox, oy, oz = o[..., 0], o[..., 1], o[..., 2]
            dx, dy, dz = dirs[..., 0], dirs[..., 1], dirs[..., 2]
            a = dx * dx + dy * dy
            b = ox * dx + oy * dy
            disc = b * b - a * (ox * ox + oy * oy - r * r)
            t_side = (-b - np.sqrt(np.maximum(disc, 0.0))) / a
            side_ok = (disc >= 0) & (a > 1e-12) & (t_side > EPS) & (np.abs(oz + t_side * dz) <= r)
            t_top = (r - oz) / dz
            px, py = ox + t_top * dx, oy + t_top * dy
            top_ok = (t_top > EPS) & (px * px + py * py <= r * r)
            return np.minimum(np.where(side_ok, t_side, np.inf), np.where(top_ok, t_top, np.inf))
    raise ValueError(f"unknown shape {obj.shape!r}")


def _bounding_sphere_radius(obj: SceneObject) -> float:
    """The radius of a sphere around the whole object (a cube's half space-diagonal)."""
    r = SIZES[obj.size]
    return r * np.sqrt(3) if obj.shape == "cube" else r * np.sqrt(2)


def _screen_rect(obj: SceneObject, camera: Camera, resolution: int) -> tuple[int, int, int, int]:
    """Pixel rows/cols (r0, r1, c0, c1) that can see ``obj``: its bounding box, projected."""
    x, y, z = obj.position
    h = SIZES[obj.size]
    R = h * np.sqrt(2)  # xy reach of any shape at any rotation
    corners = np.array(
        [(x + dx, y + dy, z + dz) for dx in (-R, R) for dy in (-R, R) for dz in (-h, h)]
    )
    px = camera.project(corners, resolution)
    # One pixel of slack so that rounding never cuts a silhouette.
    c0, r0 = np.floor(px.min(axis=0)).astype(int) - 1
    c1, r1 = np.ceil(px.max(axis=0)).astype(int) + 1
    clip = lambda v: int(min(max(v, 0), resolution))  # noqa: E731
    return clip(r0), clip(r1), clip(c0), clip(c1)


def surface_normals(obj: SceneObject, points: np.ndarray) -> np.ndarray:
    """Outward unit normals of ``obj`` at surface points (N, 3)."""
    r = SIZES[obj.size]
    local = points - np.asarray(obj.position, dtype=float)
    if obj.shape == "sphere":
        return local / r
    if obj.shape == "cube":
        rot = _rotation(obj)
        lp = local @ rot
        axis = np.abs(lp).argmax(axis=-1)
        n = np.zeros_like(lp)
        rows = np.arange(len(lp))
        n[rows, axis] = np.sign(lp[rows, axis])
        return n @ rot.T
    # Cylinder: the top cap is flat, the side is radial.
    n = np.zeros_like(local)
    top = local[:, 2] > r - 1e-7
    n[top, 2] = 1.0
    side = ~top
    n[side, :2] = local[side, :2] / np.linalg.norm(local[side, :2], axis=-1, keepdims=True)
    return n


def render_scene(
    scene: Scene, resolution: int = 64, samples: int = 3, camera: Camera = DEFAULT_CAMERA
) -> RenderResult:
    """Render ``scene`` with ``samples``² supersampling; the object map uses pixel centres."""
    if samples % 2 == 0:
        raise ValueError("samples must be odd so that one sub-sample sits at the pixel centre")
    dirs = _ray_dirs(camera, resolution, samples)
    origin = np.asarray(camera.position, dtype=float)
    objects = scene.objects
    n_rays = len(dirs)

    t_obj = np.full((len(objects), n_rays), np.inf)
    grid = dirs.reshape(resolution, resolution, samples * samples, 3)
    for k, obj in enumerate(objects):
        # Only rays through the object's screen rectangle can hit it.
        r0, r1, c0, c1 = _screen_rect(obj, camera, resolution)
        sub = grid[r0:r1, c0:c1]
        t_grid = t_obj[k].reshape(resolution, resolution, samples * samples)
        t_grid[r0:r1, c0:c1] = intersect(obj, origin, sub.reshape(-1, 3)).reshape(sub.shape[:-1])
    with np.errstate(divide="ignore"):
        t_ground = np.where(dirs[:, 2] < 0, -origin[2] / dirs[:, 2], np.inf)
    if objects:
        nearest = t_obj.argmin(axis=0)
        t_near = t_obj[nearest, np.arange(n_rays)]
    else:
        nearest = np.full(n_rays, -1)
        t_near = np.full(n_rays, np.inf)
    on_object = t_near < t_ground
    t = np.where(on_object, t_near, t_ground)
    hit = np.isfinite(t)

    points = origin + np.where(hit, t, 0.0)[:, None] * dirs
    normals = np.zeros((n_rays, 3))
    normals[:, 2] = 1.0
    albedo = np.full((n_rays, 3), GROUND_ALBEDO)
    metal = np.zeros(n_rays, dtype=bool)
    for k, obj in enumerate(objects):
        mask = on_object & (nearest == k)
        normals[mask] = surface_normals(obj, points[mask])
        gain = METAL_DIFFUSE if obj.material == "metal" else 1.0
        albedo[mask] = np.asarray(COLORS[obj.color]) / 255.0 * gain
        if obj.material == "metal":
            metal |= mask

    ndotl = np.clip(normals @ LIGHT_DIR, 0.0, None)
    # Only points facing the light can be shadowed; everything else is ambient-only anyway.
    lit = hit & (ndotl > 0)
    idx = np.flatnonzero(lit)
    shadow_origins = points[idx] + normals[idx] * SHADOW_OFFSET
    blocked = np.zeros(len(idx), dtype=bool)
    # Cull shadow rays with each object's bounding sphere, in a plane facing the light.
    e1 = np.cross(LIGHT_DIR, [0.0, 1.0, 0.0])
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(LIGHT_DIR, e1)
    u, v, w = (shadow_origins @ np.stack([e1, e2, LIGHT_DIR], axis=1)).T
    for obj in objects:
        c = np.asarray(obj.position)
        rad = _bounding_sphere_radius(obj)
        near = ((u - c @ e1) ** 2 + (v - c @ e2) ** 2 <= rad * rad) & (w < c @ LIGHT_DIR + rad)
        cand = np.flatnonzero(near & ~blocked)
        blocked[cand] = np.isfinite(intersect(obj, shadow_origins[cand], LIGHT_DIR))
    lit[idx[blocked]] = False

    rgb = albedo * (AMBIENT + DIFFUSE * ndotl * lit)[:, None]
    if metal.any():
        half = LIGHT_DIR - dirs[metal]
        half /= np.linalg.norm(half, axis=-1, keepdims=True)
        ndoth = np.clip(np.sum(normals[metal] * half, axis=-1), 0.0, None)
        rgb[metal] += (SPECULAR * ndoth**SHININESS * lit[metal])[:, None]
    rgb[~hit] = SKY

    res, s = resolution, samples
    image = rgb.reshape(res, res, s * s, 3).mean(axis=2)
    image = np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)
    centre = s // 2
    depth = t_obj.reshape(len(objects), res, res, s, s)[:, :, :, centre, centre].copy()
    object_map = np.full((res, res), -1, dtype=np.int16)
    if objects:
        seen = np.isfinite(depth).any(axis=0)
        object_map[seen] = depth.argmin(axis=0)[seen]
    return RenderResult(image=image, object_map=object_map, depth=depth)
