"""Datasets: synthetic scenes, questions and their ground truth."""

from superneurons.data.loaders import TASKS, load_task
from superneurons.data.records import Record, load_jsonl

__all__ = ["TASKS", "Record", "load_jsonl", "load_task"]
