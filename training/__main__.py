"""``python -m training``: train the embedded default model on synthetic scenes.

Bad options and inputs are one line on stderr, exit status 2, as in the ``superneurons`` CLI.
"""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.console import Console

from superneurons.cli import main

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, help=__doc__)
console = Console(stderr=True)


@app.command()
def train_default(
    out: Path = typer.Option(
        Path("runs/train-default"), help="Pools, checkpoints, log and the exported model."
    ),
    seed: int = typer.Option(0),
    scenes: int = typer.Option(None, min=1, help="Training scenes (default: the recipe's)."),
    draws: int = typer.Option(None, min=1, help="Question draws per training scene."),
    val_scenes: int = typer.Option(None, min=1, help="Held-out scenes for the evaluations."),
    vision_steps: int = typer.Option(None, min=1, help="Stage 1 (vision tower) steps."),
    steps: int = typer.Option(None, min=1, help="Stage 2 (projector + decoder) steps in all."),
    existence_steps: int = typer.Option(
        None, min=0, help="The first stage-2 steps, on existence questions only."
    ),
    decay_steps: int = typer.Option(
        None, min=1, help="The last stage-2 steps, learning rate decaying to a tenth."
    ),
    end_of_turn_steps: int = typer.Option(
        None, min=0, help="The last stage-2 steps, also learning the end-of-turn token."
    ),
    batch: int = typer.Option(None, min=1, help="Stage 2 questions per step."),
    lr: float = typer.Option(None, help="Stage 2 peak learning rate."),
    eval_every: int = typer.Option(None, min=1, help="Held-out evaluation every N steps."),
    max_minutes: float = typer.Option(
        None, help="Stop after this many minutes in this run (rerun to resume)."
    ),
    device: str = typer.Option("cpu", help="cpu, cuda or auto."),
    workers: int = typer.Option(2, min=1, help="Processes rendering the scene pool."),
    ship: bool = typer.Option(
        False, help="Replace the package's shipped weights (the checkout's, if installed editable)."
    ),
) -> None:
    """Train the embedded default model (resumes from what OUT holds)."""
    from superneurons.models.loading import pick_device
    from training import train

    given = {
        "scenes": scenes,
        "draws": draws,
        "val_scenes": val_scenes,
        "vision_steps": vision_steps,
        "steps": steps,
        "existence_steps": existence_steps,
        "decay_steps": decay_steps,
        "end_of_turn_steps": end_of_turn_steps,
        "batch": batch,
        "lr": lr,
        "eval_every": eval_every,
    }
    config = train.TrainConfig(
        seed=seed,
        max_minutes=max_minutes,
        device=str(pick_device(device)),
        workers=workers,
        **{k: v for k, v in given.items() if v is not None},
    )

    def log(message: str) -> None:
        console.print(f"{time.strftime('%H:%M:%S')} {message}", soft_wrap=True)

    exported = train.train_default(out, config, log=log)
    if exported is not None and ship:
        train.ship(exported)
        console.print(f"shipped {exported} into {train.WEIGHTS_DIR}")


if __name__ == "__main__":
    main(app=app, prog_name="python -m training")
