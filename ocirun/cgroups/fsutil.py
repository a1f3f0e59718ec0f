"""Small, error-translating helpers for cgroupfs files and directories.

Every failure becomes an OciError with one line naming the file, so the lifecycle
never sees a bare OSError from the cgroup code.
"""

from __future__ import annotations

import errno
import os
import time

from ocirun.errors import OciError


def _reason(e: OSError) -> str:
    return (e.strerror or str(e)).lower()


def read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError as e:
        raise OciError(f"cgroups: read {path}: {_reason(e)}", errno=e.errno) from None


def read_or_none(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def read_int(path: str) -> int | None:
    """An integer file ("max" reads as None, a missing file too)."""
    text = read_or_none(path)
    if text is None:
        return None
    text = text.strip()
    if text == "max":
        return None
    try:
        return int(text)
    except ValueError:
        return None


def read_keyed(path: str) -> dict[str, int]:
    """A flat keyed file ("key value" per line) such as memory.stat or cpu.stat."""
    out: dict[str, int] = {}
    for line in (read_or_none(path) or "").splitlines():
        parts = line.split()
        if len(parts) == 2:
            try:
                out[parts[0]] = int(parts[1])
            except ValueError:
                pass
    return out


def write(path: str, value: str | int, what: str | None = None) -> None:
    """Write one value in one write(2): cgroupfs parses each write separately."""
    data = str(value).encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except OSError as e:
        raise OciError(f"cgroups: {what + ': ' if what else ''}open {path}: {_reason(e)}",
                       errno=e.errno) from None
    try:
        os.write(fd, data)
    except OSError as e:
        raise OciError(f"cgroups: {what + ': ' if what else ''}write {data.decode()!r} to "
                       f"{path}: {_reason(e)}", errno=e.errno) from None
    finally:
        os.close(fd)


def write_pid(directory: str, pid: int) -> None:
    """Move pid into the cgroup; EINVAL may mean the task is still being forked."""
    path = os.path.join(directory, "cgroup.procs")
    for attempt in range(5):
        try:
            write(path, pid)
            return
        except OciError:
            if attempt == 4 or not os.path.exists(f"/proc/{pid}"):
                raise
            time.sleep(0.03)


def _has_children(directory: str) -> bool:
    """Whether the cgroup `directory` has child cgroups: cgroupfs (kernfs) counts a
    directory's links as 2 + its subdirectories, so a leaf needs no listing.  Raises
    OSError."""
    return os.stat(directory).st_nlink != 2


def procs(directory: str, recursive: bool = True) -> list[int]:
    """Pids listed in cgroup.procs of `directory` (and below, when recursive: the
    container may have nested cgroups of its own, to any depth)."""
    pids: list[int] = []
    seen: set[int] = set()
    try:
        if recursive and _has_children(directory):
            from ocirun import fstree  # here: create, which never walks, does without it
            for fd, name in fstree.walk(directory):
                if name is None:
                    _add_procs(fd, pids, seen)
        else:
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                _add_procs(fd, pids, seen)
            finally:
                os.close(fd)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            raise OciError(f"cgroups: {directory}: no such cgroup", errno=errno.ENOENT) from None
        raise OciError(f"cgroups: list the processes of {directory}: {_reason(e)}",
                       errno=e.errno) from None
    return pids


def read_at(dir_fd: int, name: str) -> bytes:
    """The file `name` of the cgroup directory open as `dir_fd`.  Raises OSError."""
    with open(os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd), "rb") as f:
        return f.read()


def write_at(dir_fd: int, name: str, value: bytes) -> None:
    """Write the file `name` of the cgroup directory open as `dir_fd`.  Raises OSError."""
    fd = os.open(name, os.O_WRONLY | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        os.write(fd, value)
    finally:
        os.close(fd)


def _add_procs(dir_fd: int, pids: list[int], seen: set[int]) -> None:
    try:
        text = read_at(dir_fd, "cgroup.procs")
    except FileNotFoundError:
        return  # removed meanwhile
    for word in text.split():
        pid = int(word)
        if pid not in seen:
            seen.add(pid)
            pids.append(pid)


_PF_EXITING = 0x4  # task->flags bit, field 9 of /proc/<pid>/stat
_SIGKILL_BIT = 1 << 8  # signal 9 in the ShdPnd/SigPnd masks


def dying(pid: int) -> bool:
    """True for a process that is gone, a zombie, exiting, or has SIGKILL pending."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        with open(f"/proc/{pid}/status", "rb") as f:
            status = f.read()
    except OSError:
        return True
    fields = stat[stat.rindex(b")") + 2:].split()
    if fields[0] in (b"Z", b"X", b"x") or int(fields[6]) & _PF_EXITING:
        return True
    for line in status.splitlines():
        if line.startswith((b"ShdPnd:", b"SigPnd:")) and int(line.split()[1], 16) & _SIGKILL_BIT:
            return True
    return False


def makedirs(path: str) -> list[str]:
    """mkdir -p that returns the directories it created, top first."""
    missing: list[str] = []
    cur = os.path.normpath(path)
    while not os.path.isdir(cur):
        missing.append(cur)
        parent = os.path.dirname(cur)
        if parent == cur:
            break
        cur = parent
    created: list[str] = []
    for d in reversed(missing):
        try:
            os.mkdir(d, 0o755)
            created.append(d)
        except FileExistsError:
            pass  # a concurrent creator won: it is not ours to remove
        except OSError as e:
            raise OciError(f"cgroups: mkdir {d}: {_reason(e)}", errno=e.errno) from None
    return created


def rmdir_tree(path: str, deadline: float) -> None:
    """Remove `path` and any cgroups below it, leaf first, retrying EBUSY until deadline.

    A cgroup directory holds only kernel files, so rmdir works once no process and no
    child cgroup is left; processes that were just killed take a moment to leave.
    """
    try:
        os.rmdir(path)  # the usual case: a leaf, empty by now (no walk needed)
        return
    except FileNotFoundError:
        return
    except OSError:
        pass
    from ocirun import fstree
    try:
        for fd, name in fstree.walk(path):
            if name is not None:
                _rmdir(name, fd, deadline, path)
    except FileNotFoundError:
        return
    except OSError as e:
        raise OciError(f"cgroups: remove {path}: {_reason(e)}", errno=e.errno) from None
    _rmdir(path, None, deadline, path)


def _rmdir(name: str, dir_fd: int | None, deadline: float, top: str) -> None:
    delay = 0.005
    while True:
        try:
            os.rmdir(name, dir_fd=dir_fd)
            return
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno not in (errno.EBUSY, errno.EAGAIN) or time.monotonic() >= deadline:
                where = top if dir_fd is None else f"{top} (its cgroup {name!r} below)"
                left = procs(top) if e.errno == errno.EBUSY else []
                extra = f" (pids still inside: {', '.join(map(str, left[:10]))})" if left else ""
                raise OciError(f"cgroups: remove {where}: {_reason(e)}{extra}",
                               errno=e.errno) from None
        time.sleep(delay)
        delay = min(delay * 2, 0.1)
