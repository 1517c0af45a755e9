"""Shared test setup.

Puts ``tests/`` on ``sys.path`` so that any test can import the reusable helpers that live
beside the tests, whatever pytest's import mode: ``from models.tiny import tiny_llava``.
"""

from __future__ import annotations

import sys
from pathlib import Path

_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)
