"""The project's error types: one base that every command reports as a single line.

Command lines (through ``converters.cli.run_main``) catch :class:`DeeplabError` and print
``error: <message>`` on stderr with exit status 1, so a message names the file and the problem.
Library code raises a subclass (or ``DeeplabError`` itself) for bad input; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

from os import PathLike


class DeeplabError(Exception):
    """Bad input or an unmet precondition: a one-line, user-facing message (exit 1 on the command line)."""


class ReportedError(DeeplabError):
    """A failure already reported on stderr (e.g. one ``error: ...`` line per bad file): exit 1, nothing more printed."""


class UsageError(DeeplabError):
    """Arguments that parse but do not go together, found after parsing (exit 2, like argparse's errors)."""


class ConversionError(DeeplabError):
    """A weights file that cannot be converted: names the file and, where known, the source layer."""

    def __init__(self, path: str | PathLike | None, problem: str, *, layer: str | None = None) -> None:
        self.path = None if path is None else str(path)
        self.problem = problem
        self.layer = layer
        where = self.path or "<input>"
        if layer:
            where += f": layer '{layer}'"
        super().__init__(f"{where}: {problem}")


class OutputError(DeeplabError):
    """An output that could not be written or did not read back as written (full disk, a file-size limit, a
    writer that failed silently): names the final file, under which nothing was put."""

    def __init__(self, path: str | PathLike, problem: str) -> None:
        self.path = str(path)
        self.problem = " ".join(str(problem).split())
        super().__init__(f"{self.path}: {self.problem}")
