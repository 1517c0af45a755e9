"""The error hierarchy's contract beyond the CLI: errors cross a process boundary whole."""

from __future__ import annotations

import pickle

import pytest

from superneurons.errors import ConfigError, DataError, problems_error


@pytest.mark.parametrize(
    "error",
    [ConfigError("--port 0: refused"), problems_error(DataError, "x.jsonl", ["a", "b", "c"])],
)
def test_an_error_survives_pickling_with_its_class_and_problems(error):
    # The server's model process sends its errors back to the HTTP process pickled.
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is type(error) and str(back) == str(error)
    assert back.problems == error.problems and isinstance(back, ValueError)
