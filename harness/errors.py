"""The small exception family every command turns into a one-line message and exit code 2."""

from __future__ import annotations

from pathlib import Path

__all__ = ["HarnessError", "ConfigError", "DataError", "SpaceError", "StudyError", "DiskFull"]


class HarnessError(Exception):
    """A problem with the user's input; the CLI prints it on one line per problem and exits with 2."""

    exit_code = 2

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        self.problems = problems or [message]
        super().__init__(message if len(self.problems) == 1 else "\n".join(self.problems))


class ConfigError(HarnessError):
    """A config file or override breaks the schema."""


class DataError(HarnessError):
    """The data set cannot be read or breaks an invariant (missing root, split leakage, ...)."""


class SpaceError(HarnessError):
    """A search-space file names an unknown key, a wrong distribution or an empty range."""


class StudyError(HarnessError):
    """A study cannot give what was asked (no completed trial, unknown study name, ...)."""


class DiskFull(HarnessError):
    """A write found its disk full (ENOSPC) or its quota used up (EDQUOT); `folder` is where it was writing.

    Not a DataError: a full disk is no fault of the video being cached, so nothing that skips bad videos
    may swallow it. Its message starts "disk full: <folder>" (harness.io writes it).
    """

    def __init__(self, message: str, folder: Path | None = None) -> None:
        # A DataLoader worker's error reaches the main process rebuilt from "Caught DiskFull in DataLoader worker
        # process 0." and the worker's traceback, without `folder`; the traceback's last such line is our own.
        own = [line[line.index("disk full: "):] for line in message.splitlines() if "disk full: " in line]
        super().__init__(own[-1] if own else message)
        self.folder = folder
