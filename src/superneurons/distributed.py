"""Running under PyTorch's launchers: ``torchrun`` or ``accelerate launch``, one process a rank.

A launcher starts every rank with ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` in its
environment; :func:`launched` reads them (None without a launcher, and then nothing here runs).
The ranks meet through ``torch.distributed`` (gloo on the CPU, nccl on CUDA): rank 0 alone does
what must happen once (claim the output, generate the scenes, check the inputs) while the others
wait, and every rank's outcome is gathered before anyone goes on, so that a user error on one
rank ends all of them with that one error instead of a hang.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist

from superneurons.errors import ConfigError, SuperneuronsError

# How long a rank waits for the others at a meeting point: a resumed rank may have much less
# left to extract than the rest, and a launcher ends every rank as soon as one of them dies.
TIMEOUT = timedelta(hours=12)

T = TypeVar("T")


class OtherRankFailed(SuperneuronsError):
    """Another rank failed and reported why; this rank stops without repeating it."""

    def __init__(self) -> None:
        super().__init__("another rank failed")
        self.problems = []  # the failing rank prints the error; the CLI prints nothing here


@dataclass(frozen=True)
class Ranks:
    """This process's place among the launched ranks."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int

    @property
    def leader(self) -> bool:
        """Whether this is rank 0, which merges, discovers, evaluates and writes the results."""
        return self.rank == 0

    def device(self, device: str) -> str:
        """The rank's device for the ``--device`` given: ``cuda`` (or auto on a GPU machine)
        becomes ``cuda:LOCAL_RANK``, one GPU a rank; anything else is used as given."""
        from superneurons.models.loading import pick_device

        chosen = pick_device(device)
        if chosen.type != "cuda" or chosen.index is not None:
            return str(chosen)
        if self.local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"rank {self.rank} is local rank {self.local_rank}, but this node has "
                f"{torch.cuda.device_count()} GPU(s): launch at most one rank per GPU"
            )
        return f"cuda:{self.local_rank}"


def launched() -> Ranks | None:
    """The ranks a launcher started this process among, or None (no launcher, or one rank)."""
    names = ("WORLD_SIZE", "RANK", "LOCAL_RANK")
    if int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1:
        return None
    try:
        world, rank, local = (int(os.environ[name]) for name in names)
    except (KeyError, ValueError):
        given = {name: os.environ.get(name) for name in names}
        raise ConfigError(f"a launcher's environment needs integers {names}, got {given}") from None
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    if not 0 <= rank < world:
        raise ConfigError(f"RANK={rank} is not in 0..WORLD_SIZE-1 = 0..{world - 1}")
    return Ranks(rank, world, local, local_world)


def join(device: str) -> None:
    """Join the launched ranks' process group (once a process): nccl for a CUDA device, gloo
    otherwise; the launcher's ``MASTER_ADDR``/``MASTER_PORT`` say where to meet."""
    if dist.is_initialized():
        return
    chosen = torch.device(device)
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
    dist.init_process_group("nccl" if chosen.type == "cuda" else "gloo", timeout=TIMEOUT)
    atexit.register(_leave)


def _leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _gather(outcome: object) -> list[object]:
    gathered: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, outcome)
    return gathered


def together(work: Callable[[], T]) -> T:
    """Run ``work`` on every rank and wait until all have finished it. When any rank fails,
    that rank raises its error and the others raise :class:`OtherRankFailed`."""
    try:
        result = work()
    except BaseException:
        _gather(False)
        raise
    if not all(_gather(True)):
        raise OtherRankFailed
    return result


def leader_first(ranks: Ranks, work: Callable[[], T]) -> T | None:
    """Run ``work`` on rank 0 while the others wait; its result on rank 0, None elsewhere.
    When it fails there, rank 0 raises the error and the others :class:`OtherRankFailed`."""
    return together(work if ranks.leader else lambda: None)


def error_prefix() -> str | None:
    """How this process prefixes a user error: "" without a launcher and on rank 0; None (say
    nothing) on another rank before the ranks have met, since every rank checked the same options
    and rank 0 reports them; "rank N: " on another rank afterwards, for its own failures."""
    try:
        ranks = launched()
    except ConfigError:
        ranks = None
    if ranks is None or ranks.leader:
        return ""
    return f"rank {ranks.rank}: " if dist.is_initialized() else None
