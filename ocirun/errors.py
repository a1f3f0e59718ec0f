"""The one exception type that carries a message for the user.

The message is for people; code that must tell failures apart looks at `errno` (the
kernel's, when a system call failed) or `kind` (a name from the raising module),
never at the text.
"""

from __future__ import annotations


class OciError(Exception):
    """An error the CLI prints as one line and turns into a non-zero exit."""

    def __init__(self, message: str, exit_code: int = 1, *, errno: int | None = None,
                 kind: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
        self.errno = errno
        self.kind = kind


class ConfigError(OciError):
    """config.json is invalid; `path` is the JSON path of the offending value."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"config.json: {path}: {problem}")
        self.path = path
        self.problem = problem
