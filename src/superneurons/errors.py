"""The errors bad input raises: the CLI prints their message as one line and exits with status 2.

Everything else that escapes is a bug and keeps its traceback. Each class also derives from the
built-in exception callers caught before this hierarchy existed (ValueError, FileNotFoundError),
so ``except ValueError`` around a call keeps working.
"""

from __future__ import annotations


class SuperneuronsError(Exception):
    """Bad input or a refused request; the message names the file, line, key or option."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        # Validation reports every problem it found at once; the CLI prints one line each.
        self.problems = list(problems) if problems else [message]


class ConfigError(SuperneuronsError, ValueError):
    """An option or parameter has a value that cannot work (names the option)."""


class DataError(SuperneuronsError, ValueError):
    """A dataset file, record or image is malformed (names the file, line or key)."""


class ModelError(SuperneuronsError, ValueError):
    """A model cannot be loaded or does not match what it is used with."""


class StoreError(SuperneuronsError, ValueError):
    """An activation store is missing, unfinished, corrupt or from another extraction."""


class ClassifierError(SuperneuronsError, ValueError):
    """A saved classifier is malformed or does not fit the model or store it is used with."""


class OutputError(SuperneuronsError):
    """An output path is refused: it holds data superneurons did not write, overlaps an input,
    is in use by another process, or the disk has no room for it."""


def problems_error(
    kind: type[SuperneuronsError], what: str, problems: list[str], shown: int = 20
) -> SuperneuronsError:
    """One error carrying every problem found in ``what`` (the first ``shown`` of them listed)."""
    if len(problems) == 1:
        return kind(problems[0])
    listed = problems[:shown]
    if len(problems) > shown:
        listed.append(f"{what}: and {len(problems) - shown} more problems")
    return kind(f"{what}: {len(problems)} problems: " + "; ".join(problems[:3]), listed)
