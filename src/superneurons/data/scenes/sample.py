"""Random scene layouts and their exact ground truth (visibility, boxes, occlusion, relations)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from superneurons.data.scenes.render import (
    COLORS,
    DEFAULT_CAMERA,
    MATERIALS,
    SHAPES,
    SIZES,
    RenderResult,
    render_scene,
)
from superneurons.errors import ConfigError

ATTRIBUTES: tuple[str, ...] = ("size", "color", "material", "shape")
VALUES: dict[str, tuple[str, ...]] = {
    "size": tuple(SIZES),
    "color": tuple(COLORS),
    "material": MATERIALS,
    "shape": SHAPES,
}
# Object centres are drawn from this ground rectangle, then kept only if they project inside the
# image with FRAME_MARGIN (a fraction of the width) to spare: the view is a trapezoid.
X_RANGE = (-4.0, 4.0)
Y_RANGE = (-3.0, 4.5)
FRAME_MARGIN = 0.08
MIN_GAP = 0.15  # free space between the bounding circles of two objects
BASE_RESOLUTION = 64


def scale_pixels(count_at_64: float, resolution: int) -> int:
    """A pixel-count threshold given at 64 px, scaled with the image area."""
    return max(1, round(count_at_64 * (resolution / BASE_RESOLUTION) ** 2))


@dataclass(frozen=True)
class SceneObject:
    """One object; the fields after ``rotation`` are measured from the rendered image."""

    shape: str
    color: str
    material: str
    size: str
    position: tuple[float, float, float]  # world centre; z is the radius so it rests on z = 0
    rotation: float  # degrees about the vertical axis
    bbox: tuple[int, int, int, int] = (0, 0, 0, 0)  # visible pixels, x0, y0 inclusive; x1, y1 not
    visible_pixels: int = 0
    distance: float = 0.0  # camera to object centre
    pixel_center: tuple[float, float] = (0.0, 0.0)  # projected centre, pixel k spans [k, k+1)

    def attributes(self) -> dict[str, str]:
        """The four categorical attributes by name."""
        return {name: getattr(self, name) for name in ATTRIBUTES}


@dataclass
class Scene:
    """A scene and its ground truth; ``occludes`` holds [i, j] when i hides ≥ N pixels of j."""

    index: int
    split: str
    resolution: int
    objects: list[SceneObject]
    occludes: list[tuple[int, int]] = field(default_factory=list)
    # Pairs hiding fewer than N pixels: too faint to be a positive, too close to be a negative.
    weak_occludes: list[tuple[int, int]] = field(default_factory=list)

    @property
    def image_filename(self) -> str:
        return f"{self.split}_{self.index:06d}.png"

    def relationships(self) -> dict[str, list[list[int]]]:
        """CLEVR's convention: ``rel["left"][i]`` lists the objects left of object i."""
        xs = [o.pixel_center[0] for o in self.objects]
        fwd = DEFAULT_CAMERA.ground_forward()
        ys = [float(np.dot(o.position, fwd)) for o in self.objects]
        idx = range(len(self.objects))
        return {
            "left": [[j for j in idx if xs[j] < xs[i]] for i in idx],
            "right": [[j for j in idx if xs[j] > xs[i]] for i in idx],
            "front": [[j for j in idx if ys[j] < ys[i]] for i in idx],
            "behind": [[j for j in idx if ys[j] > ys[i]] for i in idx],
        }

    def to_json(self) -> dict[str, Any]:
        """The CLEVR-style scene record."""
        return {
            "image_index": self.index,
            "image_filename": self.image_filename,
            "split": self.split,
            "objects": [
                {
                    "shape": o.shape,
                    "color": o.color,
                    "material": o.material,
                    "size": o.size,
                    "3d_coords": [round(c, 4) for c in o.position],
                    "rotation": round(o.rotation, 4),
                    "pixel_coords": [
                        round(o.pixel_center[0], 3),
                        round(o.pixel_center[1], 3),
                        round(o.distance, 4),
                    ],
                    "bbox": list(o.bbox),
                    "visible_pixels": o.visible_pixels,
                    "distance": round(o.distance, 4),
                }
                for o in self.objects
            ],
            "relationships": self.relationships(),
            "occlusion": [list(p) for p in self.occludes],
            "weak_occlusion": [list(p) for p in self.weak_occludes],
        }


def _footprint_radius(shape: str, size: str) -> float:
    """Half the widest extent on the floor (a cube's half-diagonal): how close objects may be."""
    r = SIZES[size]
    return r * np.sqrt(2) if shape == "cube" else r


