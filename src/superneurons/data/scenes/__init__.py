"""Synthetic CLEVR-like scenes rendered with numpy ray casting, with exact ground truth.

Typical use::

    from superneurons.data.scenes import iter_scenes, scene_questions, write_scene_dataset

    for scene, render in iter_scenes(seed=0, split="train", n=100):
        render.image, render.object_map  # (64, 64, 3) uint8, (64, 64) int16
        questions = scene_questions(scene, seed=0)

    write_scene_dataset("data/scenes/train", n_scenes=1000, seed=0, split="train")
"""

from superneurons.data.scenes.questions import (
    FAMILIES,
    Question,
    find_objects,
    generate_questions,
    parse_reference,
    referring_expression,
)
from superneurons.data.scenes.render import (
    COLORS,
    DEFAULT_CAMERA,
    MATERIALS,
    SHAPES,
    SIZES,
    Camera,
    RenderResult,
    render_scene,
)
from superneurons.data.scenes.sample import Scene, SceneObject, sample_scene
from superneurons.data.scenes.write import (
    SPLIT_CODE,
    iter_scenes,
    make_scene,
    scene_questions,
    write_scene_dataset,
)

__all__ = [
    "COLORS",
    "DEFAULT_CAMERA",
    "FAMILIES",
    "MATERIALS",
    "SHAPES",
    "SIZES",
    "SPLIT_CODE",
    "Camera",
    "Question",
    "RenderResult",
    "Scene",
    "SceneObject",
    "find_objects",
    "generate_questions",
    "iter_scenes",
    "make_scene",
    "parse_reference",
    "referring_expression",
    "render_scene",
    "sample_scene",
    "scene_questions",
    "write_scene_dataset",
]
