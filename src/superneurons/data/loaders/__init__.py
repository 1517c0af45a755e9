"""Dataset loaders: each reads a dataset's files as distributed (or a common parquet mirror) and
yields binary ``Record``s; ``load_task`` picks one by task name. Layouts: docs/datasets.md."""

from superneurons.data.loaders.aokvqa import load_aokvqa
from superneurons.data.loaders.clevr import load_clevr
from superneurons.data.loaders.instaorder import load_instaorder
from superneurons.data.loaders.pope import load_pope
from superneurons.data.loaders.registry import (
    TASKS,
    TaskSpec,
    label_counts,
    load_jsonl_task,
    load_task,
    select,
    task,
)
from superneurons.data.loaders.scenes import load_scenes
from superneurons.data.loaders.scienceqa import load_scienceqa
from superneurons.data.loaders.vizwiz import load_vizwiz

__all__ = [
    "TASKS",
    "TaskSpec",
    "label_counts",
    "load_aokvqa",
    "load_clevr",
    "load_instaorder",
    "load_jsonl_task",
    "load_pope",
    "load_scenes",
    "load_scienceqa",
    "load_task",
    "load_vizwiz",
    "select",
    "task",
]
