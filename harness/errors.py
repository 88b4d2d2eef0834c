"""The small exception family every command turns into a one-line message and exit code 2."""

from __future__ import annotations

__all__ = ["HarnessError", "ConfigError", "DataError", "SpaceError", "StudyError"]


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
