"""Signal names and numbers without the `signal` module.

`signal` wraps `_signal` in IntEnums, and importing `enum` costs milliseconds on every
command; the runtime only needs the numbers, and names for messages and `kill`.
"""

from __future__ import annotations

from ocirun.compat import signal as _signal

_ALIASES = ("SIGIOT", "SIGPOLL", "SIGCLD")  # second names of SIGABRT, SIGIO, SIGCHLD
_by_name: dict[str, int] = {}


def _table() -> dict[str, int]:
    if not _by_name:
        for name in dir(_signal):
            if name.startswith("SIG") and not name.startswith("SIG_"):
                _by_name[name] = getattr(_signal, name)
    return _by_name


def number(name: str) -> int | None:
    """The number of "SIGTERM"; None for a name this system does not have."""
    return _table().get(name)


def name(signum: int) -> str:
    """"SIGTERM" for 15; the number as text for one without a name."""
    for candidate, value in _table().items():
        if value == signum and candidate not in _ALIASES:
            return candidate
    return str(signum)
