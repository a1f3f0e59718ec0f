"""linux.seccomp: compiled once with libseccomp (cached), loaded with raw seccomp(2).

The runtime's side, in call order:
  prepare(seccomp, cache_dir) -> PreparedFilter   before fork; libseccomp on a miss only
  warm_up()                                        in the process that will load the
                                                   filter, before it enters the container's
                                                   namespaces (imports the FFI, one syscall)
  load(prepared) -> int | None                     in the init, just before execve;
                                                   returns the listener fd with NOTIFY
  send_listener(fd, seccomp, state_json)           runtime: hand the listener to the agent
  features() -> dict                               "linux.seccomp" of `ocirun features`

Modules: cache (prepare, PreparedFilter), compiler (pyseccomp; imported on misses only),
loader (load), listener (send_listener), support (features), profile (engine profiles
in the docker/containers-common format -> spec.Seccomp), ../sys/seccomp (the syscall).
"""

from __future__ import annotations

from ocirun.seccomp.cache import PreparedFilter, cache_dir_for, prepare
from ocirun.seccomp.loader import load, warm_up

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["PreparedFilter", "cache_dir_for", "prepare", "warm_up", "load", "send_listener",
           "features"]


def __getattr__(name: str) -> Any:
    # send_listener needs socket, features needs pyseccomp: neither belongs on the path
    # of a plain `create`, so they are imported when first used.
    if name == "send_listener":
        from ocirun.seccomp.listener import send_listener
        return send_listener
    if name == "features":
        from ocirun.seccomp.support import features
        return features
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
