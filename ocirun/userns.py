"""User namespace id maps, written by the parent for a child that has unshared."""

from __future__ import annotations

import os

from ocirun.errors import OciError
from ocirun.spec import IdMapping, Linux


def _format(mappings: tuple[IdMapping, ...]) -> str:
    return "".join(f"{m.container_id} {m.host_id} {m.size}\n" for m in mappings)


def write_id_maps(pid: int, linux: Linux) -> None:
    if os.geteuid() != 0:
        # Without CAP_SETGID in the parent namespace the kernel requires this first.
        _write(f"/proc/{pid}/setgroups", "deny", "setgroups")
    _write(f"/proc/{pid}/uid_map", _format(linux.uid_mappings), "linux.uidMappings")
    _write(f"/proc/{pid}/gid_map", _format(linux.gid_mappings), "linux.gidMappings")


def _write(path: str, data: str, what: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, data.encode())
        finally:
            os.close(fd)
    except OSError as e:
        raise OciError(f"{what}: writing {path}: {os.strerror(e.errno).lower()}") from None
