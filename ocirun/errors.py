"""The one exception type that carries a message for the user."""

from __future__ import annotations


class OciError(Exception):
    """An error the CLI prints as one line and turns into a non-zero exit."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


class ConfigError(OciError):
    """config.json is invalid; `path` is the JSON path of the offending value."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"config.json: {path}: {problem}")
        self.path = path
        self.problem = problem
