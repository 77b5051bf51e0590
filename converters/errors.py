"""The one exception every converter raises for bad input.

Command-line tools catch it and print ``str(error)`` as a single line, so its
message always names the file and, where known, the source layer.
"""

from __future__ import annotations

from os import PathLike


class ConversionError(Exception):
    """Bad or unexpected input: a one-line, user-facing message."""

    def __init__(self, path: str | PathLike | None, problem: str, *, layer: str | None = None) -> None:
        self.path = None if path is None else str(path)
        self.problem = problem
        self.layer = layer
        where = self.path or "<input>"
        if layer:
            where += f": layer '{layer}'"
        super().__init__(f"{where}: {problem}")
