"""load(): install a prepared filter with seccomp(2), in the init right before execve.

This runs between fork and execve in a process whose next syscalls may be denied by the
very filter it installs, so it imports nothing (the FFI layer was imported earlier, by
warm_up() or ocirun.sys.load(), before the container's namespaces were entered), makes
exactly one syscall and touches no file.  libseccomp is not used: its
seccomp_load() would also set no_new_privs behind our back; whether no_new_privs is set
is the config's decision (process.noNewPrivileges), and without it the kernel accepts
the filter from a caller with CAP_SYS_ADMIN.
"""

from __future__ import annotations

from ocirun.errors import OciError
from ocirun.seccomp.cache import PreparedFilter
from ocirun.sys import seccomp as ksys


def warm_up() -> None:
    """Import the FFI layer (ocirun.sys.ffi) and pay its first-call costs now, in the
    process that will call load() (or one it will fork from), while the interpreter's
    files are reachable: load() is then one syscall with no import.  Neither prepare()
    nor the runtime's parent needs it for a cache hit, so it is not done there."""
    ksys.warm_up()


def load(prepared: PreparedFilter) -> int | None:
    """Install the filter on the calling thread; return the listener fd if it notifies.

    The listener fd is not close-on-exec: the caller sends it to the runtime and closes it.
    """
    flags = prepared.flags
    if prepared.uses_notify:
        flags |= ksys.FILTER_FLAG_NEW_LISTENER
    try:
        ret = ksys.set_mode_filter(prepared.program, flags)
    except OSError as e:
        if e.errno == 13:  # EACCES
            raise OciError("seccomp: loading the filter needs no_new_privs or "
                           "CAP_SYS_ADMIN: permission denied") from None
        raise OciError(f"seccomp: loading the filter: {e.strerror.lower()}") from None
    return ret if prepared.uses_notify else None
