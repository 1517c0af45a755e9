"""The tasks by name: where a task's records come from and how they are prompted.

Typical use::

    from superneurons.data.loaders import TASKS, label_counts, select

    probe = select("pope-adversarial", "data/coco", "train", n=3000, seed=0)  # balanced
    label_counts(probe)                  # {"no": 1500, "yes": 1500}
    TASKS["pope-adversarial"].template   # "llava"
    select("scenes", "runs/x/data", "val", n=600, seed=0)  # generated under runs/x/data
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from superneurons.data.loaders.aokvqa import load_aokvqa
from superneurons.data.loaders.clevr import load_clevr
from superneurons.data.loaders.instaorder import load_instaorder
from superneurons.data.loaders.pope import load_pope
from superneurons.data.loaders.scenes import DEFAULT_SIZES, load_scenes
from superneurons.data.loaders.scienceqa import load_scienceqa
from superneurons.data.loaders.vizwiz import load_vizwiz
from superneurons.data.probing import balanced_sample
from superneurons.data.records import DataError, Record, load_jsonl
from superneurons.data.scenes.questions import YES_NO_FAMILIES
from superneurons.errors import ConfigError

Loader = Callable[..., list[Record]]


@dataclass(frozen=True)
class TaskSpec:
    """A task: ``loader(data_dir, split, seed)`` gives its records; ``splits`` are the split
    names it accepts (empty: any name); ``template`` names the prompt template; ``sizes`` the
    default sample size per split (absent: all of it).

    A ``generated`` task writes its records under ``data_dir`` instead of reading them, and its
    loader also takes the number of records wanted (``loader(data_dir, split, seed, n)``).
    ``families`` names the families its records have, when that is known before reading them
    (so that a wrong name is refused before any work).
    """

    name: str
    loader: Loader
    template: str
    splits: tuple[str, ...]
    description: str
    sizes: Mapping[str, int] = field(default_factory=lambda: {"train": 3000})
    generated: bool = False
    families: tuple[str, ...] = ()

    def check_families(self, families: Sequence[str], what: str) -> None:
        """Refuse family names this task is known not to have (a ConfigError naming them)."""
        unknown = [f for f in families if self.families and f not in self.families]
        if unknown:
            raise ConfigError(
                f"{what}: task {self.name!r} has no family {unknown}; it has {list(self.families)}"
            )


def load_jsonl_task(data_dir: Path, split: str, seed: int = 0) -> list[Record]:
    """The generic JSON-lines format: ``data_dir`` is the .jsonl file, or a folder holding
    ``{split}.jsonl``."""
    del seed  # nothing is drawn
    path = data_dir if data_dir.is_file() else data_dir / f"{split}.jsonl"
    if not path.is_file():
        raise DataError(f"jsonl {split}: expected {path} (or pass the .jsonl file itself)")
    return load_jsonl(path)


_POPE = (
    "POPE, {variant} negatives: COCO val2014 questions (coco_pope_{variant}.json + val2014/, or "
    "lmms-lab/POPE parquet); train built from annotations/instances_train2014.json + train2014/"
)

TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in [
        TaskSpec(
            "scenes",
            load_scenes,
            "plain",
            ("train", "val", "test"),
            "synthetic CLEVR-like scenes, generated (docs/scenes.md)",
            sizes=DEFAULT_SIZES,
            generated=True,
            families=YES_NO_FAMILIES,
        ),
        *(
            TaskSpec(
                f"pope-{variant}",
                partial(load_pope, variant=variant),
                "llava",
                ("train", "val"),
                _POPE.format(variant=variant),
            )
            for variant in ("random", "popular", "adversarial")
        ),
        TaskSpec(
            "vizwiz",
            load_vizwiz,
            "llava",
            ("train", "val"),
            "VizWiz yes/no questions, majority answer: {train,val}.json + {train,val}/ images "
            "(or lmms-lab/VizWiz-VQA parquet)",
        ),
        TaskSpec(
            "clevr",
            load_clevr,
            "llava",
            ("train", "val"),
            "CLEVR v1.0 yes/no questions: questions/CLEVR_{split}_questions.json + images/{split}/",
        ),
        TaskSpec(
            "aokvqa",
            load_aokvqa,
            "llava",
            ("train", "val"),
            "A-OKVQA multiple choice as balanced yes/no: aokvqa_v1p0_{split}.json + "
            "{split}2017/ COCO images (or HuggingFaceM4/A-OKVQA parquet)",
        ),
        TaskSpec(
            "scienceqa",
            load_scienceqa,
            "llava",
            ("train", "val", "test"),
            "ScienceQA image problems as balanced yes/no: problems.json + "
            "images/{split}/<pid>/image.png (or derek-thomas/ScienceQA or lmms-lab/ScienceQA "
            "parquet)",
        ),
        *(
            TaskSpec(
                f"instaorder-{relation}",
                partial(load_instaorder, relation=relation),
                "llava",
                ("train", "val"),
                f"InstaOrder {relation} of instance pairs: "
                "annotations/InstaOrder_{split}2017.json + annotations/instances_{split}2017.json "
                "+ {split}2017/ COCO images",
            )
            for relation in ("occlusion", "depth")
        ),
        TaskSpec(
            "jsonl",
            load_jsonl_task,
            "plain",
            (),
            "generic JSON lines (see superneurons.data.records): a .jsonl file, or a folder "
            "with {split}.jsonl",
        ),
    ]
}


def task(name: str) -> TaskSpec:
    """The task ``name``; a ConfigError lists the known ones."""
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; known: {', '.join(TASKS)}")
    return TASKS[name]


def load_task(
    name: str, data_dir: str | Path, split: str, seed: int = 0, n: int | None = None
) -> list[Record]:
    """The records of ``split`` of task ``name`` from ``data_dir`` (for a generated task: written
    there, enough for a balanced sample of ``n``); ids are unique.

    An unknown task or split is a ConfigError listing the known ones; a missing directory or
    file is a DataError saying what was expected where.
    """
    spec = task(name)
    if spec.splits and split not in spec.splits:
        raise ConfigError(f"task {name!r} has splits {list(spec.splits)}; got {split!r}")
    data_dir = Path(data_dir)
    if spec.generated:
        return spec.loader(data_dir, split, seed, n)
    if not data_dir.exists():
        raise DataError(f"task {name!r}: {data_dir} does not exist; expected {spec.description}")
    return spec.loader(data_dir, split, seed)


def select(
    name: str,
    data_dir: str | Path,
    split: str,
    n: int | None = None,
    seed: int = 0,
    what: str = "sample",
    families: Sequence[str] | None = None,
) -> list[Record]:
    """The one way every command picks its records: a balanced, seeded sample of ``n`` binary
    records of ``split`` (``n`` None: the task's default size for the split, or all of it),
    of the ``families`` given only (None: every family)."""
    spec = task(name)
    n = n if n is not None else spec.sizes.get(split)
    records = load_task(name, data_dir, split, seed, n)
    if families is not None:
        kept = of_families(records, families, f"{what}: task {name!r} {split}")
        if spec.generated and n is not None and len(kept) < len(records):
            # A generated task makes enough questions of every family for n: ask for as many
            # more as the families kept are a smaller share of them.
            records = load_task(
                name, data_dir, split, seed, math.ceil(n * len(records) / len(kept))
            )
            kept = of_families(records, families, f"{what}: task {name!r} {split}")
        records = kept
    return records if n is None else balanced_sample(records, n, seed, what)


def of_families(records: list[Record], families: Sequence[str], where: str) -> list[Record]:
    """The records of ``families``; a family no record has is a ConfigError naming those
    there are."""
    present = sorted({r.family for r in records if r.family})
    if not present:
        raise ConfigError(f"{where}: the records have no families to choose from")
    unknown = [f for f in families if f not in present]
    if unknown or not families:
        raise ConfigError(f"{where}: no family {unknown or families!r}; the records have {present}")
    wanted = set(families)
    return [r for r in records if r.family in wanted]


def label_counts(records: list[Record]) -> dict[str, int]:
    """How many records carry each label, labels sorted."""
    return dict(sorted(Counter(r.label for r in records).items()))
