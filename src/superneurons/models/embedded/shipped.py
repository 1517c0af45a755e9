"""Where the shipped embedded model lives: a standard checkpoint inside the package."""

from __future__ import annotations

from pathlib import Path

WEIGHTS_DIR = Path(__file__).parent / "weights"


def default_model_dir() -> Path:
    """Local directory of the embedded default model (loadable with the Auto classes)."""
    if not (WEIGHTS_DIR / "config.json").is_file():
        raise FileNotFoundError(
            f"No embedded model in {WEIGHTS_DIR}: train one with `python -m training "
            "--ship`, or reinstall the package."
        )
    return WEIGHTS_DIR
