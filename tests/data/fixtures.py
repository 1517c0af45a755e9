"""Tiny dataset fixtures written in each dataset's real format (as distributed, and as the
Hugging Face parquet mirrors), with rendered scenes as images.

Each writer takes a root folder, lays the files out as the loader expects, and returns what a
test needs to know about them.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from superneurons.data.scenes import iter_scenes


@lru_cache(maxsize=1)
def scene_images(n: int = 8) -> tuple[np.ndarray, ...]:
    """``n`` small rendered scenes (64×64 RGB uint8)."""
    return tuple(render.image for _, render in iter_scenes(0, "train", n))


def save_image(path: Path, index: int) -> bytes:
    """Save scene ``index`` at ``path`` (format from the suffix) and return the file's bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    images = scene_images()
    Image.fromarray(images[index % len(images)]).save(path)
    return path.read_bytes()


def write_json(path: Path, data: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def write_parquet(path: Path, columns: dict[str, list]) -> Path:
    """A parquet file as the HF mirrors have it: the ``image`` column an Image feature of bytes."""
    import datasets

    path.parent.mkdir(parents=True, exist_ok=True)
    ds = datasets.Dataset.from_dict(columns)
    if "image" in columns:
        ds = ds.cast_column("image", datasets.Image())
    ds.to_parquet(str(path))
    return path


def image_cell(data: bytes | None) -> dict | None:
    return None if data is None else {"bytes": data, "path": None}


# --- POPE ------------------------------------------------------------------------------------

POPE_VARIANTS = ("random", "popular", "adversarial")
# Per image: (present object, absent object of the variant).
_POPE_OBJECTS = {
    "random": [("person", "kite"), ("car", "bear"), ("dog", "oven")],
    "popular": [("person", "chair"), ("car", "cup"), ("dog", "car")],
    "adversarial": [("person", "surfboard"), ("car", "traffic light"), ("dog", "frisbee")],
}


def pope_val_lines(variant: str) -> list[dict]:
    """The JSON lines of coco_pope_{variant}.json: a yes and a no question per image."""
    lines = []
    for k, (present, absent) in enumerate(_POPE_OBJECTS[variant]):
        image = f"COCO_val2014_{k + 1:012d}.jpg"
        for obj, label in ((present, "yes"), (absent, "no")):
            qid = len(lines) + 1
            lines.append(
                {
                    "question_id": qid,
                    "image": image,
                    "text": f"Is there a {obj} in the image?",
                    "label": label,
                }
            )
    return lines


def write_pope_val(root: Path, variants=POPE_VARIANTS, nested: bool = True) -> dict[str, list]:
    """coco_pope_{variant}.json (under output/coco/ when ``nested``) and val2014/ images."""
    out = {}
    for variant in variants:
        lines = pope_val_lines(variant)
        folder = root / "output" / "coco" if nested else root
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"coco_pope_{variant}.json").write_text(
            "".join(json.dumps(line) + "\n" for line in lines)
        )
        for line in lines:
            image = root / "val2014" / line["image"]
            if not image.exists():
                save_image(image, int(line["image"][-8:-4]))
        out[variant] = lines
    return out


def write_pope_parquet(root: Path, images: Path, variants=POPE_VARIANTS) -> Path:
    """lmms-lab/POPE's layout: one test parquet holding every variant, ``category`` the variant;
    the image bytes are those of ``images/``."""
    columns: dict[str, list] = {
        k: [] for k in ("id", "question_id", "question", "answer", "image_source", "image")
    }
    columns["category"] = []
    for variant in variants:
        for line in pope_val_lines(variant):
            columns["id"].append(str(len(columns["id"])))
            columns["question_id"].append(str(line["question_id"]))
            columns["question"].append(line["text"])
            columns["answer"].append(line["label"])
            columns["image_source"].append(line["image"][:-4])
            columns["image"].append(image_cell((images / line["image"]).read_bytes()))
            columns["category"].append(variant)
    return write_parquet(root / "data" / "test-00000-of-00001.parquet", columns)


# --- COCO instances (POPE train, InstaOrder) -------------------------------------------------

COCO_CATEGORIES = {
    1: "person",
    3: "car",
    18: "dog",
    17: "cat",
    48: "fork",
    49: "knife",
    47: "cup",
    6: "bus",
    38: "kite",
    62: "chair",
}


def write_coco_instances(
    path: Path, objects: dict[int, list[tuple[int, str]]], file_name: str
) -> Path:
    """An instances_*.json: ``objects`` maps image id → [(annotation id, category name)];
    ``file_name`` is a format string of the image id."""
    ids = {name: cid for cid, name in COCO_CATEGORIES.items()}
    images = [
        {"id": i, "file_name": file_name.format(i), "width": 64, "height": 64} for i in objects
    ]
    annotations = [
        {
            "id": ann_id,
            "image_id": image_id,
            "category_id": ids[name],
            "bbox": [float(k), float(k), 10.0, 12.0],
            "area": 120.0,
            "iscrowd": 0,
        }
        for image_id, anns in objects.items()
        for k, (ann_id, name) in enumerate(anns)
    ]
    categories = [
        {"id": cid, "name": name, "supercategory": "thing"} for cid, name in COCO_CATEGORIES.items()
    ]
    return write_json(
        path, {"images": images, "annotations": annotations, "categories": categories}
    )


# Image id → the categories annotated in it (car twice in image 1).
POPE_TRAIN_IMAGES = {
    1: ["person", "car", "car"],
    2: ["person", "car"],
    3: ["person", "dog", "knife"],
    4: ["fork", "knife"],
    5: ["fork", "knife", "cup"],
    6: ["fork", "cup"],
    7: ["person"],
    8: ["fork"],
}


def write_coco_train2014(root: Path) -> dict[int, set[str]]:
    """annotations/instances_train2014.json and train2014/ images; returns image → categories."""
    objects, ann_id = {}, 1
    for image_id, names in POPE_TRAIN_IMAGES.items():
        objects[image_id] = []
        for name in names:
            objects[image_id].append((ann_id, name))
            ann_id += 1
        save_image(root / "train2014" / f"COCO_train2014_{image_id:012d}.jpg", image_id)
    write_coco_instances(
        root / "annotations" / "instances_train2014.json", objects, "COCO_train2014_{:012d}.jpg"
    )
    return {i: set(names) for i, names in POPE_TRAIN_IMAGES.items()}


# --- VizWiz ----------------------------------------------------------------------------------

# (answer_type, answers) → the expected label, None when the question is skipped.
VIZWIZ_ENTRIES = [
    ("yes/no", ["yes"] * 7 + ["no"] * 3, "yes"),
    ("yes/no", ["no"] * 6 + ["yes"] * 4, "no"),
    ("yes/no", ["yes"] * 5 + ["no"] * 5, None),  # tie
    ("yes/no", ["unanswerable"] * 6 + ["yes"] * 4, None),  # majority is not yes/no
    ("other", ["red"] * 10, None),
    ("yes/no", ["Yes."] * 8 + ["no"] * 2, "yes"),  # normalised
]


def write_vizwiz(root: Path, split: str = "train") -> list[str | None]:
    """{split}.json and {split}/ images; returns the expected label of each entry."""
    entries = []
    for k, (answer_type, answers, _) in enumerate(VIZWIZ_ENTRIES):
        image = f"VizWiz_{split}_{k:08d}.jpg"
        save_image(root / split / image, k)
        entries.append(
            {
                "image": image,
                "question": f"Is this photo number {k}?",
                "answers": [{"answer": a, "answer_confidence": "yes"} for a in answers],
                "answer_type": answer_type,
                "answerable": 1,
            }
        )
    write_json(root / f"{split}.json", entries)
    return [label for _, _, label in VIZWIZ_ENTRIES]


# --- CLEVR -----------------------------------------------------------------------------------

CLEVR_ANSWERS = ["yes", "no", "2", "cube", "no", "yes"]


def write_clevr(root: Path, split: str = "val") -> Path:
    questions = []
    for k, answer in enumerate(CLEVR_ANSWERS):
        image = f"CLEVR_{split}_{k // 2:06d}.png"
        if k % 2 == 0:
            save_image(root / "images" / split / image, k)
        questions.append(
            {
                "image_index": k // 2,
                "image_filename": image,
                "question": f"Question {k} about the scene?",
                "answer": answer,
                "question_family_index": k % 3,
                "question_index": k,
                "split": split,
                "program": [],
            }
        )
    return write_json(
        root / "questions" / f"CLEVR_{split}_questions.json",
        {"info": {"split": split, "version": "1.0"}, "questions": questions},
    )


# --- A-OKVQA ---------------------------------------------------------------------------------

AOKVQA_QUESTIONS = [
    ("What is the animal doing?", ["sleeping", "eating", "running", "flying"], 1),
    ("What season is it?", ["winter", "summer", "spring", "fall"], 0),
    ("Why is the light red?", ["to stop cars", "it is broken", "for fun", "decoration"], 3),
]


def aokvqa_entries() -> list[dict]:
    return [
        {
            "split": "val",
            "image_id": 100 + k,
            "question_id": f"q{k}abc",
            "question": question,
            "choices": choices,
            "correct_choice_idx": answer,
            "direct_answers": [choices[answer]] * 10,
            "difficult_direct_answer": False,
            "rationales": ["because"],
        }
        for k, (question, choices, answer) in enumerate(AOKVQA_QUESTIONS)
    ]


def write_aokvqa(root: Path, split: str = "val") -> list[dict]:
    entries = aokvqa_entries()
    for k, entry in enumerate(entries):
        save_image(root / f"{split}2017" / f"{entry['image_id']:012d}.jpg", k)
    write_json(root / f"aokvqa_v1p0_{split}.json", entries)
    return entries


def write_aokvqa_parquet(root: Path, images: Path, split: str = "validation") -> Path:
    entries = aokvqa_entries()
    columns = {key: [e[key] for e in entries] for key in entries[0] if key != "split"}
    columns["image"] = [
        image_cell((images / f"{e['image_id']:012d}.jpg").read_bytes()) for e in entries
    ]
    return write_parquet(root / "data" / f"{split}-00000-of-00001.parquet", columns)


# --- ScienceQA -------------------------------------------------------------------------------

SCIENCEQA_PROBLEMS = {
    "11": ("train", True, "Which is a mammal?", ["frog", "shark", "dog"], 2, "Look at the map."),
    "12": ("train", False, "Which word is a noun?", ["run", "table"], 1, ""),
    "13": ("train", True, "Which object is magnetic?", ["nail", "eraser"], 0, ""),
    "14": ("val", True, "Which state is highlighted?", ["Ohio", "Utah", "Iowa"], 1, ""),
    "15": ("train", True, "What is the temperature?", ["hot", "cold", "warm", "mild"], 3, "It is"),
}


def _scienceqa_problem(split, has_image, question, choices, answer, hint) -> dict:
    return {
        "question": question,
        "choices": choices,
        "answer": answer,
        "hint": hint,
        "image": "image.png" if has_image else None,
        "task": "closed choice",
        "grade": "grade4",
        "subject": "natural science",
        "topic": "biology",
        "category": "Classification",
        "skill": "Identify mammals",
        "lecture": "",
        "solution": "",
        "split": split,
    }


