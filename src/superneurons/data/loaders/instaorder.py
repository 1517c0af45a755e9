"""InstaOrder (Lee & Park 2022): occlusion and depth order between pairs of COCO 2017 instances.

Layout of ``data_dir`` (COCO 2017 with InstaOrder's files beside its annotations)::

    annotations/InstaOrder_{train,val}2017.json
    annotations/instances_{train,val}2017.json
    {train,val}2017/{image_id:012}.jpg

(the two JSON files may also sit directly in ``data_dir``). InstaOrder names instances by their
index in ``instance_ids`` (COCO annotation ids); an occlusion order "i<j" means i occludes j
("i<j & j<i": each occludes the other), a depth order "i<j" means i is nearer ("i=j": as near).

Binary questions about a pair of instances named by their COCO categories:

- occlusion: "Is the {a} occluding the {b}?" — for "i<j", "yes" for (i, j) and "no" for (j, i);
  mutual occlusion is skipped;
- depth: "Is the {a} closer to the camera than the {b}?" — for "i<j", "yes" for (i, j) and "no"
  for (j, i); "i=j" is skipped.

A pair is dropped when its two categories are the same or when either category occurs more than
once among the image's COCO instances, because then the name does not say which instance is
meant; so is a pair whose orders contradict each other (both "i<j" and "j<i" listed). Every kept
pair gives one "yes" and one "no", so the questions are balanced. ``extra`` keeps the annotation
ids and boxes, for a prompt that marks the instances instead.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from superneurons.data.loaders.common import (
    first_existing,
    need,
    read_coco_instances,
    read_json,
    unique_ids,
)
from superneurons.data.records import DataError, Record
from superneurons.errors import ConfigError

SPLITS = ("train", "val")
RELATIONS = ("occlusion", "depth")
QUESTIONS = {
    "occlusion": "Is the {a} occluding the {b}?",
    "depth": "Is the {a} closer to the camera than the {b}?",
}
_ORDER = re.compile(r"^\s*(\d+)\s*([<=])\s*(\d+)\s*$")


def _parse(order: object, relation: str, where: str) -> tuple[int, int, str]:
    """(i, j, kind) of an order string; kind is "<", "=" or "mutual"."""
    if not isinstance(order, str):
        raise DataError(f"{where}: 'order' should be a string, got {order!r}")
    parts = [p.strip() for p in order.split("&")]
    matches = [_ORDER.match(p) for p in parts]
    if not all(matches) or len(parts) > 2:
        raise DataError(f"{where}: cannot parse {relation} order {order!r}")
    i, kind, j = matches[0].groups()
    if len(parts) == 2:
        kind = "mutual"
    elif kind == "=" and relation == "occlusion":
        raise DataError(f"{where}: occlusion order {order!r} cannot be '='")
    return int(i), int(j), kind


def load_instaorder(
    data_dir: str | Path, split: str, seed: int = 0, relation: str = "occlusion"
) -> list[Record]:
    """Balanced yes/no questions on the ``relation`` ("occlusion" or "depth") of instance pairs."""
    del seed  # nothing is drawn
    if relation not in RELATIONS:
        raise ConfigError(f"unknown InstaOrder relation {relation!r}; known: {RELATIONS}")
    if split not in SPLITS:
        raise ConfigError(f"InstaOrder splits are {SPLITS}; got {split!r}")
    data_dir = Path(data_dir)
    folders = [data_dir / "annotations", data_dir]
    order_path = first_existing(
        [d / f"InstaOrder_{split}2017.json" for d in folders], f"InstaOrder {split} orders"
    )
    coco_path = first_existing(
        [d / f"instances_{split}2017.json" for d in folders], f"COCO {split}2017 instances"
    )
    images = first_existing([data_dir / f"{split}2017"], f"COCO {split}2017 images")
    coco = read_coco_instances(coco_path)
    per_image = coco.by_image()
    entries = need(read_json(order_path), "annotations", str(order_path), list)

    records = []
    for n, entry in enumerate(entries):
        where = f"{order_path}: annotations[{n}]"
        image_id = need(entry, "image_id", where, int)
        instance_ids = need(entry, "instance_ids", where, list)
        orders = need(entry, relation, where, list)
        if image_id not in coco.file_names:
            raise DataError(f"{where}: image_id {image_id} is not in {coco_path}")
        for ann_id in instance_ids:
            if ann_id not in coco.annotations:
                raise DataError(f"{where}: instance id {ann_id} is not in {coco_path}")
        counts = Counter(coco.annotations[a][1] for a in per_image.get(image_id, []))

        # Gather every order of a pair first: a pair listed both ways is contradictory.
        pairs: dict[frozenset, set[tuple[int, int, str]]] = {}
        for m, item in enumerate(orders):
            at = f"{where}.{relation}[{m}]"
            i, j, kind = _parse(need(item, "order", at), relation, at)
            if max(i, j) >= len(instance_ids) or i == j:
                raise DataError(f"{at}: order {item['order']!r} does not fit {instance_ids}")
            pairs.setdefault(frozenset((i, j)), set()).add((i, j, kind))
        for found in pairs.values():
            if len(found) != 1:
                continue
            ((i, j, kind),) = found
            if kind != "<":
                continue
            a, b = instance_ids[i], instance_ids[j]
            cat_a, cat_b = coco.annotations[a][1], coco.annotations[b][1]
            if cat_a == cat_b or counts[cat_a] > 1 or counts[cat_b] > 1:
                continue
            for first, second, label in ((a, b, "yes"), (b, a, "no")):
                names = [coco.categories[coco.annotations[x][1]] for x in (first, second)]
                records.append(
                    Record(
                        id=f"instaorder-{relation}-{image_id}-{first}-{second}",
                        image=images / coco.file_names[image_id],
                        question=QUESTIONS[relation].format(a=names[0], b=names[1]),
                        label=label,
                        family=f"instaorder-{relation}",
                        extra={
                            "image_id": image_id,
                            "annotation_ids": [first, second],
                            "categories": names,
                            "boxes": [coco.annotations[x][2] for x in (first, second)],
                            "order": f"{i}<{j}",
                        },
                    )
                )
    return unique_ids(records, order_path)
