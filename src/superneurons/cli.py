"""The ``superneurons`` command line: a thin shell over the Python API."""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.console import Console

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help=__doc__, pretty_exceptions_enable=False
)
console = Console(stderr=True)
# Bad input raises these with a message naming what and where; the CLI prints it, no traceback.
USER_ERRORS = (ValueError, FileNotFoundError, KeyError, RuntimeError)


@app.command()
def scenes(
    out: Path = typer.Option(..., help="Output directory (images/, questions.jsonl, scenes.json)."),
    n_scenes: int = typer.Option(100, "--scenes", min=1, help="Number of scenes."),
    seed: int = typer.Option(0, help="Seed: the same seed gives the same bytes."),
    split: str = typer.Option("train", help="train, val or test (never overlapping)."),
    resolution: int = typer.Option(64, min=16, help="Image side in pixels."),
    min_objects: int = typer.Option(3, min=1),
    max_objects: int = typer.Option(6, min=1),
    per_family: int = typer.Option(1, min=1, help="Yes/no pairs per family and scene."),
) -> None:
    """Write a synthetic CLEVR-like scene dataset with balanced questions."""
    from superneurons.data.scenes import write_scene_dataset

    write_scene_dataset(
        out, n_scenes, seed, split, resolution, min_objects, max_objects, per_family=per_family
    )
    n_questions = sum(1 for _ in (out / "questions.jsonl").open())
    console.print(f"wrote {n_scenes} scenes and {n_questions} questions to {out}")


@app.command("train-default")
def train_default(
    out: Path = typer.Option(
        Path("runs/train-default"), help="Checkpoints, log and exported weights."
    ),
    seed: int = typer.Option(0),
    vision_steps: int = typer.Option(400, help="Stage 1 (vision tower + projector) steps."),
    qa_steps: int = typer.Option(750, help="Stage 2 (LoRA question answering) steps."),
    max_minutes: float = typer.Option(None, help="Stop stage 2 after this many minutes in all."),
    ship: bool = typer.Option(False, help="Copy the exported weights into the installed package."),
) -> None:
    """Train the embedded default model on synthetic scenes (resumes from OUT/checkpoint.pt)."""
    import time

    from superneurons.models.embedded import train

    config = train.TrainConfig(
        seed=seed, vision_steps=vision_steps, qa_steps=qa_steps, max_minutes=max_minutes
    )

    def log(message: str) -> None:
        console.print(f"{time.strftime('%H:%M:%S')} {message}")

    weights = train.train_default(out, config, log=log)
    if ship:
        train.ship(weights)
        console.print(f"shipped {weights} into {train.WEIGHTS_DIR}")


def main() -> None:
    """Console entry point: user errors become one line on stderr and exit status 1."""
    try:
        app(prog_name="superneurons")
    except USER_ERRORS as error:
        if os.environ.get("SUPERNEURONS_DEBUG"):
            raise
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        console.print(f"[bold red]error:[/] {message}", highlight=False)
        raise SystemExit(1) from None
