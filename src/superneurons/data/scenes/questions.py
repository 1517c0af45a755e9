"""Question families over a scene's ground truth, and CLEVR-style referring expressions.

Every yes/no family is emitted in pairs (one "yes", one "no") or not at all, so each family is
exactly balanced over any set of scenes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np

from superneurons.data.scenes.sample import ATTRIBUTES, VALUES, Scene
from superneurons.errors import ConfigError

YES_NO_FAMILIES: tuple[str, ...] = (
    "existence",
    "attribute",
    "count",
    "spatial",
    "occlusion",
    "depth",
)
CHOICE_FAMILIES: tuple[str, ...] = ("color_choice",)
FAMILIES: tuple[str, ...] = YES_NO_FAMILIES + CHOICE_FAMILIES
EXISTENCE_SUBTYPES: tuple[str, ...] = ("random", "popular", "adversarial")
CHOICE_SLOTS = "ABCD"  # a colour-choice question offers four colours
# Referring expressions drop attributes in this order of preference (colour is kept first).
REFERENCE_PRIORITY: tuple[str, ...] = ("color", "shape", "size", "material")
SPATIAL_MARGIN_PX = 3.0  # at 64 px; centres closer than this in x are too close to call
DEPTH_MARGIN = 0.3  # world units
NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}
PLURALS = {"cube": "cubes", "sphere": "spheres", "cylinder": "cylinders", "object": "objects"}
_TRIES = 30


@dataclass
class Question:
    """One question about one image; ``label`` is "yes"/"no" or the correct choice letter."""

    image: str  # relative to the dataset directory, e.g. "images/train_000000.png"
    question: str
    label: str
    family: str
    scene_index: int
    choices: list[str] | None = None
    subtype: str | None = None
    id: str = ""
    # The objects each phrase names, in order of mention: one group, or two for a relation.
    mentions: list[list[int]] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        """The JSONL record; optional keys appear only when set."""
        record: dict[str, object] = {
            "id": self.id,
            "image": self.image,
            "question": self.question,
            "label": self.label,
            "family": self.family,
            "scene_index": self.scene_index,
        }
        if self.choices is not None:
            record["choices"] = self.choices
        if self.subtype is not None:
            record["subtype"] = self.subtype
        record["mentions"] = self.mentions
        return record


# --- referring expressions -------------------------------------------------------------------


def phrase(attrs: dict[str, str], plural: bool = False) -> str:
    """Noun phrase in CLEVR word order, e.g. "large red metal cube" or "red object"."""
    words = [attrs[a] for a in ("size", "color", "material") if a in attrs]
    noun = attrs.get("shape", "object")
    return " ".join([*words, PLURALS[noun] if plural else noun])


def find_objects(scene: Scene, attrs: dict[str, str]) -> list[int]:
    """Indices of the objects that have every attribute value in ``attrs``."""
    return [
        i
        for i, obj in enumerate(scene.objects)
        if all(getattr(obj, a) == v for a, v in attrs.items())
    ]


def referring_expression(scene: Scene, index: int, exclude: Iterable[str] = ()) -> str | None:
    """The shortest phrase ("the red cube") that picks out object ``index`` alone, or None.

    Uses the fewest attributes not in ``exclude``; ties go to the order of REFERENCE_PRIORITY.
    """
    allowed = [a for a in REFERENCE_PRIORITY if a not in set(exclude)]
    full = scene.objects[index].attributes()
    for n in range(1, len(allowed) + 1):
        for names in combinations(allowed, n):
            attrs = {a: full[a] for a in names}
            if find_objects(scene, attrs) == [index]:
                return "the " + phrase(attrs)
    return None


def parse_reference(text: str) -> dict[str, str]:
    """Attribute values named in a phrase such as "the large red metal cube" (or "cubes")."""
    singular = {plural: noun for noun, plural in PLURALS.items()}
    attrs = {}
    for word in text.split():
        word = word.strip("?.,!").lower()
        word = singular.get(word, word)
        for name, values in VALUES.items():
            if word in values:
                attrs[name] = word
    return attrs


# --- families --------------------------------------------------------------------------------
# Each maker returns (question, subtype) for the wanted answer, or None if it cannot.

# (question, subtype, the objects each phrase names) for the wanted answer, or None.
Made = tuple[str, str | None, list[list[int]]] | None


def _article(words: str) -> str:
    return ("an " if words[0] in "aeiou" else "a ") + words


def _random_subset(rng: np.random.Generator, full: dict[str, str], lo: int, hi: int) -> dict:
    n = int(rng.integers(lo, hi + 1))
    names = {str(a) for a in rng.choice(ATTRIBUTES, size=n, replace=False)}
    return {a: full[a] for a in ATTRIBUTES if a in names}  # CLEVR word order


def _negative_existence(scene: Scene, rng: np.random.Generator, subtype: str) -> dict | None:
    objects = scene.objects
    if subtype == "random":
        for _ in range(_TRIES):
            full = {a: str(rng.choice(VALUES[a])) for a in ATTRIBUTES}
            attrs = _random_subset(rng, full, 1, 3)
            if not find_objects(scene, attrs):
                return attrs
        return None
    if subtype == "popular":
        # The scene's most frequent values, combined in a way the scene does not contain.
        freq = {a: Counter(getattr(o, a) for o in objects) for a in ATTRIBUTES}
        pairs = list(combinations(ATTRIBUTES, 2))
        rng.shuffle(pairs)
        best = None
        for a, b in pairs:
            for va, ca in freq[a].most_common():
                for vb, cb in freq[b].most_common():
                    attrs = {a: va, b: vb}
                    if not find_objects(scene, attrs) and (best is None or ca + cb > best[0]):
                        best = (ca + cb, attrs)
        return None if best is None else best[1]
    # Adversarial: one attribute away from an object that is there.
    for _ in range(_TRIES):
        obj = objects[int(rng.integers(len(objects)))]
        attrs = _random_subset(rng, obj.attributes(), 2, 3)
        name = str(rng.choice(list(attrs)))
        attrs[name] = str(rng.choice([v for v in VALUES[name] if v != attrs[name]]))
        if not find_objects(scene, attrs):
            return attrs
    return None


def existence(scene: Scene, rng: np.random.Generator, answer: bool, subtype: str) -> Made:
    if answer:
        obj = scene.objects[int(rng.integers(len(scene.objects)))]
        attrs = _random_subset(rng, obj.attributes(), 1, 3)
    else:
        attrs = _negative_existence(scene, rng, subtype)
        if attrs is None:
            return None
    return f"Is there {_article(phrase(attrs))}?", subtype, [find_objects(scene, attrs)]


ATTRIBUTE_TEMPLATES = {
    "color": "Is {ref} {value}?",
    "material": "Is {ref} made of {value}?",
    "size": "Is {ref} {value}?",
    "shape": "Is {ref} a {value}?",
}


def attribute(scene: Scene, rng: np.random.Generator, answer: bool, subtype: str) -> Made:
    i = int(rng.integers(len(scene.objects)))
    name = str(rng.choice(ATTRIBUTES))
    # The reference must not name the asked attribute, or the question answers itself.
    ref = referring_expression(scene, i, exclude=[name])
    if ref is None:
        return None
    value = getattr(scene.objects[i], name)
    if not answer:
        value = str(rng.choice([v for v in VALUES[name] if v != value]))
    return ATTRIBUTE_TEMPLATES[name].format(ref=ref, value=value), None, [[i]]


def count(scene: Scene, rng: np.random.Generator, answer: bool, subtype: str) -> Made:
    obj = scene.objects[int(rng.integers(len(scene.objects)))]
    attrs = _random_subset(rng, obj.attributes(), 1, 2)
    true = len(find_objects(scene, attrs))
    if answer:
        if true > 4:
            return None
        k = true
    else:
        wrong = [k for k in (true - 2, true - 1, true + 1, true + 2) if 1 <= k <= 4]
        if not wrong:
            return None
        k = int(rng.choice(wrong))
    mentions = [find_objects(scene, attrs)]
    if k == 1:
        return f"Is there exactly one {phrase(attrs)}?", None, mentions
    return f"Are there exactly {NUMBER_WORDS[k]} {phrase(attrs, plural=True)}?", None, mentions


def _ordered_pair(
    scene: Scene, rng: np.random.Generator, ok: Callable[[int, int], bool]
) -> tuple[int, int, str, str] | None:
    """A random pair (i, j) with ok(i, j), both referable, with their references."""
    n = len(scene.objects)
    pairs = [(i, j) for i in range(n) for j in range(n) if i != j and ok(i, j)]
    rng.shuffle(pairs)
    for i, j in pairs:
        ri, rj = referring_expression(scene, i), referring_expression(scene, j)
        if ri is not None and rj is not None:
            return i, j, ri, rj
    return None


def spatial(scene: Scene, rng: np.random.Generator, answer: bool, subtype: str) -> Made:
    margin = SPATIAL_MARGIN_PX * scene.resolution / 64
    xs = [o.pixel_center[0] for o in scene.objects]
    # (i, j) with i left of j by a clear margin; the relation word and order set the answer.
    pair = _ordered_pair(scene, rng, lambda i, j: xs[j] - xs[i] >= margin)
    if pair is None:
        return None
    i, j, left, right = pair
    if rng.random() < 0.5:
        (a, ia), (b, ib) = ((left, i), (right, j)) if answer else ((right, j), (left, i))
        return f"Is {a} to the left of {b}?", None, [[ia], [ib]]
    (a, ia), (b, ib) = ((right, j), (left, i)) if answer else ((left, i), (right, j))
    return f"Is {a} to the right of {b}?", None, [[ia], [ib]]


def occlusion(scene: Scene, rng: np.random.Generator, answer: bool, subtype: str) -> Made:
    occludes = set(scene.occludes)
    if not occludes:
        return None  # a scene without occlusion has no positive, so it gets no pair
    if answer:
        pair = _ordered_pair(scene, rng, lambda i, j: (i, j) in occludes)
    else:
        unclear = occludes | set(scene.weak_occludes)
        pair = None
        if rng.random() < 0.5:
            # The reverse of a real occlusion is the hardest negative.
            pair = _ordered_pair(
                scene, rng, lambda i, j: (j, i) in occludes and (i, j) not in unclear
            )
        if pair is None:
            pair = _ordered_pair(scene, rng, lambda i, j: (i, j) not in unclear)
    if pair is None:
        return None
    return f"Is {pair[2]} occluding {pair[3]}?", None, [[pair[0]], [pair[1]]]


def depth(scene: Scene, rng: np.random.Generator, answer: bool, subtype: str) -> Made:
    dist = [o.distance for o in scene.objects]
    if answer:
        pair = _ordered_pair(scene, rng, lambda i, j: dist[j] - dist[i] >= DEPTH_MARGIN)
    else:
        pair = _ordered_pair(scene, rng, lambda i, j: dist[i] - dist[j] >= DEPTH_MARGIN)
    if pair is None:
        return None
    return f"Is {pair[2]} closer to the camera than {pair[3]}?", None, [[pair[0]], [pair[1]]]


MAKERS: dict[str, Callable[[Scene, np.random.Generator, bool, str], Made]] = {
    "existence": existence,
    "attribute": attribute,
    "count": count,
    "spatial": spatial,
    "occlusion": occlusion,
    "depth": depth,
}


def color_choice(
    scene: Scene, rng: np.random.Generator
) -> tuple[str, list[str], str, list[list[int]]] | None:
    """("What color is the …?", four colours, correct letter, [[the object]]), or None."""
    order = rng.permutation(len(scene.objects))
    for i in order:
        ref = referring_expression(scene, int(i), exclude=["color"])
        if ref is None:
            continue
        true = scene.objects[int(i)].color
        others = [str(c) for c in rng.choice([c for c in VALUES["color"] if c != true], 3, False)]
        slot = int(rng.integers(len(CHOICE_SLOTS)))
        choices = [*others[:slot], true, *others[slot:]]
        return f"What color is {ref}?", choices, CHOICE_SLOTS[slot], [[int(i)]]
    return None


# --- all families ----------------------------------------------------------------------------


def question_form(family: str, text: str) -> str | None:
    """What a pair's "yes" and "no" questions share, so that it says nothing of the answer.

    Count: the number word and the number of words (unmatched, "exactly one" was "yes" 73 % of
    the time and "exactly three" 23 %, and with the number word alone matched, a question-only
    baseline still read 62 % of count answers from how many attributes the phrase has);
    existence: the number of words (unmatched, a one-attribute "Is there a cube?" was always
    "yes").
    """
    if family == "count":
        return f"{text.split(' exactly ')[1].split()[0]} {len(text.split())}"
    if family == "existence":
        return str(len(text.split()))
    return None


# The answer made first in a pair; the other is drawn until its form matches. Existence negatives
# are the constrained half (POPE's kinds), and any attribute count has a positive.
_FIRST_ANSWER = {"existence": False}


def _make_pair(
    scene: Scene, rng: np.random.Generator, family: str, subtype: str, seen: set[str]
) -> dict[bool, tuple[str, str | None, list[list[int]]]] | None:
    """A "yes" and a "no" question of one family of the same form, both new, or None."""
    first = _FIRST_ANSWER.get(family, True)
    pair: dict[bool, tuple[str, str | None, list[list[int]]]] = {}
    for answer in (first, not first):
        for _ in range(_TRIES):
            made = MAKERS[family](scene, rng, answer, subtype)
            if made is None or made[0] in seen:
                continue
            if pair and (
                made[0] == pair[first][0]
                or question_form(family, made[0]) != question_form(family, pair[first][0])
            ):
                continue
            pair[answer] = made
            break
        else:
            return None
    return pair


def generate_questions(
    scene: Scene,
    rng: np.random.Generator,
    per_family: int = 1,
    families: Iterable[str] | None = None,
) -> list[Question]:
    """Up to ``per_family`` yes/no pairs (or choice questions) per family, without repeats."""
    image = f"images/{scene.image_filename}"
    prefix = f"{scene.split}_{scene.index:06d}"
    questions: list[Question] = []
    seen: set[str] = set()

    def add(text: str, label: str, family: str, **extra: object) -> None:
        seen.add(text)
        qid = f"{prefix}_q{len(questions):03d}"
        questions.append(Question(image, text, label, family, scene.index, id=qid, **extra))

    for family in FAMILIES if families is None else families:
        if family not in FAMILIES:
            raise ConfigError(f"unknown question family {family!r}; known: {FAMILIES}")
        for k in range(per_family):
            if family == "color_choice":
                for _ in range(_TRIES):
                    made = color_choice(scene, rng)
                    if made is not None and made[0] not in seen:
                        add(made[0], made[2], family, choices=made[1], mentions=made[3])
                        break
                continue
            # Cycling the subtype by scene keeps POPE's three negative kinds evenly represented;
            # a kind that does not fit this scene falls through to the next.
            n = len(EXISTENCE_SUBTYPES) if family == "existence" else 1
            subtypes = [EXISTENCE_SUBTYPES[(scene.index + k + s) % n] for s in range(n)]
            pair = None
            for subtype in subtypes:
                pair = _make_pair(scene, rng, family, subtype, seen)
                if pair is not None:
                    break
            if pair is None:
                continue
            for answer in rng.permutation([True, False]):
                text, sub, mentions = pair[bool(answer)]
                add(text, "yes" if answer else "no", family, subtype=sub, mentions=mentions)
    return questions
