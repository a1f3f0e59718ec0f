"""Directory trees walked without recursion, one directory fd open at a time.

The trees ocirun walks can be made by a container: the cgroups below its own (a
container given a writable cgroup mount can nest them as deep as it likes) and an
image bundle's rootfs or overlay upper directory.  A recursive walk (os.walk and
shutil.rmtree on CPython 3.11, os.fwalk's fd per level, a path per level) breaks at
the interpreter's recursion limit, RLIMIT_NOFILE or PATH_MAX, each far below what a
`mkdir a; cd a` loop reaches, so delete would fail and leave the tree behind.

Each step down opens the child by name with O_NOFOLLOW beneath the directory held;
each step up opens ".." and checks it is the directory left (same device and inode),
so a directory renamed meanwhile stops the walk instead of taking it elsewhere.
"""

from __future__ import annotations

import errno
import os
import stat

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _subdirs(fd: int) -> list[str]:
    with os.scandir(fd) as entries:
        return [e.name for e in entries if e.is_dir(follow_symlinks=False)]


def walk(top: str, dir_fd: int | None = None) -> Iterator[tuple[int, str | None]]:
    """Walk the directory `top` (relative to `dir_fd` if given) and every directory
    below it.  Yields (fd, None) on entering a directory, top first, and (fd of the
    parent, name) once the whole tree below `name` has been walked, so the caller
    may remove `name` then.  An fd is valid until the next step; the caller must not
    close it.  Directories that vanish meanwhile are skipped; raises OSError
    otherwise (ESTALE if a directory was moved during the walk).
    """
    fd = os.open(top, _DIR_FLAGS, dir_fd=dir_fd)
    # Per level below top: the child's name, the parent's identity, the parent's
    # children still to walk.
    levels: list[tuple[str, tuple[int, int], list[str]]] = []
    try:
        yield fd, None
        pending = _subdirs(fd)
        while True:
            if pending:
                name = pending.pop()
                try:
                    child = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except OSError as e:
                    if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                        continue  # gone, or swapped for a non-directory
                    raise
                st = os.fstat(fd)
                levels.append((name, (st.st_dev, st.st_ino), pending))
                os.close(fd)
                fd = child
                yield fd, None
                pending = _subdirs(fd)
                continue
            if not levels:
                return
            name, parent_id, pending = levels.pop()
            parent = os.open("..", _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = parent
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != parent_id:
                raise OSError(errno.ESTALE, f"{top}: a directory was moved during the walk")
            yield fd, name
    finally:
        os.close(fd)


def remove(top: str, dir_fd: int | None = None, ignore_errors: bool = False) -> None:
    """rm -rf of `top` (relative to `dir_fd`): a symlink is removed, never followed;
    a missing `top` is no error.  Raises OSError unless `ignore_errors`."""
    try:
        _remove(top, dir_fd)
    except OSError:
        if not ignore_errors:
            raise


def _remove(top: str, dir_fd: int | None) -> None:
    try:
        st = os.stat(top, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(top, dir_fd=dir_fd)
        return
    for fd, name in walk(top, dir_fd):
        if name is not None:
            os.rmdir(name, dir_fd=fd)
            continue
        with os.scandir(fd) as entries:
            files = [e.name for e in entries if not e.is_dir(follow_symlinks=False)]
        for file in files:
            try:
                os.unlink(file, dir_fd=fd)
            except FileNotFoundError:
                pass
    os.rmdir(top, dir_fd=dir_fd)
