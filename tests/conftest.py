"""Shared test setup.

Puts ``tests/`` on ``sys.path`` so that any test can import the reusable helpers that live
beside the tests, whatever pytest's import mode: ``from models.tiny import tiny_llava``; and
the repository root, for the training tool (``from training import train``).
"""

from __future__ import annotations

import sys
from pathlib import Path

_TESTS = str(Path(__file__).resolve().parent)
_ROOT = str(Path(__file__).resolve().parents[1])  # the training tool (training/) lives here
for _path in (_TESTS, _ROOT):
    if _path not in sys.path:
        sys.path.insert(0, _path)


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_llava_checkpoint(tmp_path_factory):
    """The tiny random-weight LLaVA saved as a real checkpoint directory."""
    from models.tiny import tiny_llava

    path = tmp_path_factory.mktemp("tiny-llava")
    tiny = tiny_llava()
    tiny.model.save_pretrained(path)
    tiny.processor.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_run(tiny_llava_checkpoint, tmp_path_factory):
    """A finished `run` of the whole method with the tiny LLaVA: (output dir, results)."""
    from superneurons.pipeline import RunConfig, run

    out = tmp_path_factory.mktemp("tiny-run")
    config = RunConfig(
        model=str(tiny_llava_checkpoint), n_probe=24, n_val=16, batch_size=8, max_new_tokens=3
    )
    return out, run(config, out, log=lambda *_: None)
