"""User namespace id maps, written by the parent for a child that has unshared.

Who may write what (user_namespaces(7)):
- root of the runtime's namespace (CAP_SETUID/CAP_SETGID there) writes any map;
- an unprivileged runtime may only map its own euid/egid, one line of size 1, and
  must first write "deny" to /proc/<pid>/setgroups for gid_map;
- anything else needs the setuid helpers newuidmap/newgidmap (shadow's uidmap
  package), which check /etc/subuid and /etc/subgid.  They are used when present.
"""

from __future__ import annotations

import os
import shutil
import subprocess

from ocirun.errors import OciError
from ocirun.spec import IdMapping, Linux


def _format(mappings: tuple[IdMapping, ...]) -> str:
    return "".join(f"{m.container_id} {m.host_id} {m.size}\n" for m in mappings)


def _only_self(mappings: tuple[IdMapping, ...], own: int) -> bool:
    return len(mappings) == 1 and mappings[0].host_id == own and mappings[0].size == 1


def write_id_maps(pid: int, linux: Linux) -> None:
    """Write the child's uid_map and gid_map (and setgroups where the kernel wants)."""
    if os.geteuid() == 0:
        _write(f"/proc/{pid}/uid_map", _format(linux.uid_mappings), "linux.uidMappings")
        _write(f"/proc/{pid}/gid_map", _format(linux.gid_mappings), "linux.gidMappings")
        return
    if _only_self(linux.uid_mappings, os.geteuid()):
        _write(f"/proc/{pid}/uid_map", _format(linux.uid_mappings), "linux.uidMappings")
    else:
        _helper("newuidmap", pid, linux.uid_mappings, "linux.uidMappings", os.geteuid())
    if _only_self(linux.gid_mappings, os.getegid()):
        # Without CAP_SETGID in the parent namespace the kernel requires this first.
        _write(f"/proc/{pid}/setgroups", "deny", "setgroups")
        _write(f"/proc/{pid}/gid_map", _format(linux.gid_mappings), "linux.gidMappings")
    else:
        _helper("newgidmap", pid, linux.gid_mappings, "linux.gidMappings", os.getegid())


def _helper(name: str, pid: int, mappings: tuple[IdMapping, ...], what: str,
            own: int) -> None:
    kind = "uid" if name == "newuidmap" else "gid"
    path = shutil.which(name) or next(
        (p for p in (f"/usr/bin/{name}", f"/bin/{name}") if os.access(p, os.X_OK)), None)
    if path is None:
        raise OciError(f"{what}: an unprivileged user can map only its own {kind} "
                       f"({own}) with size 1; other mappings need {name} (package "
                       "uidmap) and ranges in /etc/sub" + kind)
    argv = [path, str(pid)]
    for m in mappings:
        argv += [str(m.container_id), str(m.host_id), str(m.size)]
    r = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, close_fds=True)
    if r.returncode != 0:
        detail = r.stderr.decode(errors="replace").strip().splitlines()
        raise OciError(f"{what}: {name} failed"
                       f"{': ' + detail[-1] if detail else ''} (check /etc/sub{kind})")


def _write(path: str, data: str, what: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, data.encode())
        finally:
            os.close(fd)
    except OSError as e:
        hint = ""
        if what.startswith("linux.") and os.geteuid() != 0:
            hint = " (an unprivileged user can map only its own id, with size 1)"
        raise OciError(f"{what}: writing {path}: {os.strerror(e.errno).lower()}"
                       f"{hint}") from None
