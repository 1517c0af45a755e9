import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from superneurons.data.loaders.scenes import load_scenes
from superneurons.data.scenes import (
    COLORS,
    FAMILIES,
    find_objects,
    iter_scenes,
    parse_reference,
    referring_expression,
    render_scene,
    scene_questions,
    write_scene_dataset,
)
from superneurons.data.scenes.questions import YES_NO_FAMILIES, question_form
from superneurons.data.scenes.sample import scale_pixels
from superneurons.data.scenes.write import FORMAT_VERSION

N_SCENES = 40


@pytest.fixture(scope="module")
def scenes():
    return list(iter_scenes(seed=7, split="train", n=N_SCENES))


@pytest.fixture(scope="module")
def questions(scenes):
    return [q for scene, _ in scenes for q in scene_questions(scene, seed=7)]


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path):
    a = _files(write_scene_dataset(tmp_path / "a", n_scenes=4, seed=3))
    b = _files(write_scene_dataset(tmp_path / "b", n_scenes=4, seed=3))
    c = _files(write_scene_dataset(tmp_path / "c", n_scenes=4, seed=4))
    assert a == b
    assert set(a) == set(c)
    assert a["images/train_000000.png"] != c["images/train_000000.png"]
    assert not [name for name in a if name.endswith(".tmp")]


def test_written_dataset_layout(tmp_path):
    out = write_scene_dataset(tmp_path / "d", n_scenes=3, seed=0, split="val")
    data = json.loads((out / "scenes.json").read_text())
    assert data["info"]["split"] == "val" and len(data["scenes"]) == 3
    scene = data["scenes"][0]
    assert scene["image_filename"] == "val_000000.png"
    assert set(scene["relationships"]) == {"left", "right", "front", "behind"}
    keys = {"shape", "color", "material", "size", "3d_coords", "rotation", "pixel_coords", "bbox"}
    assert keys <= set(scene["objects"][0])
    records = [json.loads(line) for line in (out / "questions.jsonl").read_text().splitlines()]
    assert len({r["id"] for r in records}) == len(records)
    for r in records:
        assert (out / r["image"]).is_file() and not Path(r["image"]).is_absolute()
        assert ("choices" in r) == (r["family"] == "color_choice")


def test_prefix_property_and_splits_differ():
    first = [s for s, _ in iter_scenes(seed=1, split="train", n=3)]
    more = [s for s, _ in iter_scenes(seed=1, split="train", n=5)]
    val = [s for s, _ in iter_scenes(seed=1, split="val", n=3)]
    assert [s.objects for s in first] == [s.objects for s in more[:3]]
    assert all(a.objects != b.objects for a, b in zip(first, val, strict=True))


def test_ground_truth_consistency(scenes):
    floor = scale_pixels(12, 64)
    for scene, render in scenes:
        dist = [o.distance for o in scene.objects]
        for i, j in scene.occludes:
            assert dist[i] < dist[j]
        counts = np.bincount(render.object_map.ravel() + 1, minlength=len(scene.objects) + 1)
        for k, obj in enumerate(scene.objects):
            assert obj.visible_pixels >= floor
            assert counts[k + 1] == obj.visible_pixels
            x0, y0, x1, y1 = obj.bbox
            assert (render.object_map[y0:y1, x0:x1] == k).sum() == obj.visible_pixels
        rel = scene.relationships()
        for i in range(len(scene.objects)):
            for j in rel["left"][i]:
                assert scene.objects[j].pixel_center[0] < scene.objects[i].pixel_center[0]
                assert i in rel["right"][j]
    assert any(scene.occludes for scene, _ in scenes)


def test_yes_no_families_are_balanced(questions):
    for family in YES_NO_FAMILIES:
        labels = Counter(q.label for q in questions if q.family == family)
        assert labels["yes"] > 0, family
        assert abs(labels["yes"] - labels["no"]) <= 1, (family, labels)
    subtypes = Counter(q.subtype for q in questions if q.family == "existence" and q.label == "no")
    assert set(subtypes) == {"random", "popular", "adversarial"}
    assert {q.family for q in questions} == set(FAMILIES)


def test_the_form_of_a_question_does_not_give_its_answer_away(questions):
    # Count's number word and existence's length are as often "yes" as "no": a blind reader of
    # the text learns nothing from them (see docs/scenes.md).
    for family in ("count", "existence"):
        asked = [q for q in questions if q.family == family]
        by_form = Counter((question_form(family, q.question), q.label) for q in asked)
        forms = {form for form, _ in by_form}
        assert len(forms) >= 2, family
        for form in forms:
            assert by_form[form, "yes"] == by_form[form, "no"], (family, form, by_form)


def test_a_dataset_of_an_older_generator_is_regenerated(tmp_path):
    first = load_scenes(tmp_path, "val", seed=0, n=10)
    (directory,) = tmp_path.iterdir()
    index = directory / "scenes.json"
    old = json.loads(index.read_text())
    old["info"]["version"] = FORMAT_VERSION - 1
    index.write_text(json.dumps(old))
    (directory / "questions.jsonl").write_text("")  # an old generator's questions, say
    again = load_scenes(tmp_path, "val", seed=0, n=10)
    assert [(r.id, r.question, r.label) for r in again] == [
        (r.id, r.question, r.label) for r in first
    ]
    assert json.loads(index.read_text())["info"]["version"] == FORMAT_VERSION


def test_multiple_choice_labels(scenes, questions):
    by_index = {scene.index: scene for scene, _ in scenes}
    choice = [q for q in questions if q.family == "color_choice"]
    assert choice
    for q in choice:
        assert q.label in "ABCD" and len(q.choices) == 4 and len(set(q.choices)) == 4
        ref = q.question.removeprefix("What color is ").removesuffix("?")
        (k,) = find_objects(by_index[q.scene_index], parse_reference(ref))
        assert q.choices["ABCD".index(q.label)] == by_index[q.scene_index].objects[k].color


def test_referring_expressions_are_unique(scenes):
    for scene, _ in scenes:
        for k in range(len(scene.objects)):
            ref = referring_expression(scene, k)
            if ref is not None:
                assert find_objects(scene, parse_reference(ref)) == [k]


def test_existence_answers_match_scene(scenes, questions):
    by_index = {scene.index: scene for scene, _ in scenes}
    for q in questions:
        if q.family == "existence":
            attrs = parse_reference(q.question)
            present = bool(find_objects(by_index[q.scene_index], attrs))
            assert present == (q.label == "yes"), q


def test_custom_resolution_render(scenes):
    scene, _ = scenes[0]
    render = render_scene(scene, resolution=96)
    assert render.image.shape == (96, 96, 3) and render.image.dtype == np.uint8
    assert render.object_map.shape == (96, 96) and render.object_map.dtype == np.int16
    (scene_96, render_96) = next(iter_scenes(seed=0, n=1, resolution=48))
    assert render_96.image.shape == (48, 48, 3) and scene_96.resolution == 48
    # The ground is light gray and every object colour is one of CLEVR's.
    assert set(o.color for o in scene.objects) <= set(COLORS)


def _oracle(scene, text: str) -> str:
    """Answer a yes/no question from the scene alone, parsing it back."""

    def one(ref: str) -> int:
        (k,) = find_objects(scene, parse_reference(ref))
        return k

    body = text.removesuffix("?")
    objs = scene.objects
    for word, sign in ((" to the left of ", 1), (" to the right of ", -1)):
        if word in body:
            a, b = (one(r) for r in body.removeprefix("Is ").split(word))
            return "yes" if sign * (objs[b].pixel_center[0] - objs[a].pixel_center[0]) > 0 else "no"
    if " occluding " in body:
        a, b = (one(r) for r in body.removeprefix("Is ").split(" occluding "))
        return "yes" if (a, b) in scene.occludes else "no"
    if " closer to the camera than " in body:
        a, b = (one(r) for r in body.removeprefix("Is ").split(" closer to the camera than "))
        return "yes" if objs[a].distance < objs[b].distance else "no"
    if body.startswith(("Is there exactly", "Are there exactly")):
        words = body.split()
        n = {"one": 1, "two": 2, "three": 3, "four": 4}[words[3]]
        return "yes" if len(find_objects(scene, parse_reference(body))) == n else "no"
    if body.startswith("Is there"):
        return "yes" if find_objects(scene, parse_reference(body)) else "no"
    # Attribute: the value is the last word, the reference everything before it.
    words = body.removeprefix("Is ").split()
    value = words[-1]
    ref = " ".join(w for w in words[:-1] if w not in ("made", "of", "a"))
    return "yes" if value in objs[one(ref)].attributes().values() else "no"


def test_yes_no_answers_match_an_independent_reading(scenes, questions):
    by_index = {scene.index: scene for scene, _ in scenes}
    for q in questions:
        if q.family in YES_NO_FAMILIES:
            assert _oracle(by_index[q.scene_index], q.question) == q.label, q


RELATIONS = (" to the left of ", " to the right of ", " occluding ", " closer to the camera than ")


def _read_mentions(scene, question: str) -> list[list[int]]:
    """An independent reading of the objects each phrase of a question names."""
    body = question.removesuffix("?")
    for relation in RELATIONS:
        if relation in body:
            return [find_objects(scene, parse_reference(p)) for p in body.split(relation)]
    if body.startswith(("Is there", "Are there", "What color is ")):
        return [find_objects(scene, parse_reference(body))]
    # Attribute: "Is {ref} {value}?", "Is {ref} made of {value}?", "Is {ref} a {value}?".
    ref = body.rsplit(" ", 1)[0].removesuffix(" made of").removesuffix(" a")
    return [find_objects(scene, parse_reference(ref))]


def test_each_question_records_the_objects_it_mentions(scenes, questions):
    by_index = {scene.index: scene for scene, _ in scenes}
    for q in questions:
        groups = q.mentions
        assert groups == _read_mentions(by_index[q.scene_index], q.question), q
        if q.family in ("spatial", "occlusion", "depth"):
            assert [len(g) for g in groups] == [1, 1] and groups[0] != groups[1], q
        elif q.family == "existence":
            assert len(groups) == 1 and bool(groups[0]) == (q.label == "yes"), q
        elif q.family == "count":
            assert len(groups) == 1 and groups[0], q
        else:  # attribute, color_choice: the reference alone, not the asked value
            assert [len(g) for g in groups] == [1], q