def write_scienceqa(root: Path) -> dict[str, dict]:
    """problems.json and images/{split}/{pid}/image.png."""
    problems = {pid: _scienceqa_problem(*p) for pid, p in SCIENCEQA_PROBLEMS.items()}
    for k, (pid, problem) in enumerate(problems.items()):
        if problem["image"]:
            save_image(root / "images" / problem["split"] / pid / "image.png", k)
    write_json(root / "problems.json", problems)
    return problems


def write_scienceqa_parquet(root: Path, raw: Path) -> list[Path]:
    """derek-thomas/ScienceQA's layout (data/{train,validation}-….parquet), text-only problems
    kept with an empty image, image bytes those of the raw fixture at ``raw``."""
    problems = {pid: _scienceqa_problem(*p) for pid, p in SCIENCEQA_PROBLEMS.items()}
    out = []
    for split, name in (("train", "train"), ("val", "validation")):
        rows = [(pid, p) for pid, p in problems.items() if p["split"] == split]
        keys = [k for k in rows[0][1] if k not in ("image", "split")]
        columns = {key: [p[key] for _, p in rows] for key in keys}
        columns["image"] = [
            image_cell((raw / "images" / split / pid / "image.png").read_bytes())
            if p["image"]
            else None
            for pid, p in rows
        ]
        out.append(write_parquet(root / "data" / f"{name}-00000-of-00001.parquet", columns))
    return out


# --- InstaOrder ------------------------------------------------------------------------------

# Image 1: two cars (ambiguous); image 2: a contradictory depth pair.
INSTAORDER_COCO = {
    1: [(101, "person"), (102, "dog"), (103, "car"), (104, "car"), (105, "cat")],
    2: [(201, "person"), (202, "chair")],
}
INSTAORDER_ORDERS = [
    {
        "image_id": 1,
        "instance_ids": [101, 102, 103, 104, 105],
        "occlusion": [
            {"order": "0<1"},  # person occludes dog: kept
            {"order": "1<4 & 4<1"},  # mutual: skipped
            {"order": "2<3"},  # car / car: same category, skipped
            {"order": "0<2"},  # car occurs twice: skipped
            {"order": "4<0"},  # cat occludes person: kept
        ],
        "depth": [
            {"order": "0<1", "overlap": True, "count": 3},  # kept
            {"order": "0=4", "overlap": False, "count": 3},  # equal: skipped
            {"order": "3<0", "overlap": False, "count": 3},  # car occurs twice: skipped
            {"order": "4<1", "overlap": False, "count": 2},  # cat nearer than dog: kept
        ],
    },
    {
        "image_id": 2,
        "instance_ids": [201, 202],
        "occlusion": [{"order": "1<0"}],  # chair occludes person: kept
        "depth": [
            {"order": "0<1", "overlap": True, "count": 3},
            {"order": "1<0", "overlap": True, "count": 3},  # contradicts the one above
        ],
    },
]
# (annotation a, annotation b) → label, for the kept pairs.
INSTAORDER_EXPECTED = {
    "occlusion": {
        (101, 102): "yes",
        (102, 101): "no",
        (105, 101): "yes",
        (101, 105): "no",
        (202, 201): "yes",
        (201, 202): "no",
    },
    "depth": {(101, 102): "yes", (102, 101): "no", (105, 102): "yes", (102, 105): "no"},
}


def write_instaorder(root: Path, split: str = "val", orders: list | None = None) -> Path:
    """annotations/InstaOrder_{split}2017.json beside annotations/instances_{split}2017.json,
    and {split}2017/ images; returns the InstaOrder file."""
    for image_id in INSTAORDER_COCO:
        save_image(root / f"{split}2017" / f"{image_id:012d}.jpg", image_id)
    write_coco_instances(
        root / "annotations" / f"instances_{split}2017.json", INSTAORDER_COCO, "{:012d}.jpg"
    )
    return write_json(
        root / "annotations" / f"InstaOrder_{split}2017.json",
        {"info": {}, "annotations": INSTAORDER_ORDERS if orders is None else orders},
    )