def _in_frame(position: tuple[float, float, float]) -> bool:
    # Projected at resolution 1, so the margin is a fraction of the image.
    px, py = DEFAULT_CAMERA.project(np.asarray(position), 1)[0]
    return FRAME_MARGIN <= px <= 1 - FRAME_MARGIN and FRAME_MARGIN <= py <= 1 - FRAME_MARGIN


def sample_layout(
    rng: np.random.Generator, n_objects: int, max_tries: int = 200
) -> list[SceneObject] | None:
    """Objects with random attributes placed without overlap; None if they do not fit."""
    objects: list[SceneObject] = []
    for _ in range(n_objects):
        shape = str(rng.choice(SHAPES))
        size = str(rng.choice(tuple(SIZES)))
        color = str(rng.choice(tuple(COLORS)))
        material = str(rng.choice(MATERIALS))
        rotation = round(float(rng.uniform(0, 360)), 4) if shape != "sphere" else 0.0
        radius = _footprint_radius(shape, size)
        for _ in range(max_tries):
            x = round(float(rng.uniform(*X_RANGE)), 4)
            y = round(float(rng.uniform(*Y_RANGE)), 4)
            if _in_frame((x, y, SIZES[size])) and all(
                np.hypot(x - o.position[0], y - o.position[1])
                >= radius + _footprint_radius(o.shape, o.size) + MIN_GAP
                for o in objects
            ):
                break
        else:
            return None
        position = (x, y, SIZES[size])
        objects.append(SceneObject(shape, color, material, size, position, rotation))
    return objects


def measure(
    objects: list[SceneObject], render: RenderResult, resolution: int
) -> tuple[list[SceneObject], np.ndarray]:
    """Fill in the image-derived fields; also return occlusion counts C[i, j] (pixels)."""
    centers = DEFAULT_CAMERA.project(np.array([o.position for o in objects]), resolution)
    camera = np.asarray(DEFAULT_CAMERA.position)
    measured = []
    for k, obj in enumerate(objects):
        rows, cols = np.nonzero(render.object_map == k)
        bbox = (
            (int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1)
            if len(rows)
            else (0, 0, 0, 0)
        )
        measured.append(
            replace(
                obj,
                bbox=bbox,
                visible_pixels=len(rows),
                distance=float(np.linalg.norm(np.asarray(obj.position) - camera)),
                pixel_center=(float(centers[k, 0]), float(centers[k, 1])),
            )
        )
    depth = render.depth
    silhouettes = np.isfinite(depth)
    # counts[i, j]: pixels of j's own silhouette where i is hit nearer than j.
    counts = ((depth[:, None] < depth[None, :]) & silhouettes[None, :]).sum(axis=(2, 3))
    return measured, counts


def sample_scene(
    rng: np.random.Generator,
    index: int = 0,
    split: str = "train",
    resolution: int = 64,
    min_objects: int = 3,
    max_objects: int = 6,
    min_visible_pixels: int | None = None,
    min_occluded_pixels: int | None = None,
    max_tries: int = 500,
) -> tuple[Scene, RenderResult]:
    """A random scene in which every object shows enough pixels, with its rendering.

    Thresholds default to 12 visible and 3 occluded pixels at 64 px, scaled with image area.
    Layouts where an occluder is farther from the camera than what it hides are resampled, so
    that occlusion and depth questions never contradict each other.
    """
    if not 1 <= min_objects <= max_objects:
        raise ConfigError(
            f"objects per scene: need 1 <= min ({min_objects}) <= max ({max_objects})"
        )
    if min_visible_pixels is None:
        min_visible_pixels = scale_pixels(12, resolution)
    if min_occluded_pixels is None:
        min_occluded_pixels = scale_pixels(3, resolution)
    for _ in range(max_tries):
        n_objects = int(rng.integers(min_objects, max_objects + 1))
        layout = sample_layout(rng, n_objects)
        if layout is None:
            continue
        render = render_scene(Scene(index, split, resolution, layout), resolution)
        objects, counts = measure(layout, render, resolution)
        if any(o.visible_pixels < min_visible_pixels for o in objects):
            continue
        pairs = [(int(i), int(j)) for i, j in zip(*np.nonzero(counts), strict=True)]
        if any(objects[i].distance >= objects[j].distance for i, j in pairs):
            continue
        strong = [(i, j) for i, j in pairs if counts[i, j] >= min_occluded_pixels]
        weak = [(i, j) for i, j in pairs if counts[i, j] < min_occluded_pixels]
        return Scene(index, split, resolution, objects, strong, weak), render
    raise ConfigError(
        f"no valid layout of {min_objects}-{max_objects} objects at {resolution} px after "
        f"{max_tries} tries; ask for fewer objects or a higher resolution"
    )
