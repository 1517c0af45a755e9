"""Run the ``superneurons`` command line as a real process."""

from __future__ import annotations

import os
import subprocess
import sys


def superneurons(
    *args: str, env: dict | None = None, cwd: str | os.PathLike | None = None
) -> subprocess.CompletedProcess:
    """``python -m superneurons ARGS`` (in ``cwd``) with ``env`` added to the environment."""
    return subprocess.run(
        [sys.executable, "-m", "superneurons", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )
