"""CPython's private C modules that ocirun uses instead of their public wrappers, in one
place, with the public module as the fallback.

The wrappers cost milliseconds on every command (`signal` and `socket` import `enum`,
`json` imports `re`, `hashlib` loads OpenSSL), more than `state` or `start` do; the C
modules behind them import nothing.  They are private: a CPython release may rename
one (3.12 merged `_sha256` into `_sha2`), which is why they are reached only from here
and why CI runs the unit tests and a container on every CPython the machine has.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

import _signal as signal  # numbers and signal(), without the IntEnums (built in)


# Extension modules (a shared library to load each), imported on first use: only the
# commands that need them pay for them.
_LAZY = {
    "json_c": "_json",  # the scanner and encoder json itself drives
    "socket": "_socket",  # socketpair/sendmsg/recvmsg, without the enums
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = __import__(_LAZY[name])
    globals()[name] = module
    return module


def sha256(data: bytes = b"") -> Any:
    """A sha256 hash object (the C module behind hashlib's, without OpenSSL)."""
    try:
        from _sha256 import sha256 as new  # type: ignore[import-not-found]  # <= 3.11
    except ImportError:
        try:
            from _sha2 import sha256 as new  # type: ignore[import-not-found,no-redef]  # 3.12+
        except ImportError:  # pragma: no cover
            from hashlib import sha256 as new  # type: ignore[assignment]
    return new(data)
