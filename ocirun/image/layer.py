"""Applying one layer tar to a directory (image-spec layer.md), as a hostile input.

Every entry is created by name in an fd of its parent directory, and that parent is
resolved beneath the target with openat2(RESOLVE_IN_ROOT): a symlink of the image
(`etc -> /`), however it is reached, resolves inside the target, and the entry's own
name is never followed.  Names with `..` are refused, absolute names are taken as
relative to the target, hard links must name a file inside it.  The uncompressed
stream is hashed (the layer's diff_id) and counted against a limit as it is read, so
a decompression bomb stops at the limit; the stored blob's digest is checked too.

Whiteouts: `.wh.NAME` hides NAME of the layers below, `.wh..wh..opq` hides everything
of the layers below in its directory.  In "unpack" mode they are applied (the paths
are removed); in "overlay" mode they become what overlayfs reads (a 0:0 character
device, the trusted.overlay.opaque xattr) in this layer's own directory.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import os
import shutil
import stat
import subprocess
import tarfile
import threading

from ocirun import fstree, rootfs
from ocirun.errors import OciError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import IO, Any

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
_CHUNK = 1 << 20
# xattrs a layer may not set: overlayfs's own (redirects, metacopy, opaque) would let an
# image steer the overlay mount it is later part of.
_REFUSED_XATTRS = ("trusted.overlay.", "user.overlay.")


class LayerError(OciError):
    pass


class Shift:
    """Owner ids as stored = ids in the layer + uid/gid (for a user namespace whose
    root is mapped to `uid`)."""

    def __init__(self, uid: int = 0, gid: int = 0) -> None:
        self.uid, self.gid = uid, gid


# ------------------------------------------------------------------ the stream
class _Counted:
    """A reader that hashes what passes through it and stops at `limit` bytes."""

    def __init__(self, raw: Any, algo: str, limit: int | None, what: str) -> None:
        self.raw, self.hash, self.limit, self.what = raw, hashlib.new(algo), limit, what
        self.count = 0
        self.head = b""

    def read(self, n: int = -1) -> bytes:
        if self.head:
            data, self.head = self.head, b""
            if n is not None and 0 <= n < len(data):
                data, self.head = data[:n], data[n:]
                return data  # already hashed and counted
            more = self.raw.read(-1 if n is None or n < 0 else n - len(data))
            self._account(more)
            return data + more
        data = self.raw.read(n)
        self._account(data)
        return data

    def _account(self, data: bytes) -> None:
        self.hash.update(data)
        self.count += len(data)
        if self.limit is not None and self.count > self.limit:
            raise LayerError(f"{self.what}: larger than the limit of {self.limit} bytes "
                             f"uncompressed (--max-layer-size)")

    def peek(self, n: int) -> bytes:
        while len(self.head) < n:
            data = self.raw.read(n - len(self.head))
            if not data:
                break
            self._account(data)
            self.head += data
        return self.head[:n]

    def drain(self) -> None:
        while self.read(_CHUNK):
            pass

    def digest(self) -> str:
        return f"{self.hash.name}:{self.hash.hexdigest()}"


class _Zstd:
    """zstd through the zstd command (CPython 3.11 has no zstd module); a thread
    feeds it the counted blob."""

    def __init__(self, source: _Counted) -> None:
        if shutil.which("zstd") is None:
            raise LayerError("a zstd layer needs the zstd command (apt-get install zstd)")
        self.proc = subprocess.Popen(["zstd", "-dcq"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.error: BaseException | None = None
        self.source = source
        self.feeder = threading.Thread(target=self._feed, args=(source,), daemon=True)
        self.feeder.start()

    def _feed(self, source: _Counted) -> None:
        assert self.proc.stdin is not None
        try:
            while data := source.read(_CHUNK):
                self.proc.stdin.write(data)
        except BrokenPipeError:
            pass
        except BaseException as e:  # noqa: BLE001 - re-raised by close()
            self.error = e
        finally:
            self.proc.stdin.close()

    def read(self, n: int = -1) -> bytes:
        assert self.proc.stdout is not None
        return self.proc.stdout.read(n)

    def close(self, check: bool) -> None:
        """Stop zstd; with `check`, a zstd that failed is an error (without it, the
        caller is already failing and zstd's own complaint would hide why)."""
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        self.proc.kill()
        rc = self.proc.wait()
        self.feeder.join()
        if not check:
            return
        if self.error is not None:
            raise self.error
        if rc not in (0, -9):
            raise LayerError("zstd: the layer is not valid zstd data")
        self.source.drain()  # what zstd left unread counts for the blob's digest


def open_layer(blob: IO[bytes], digest: str | None, limit: int | None, what: str
               ) -> tuple[_Counted, Any, _Counted]:
    """(stored stream, decompressor, uncompressed stream), each hashed as read."""
    stored = _Counted(blob, (digest or "sha256:").split(":", 1)[0], None, what)
    magic = stored.peek(4)
    decompressor: Any
    if magic[:2] == b"\x1f\x8b":
        decompressor = gzip.GzipFile(fileobj=stored, mode="rb")  # type: ignore[arg-type]
    elif magic == b"\x28\xb5\x2f\xfd":
        decompressor = _Zstd(stored)
    else:
        decompressor = stored
    return stored, decompressor, _Counted(decompressor, "sha256", limit, what)


# ------------------------------------------------------------------ the entries
def _clean(name: str, what: str) -> list[str]:
    if "\0" in name:
        raise LayerError(f"{what}: an entry name holds a NUL byte")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise LayerError(f"{what}: entry {name[:200]!r} leads outside the root ('..')")
    return parts


class _Applier:
    def __init__(self, root_fd: int, mode: str, shift: Shift, what: str) -> None:
        self.root_fd, self.mode, self.shift, self.what = root_fd, mode, shift, what
        self.written: set[str] = set()  # paths this layer made (and their parents)
        self.dir_times: list[tuple[str, int]] = []

    def parent(self, parts: list[str]) -> int:
        try:
            return rootfs.resolve_dir(self.root_fd, "/".join(parts[:-1]))
        except OSError as e:
            raise LayerError(f"{self.what}: {'/'.join(parts)}: its directory: "
                             f"{os.strerror(e.errno or errno.EIO).lower()}") from None

    def mark(self, parts: list[str]) -> None:
        for i in range(1, len(parts) + 1):
            self.written.add("/".join(parts[:i]))

    def entry(self, tar: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        parts = _clean(m.name, self.what)
        if not parts:
            if m.isdir():  # the root directory itself
                self._owner_mode(self.root_fd, ".", m)
            return
        base = parts[-1]
        if base.startswith(WHITEOUT):
            return self.whiteout(parts, m)
        parent = self.parent(parts)
        try:
            self.make(tar, m, parts, parent, base)
        except OSError as e:
            raise LayerError(f"{self.what}: {'/'.join(parts)}: "
                             f"{(e.strerror or str(e)).lower()}") from None
        finally:
            os.close(parent)
        self.mark(parts)

    def make(self, tar: tarfile.TarFile, m: tarfile.TarInfo, parts: list[str], parent: int,
             base: str) -> None:
        try:
            old = os.stat(base, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            old = None
        if old is not None and not (m.isdir() and stat.S_ISDIR(old.st_mode)):
            fstree.remove(base, parent)
        if m.isreg():
            self.file(tar, m, parent, base)
        elif m.isdir():
            if old is None or not stat.S_ISDIR(old.st_mode):
                os.mkdir(base, 0o700, dir_fd=parent)
            self._owner_mode(parent, base, m)
            self.dir_times.append(("/".join(parts), int(m.mtime)))
            return
        elif m.issym():
            os.symlink(m.linkname, base, dir_fd=parent)
        elif m.islnk():
            self.hardlink(m, parent, base)
            return  # the link shares its target's inode: owner and mode are the target's
        elif m.ischr() or m.isblk() or m.isfifo():
            kind = stat.S_IFCHR if m.ischr() else stat.S_IFBLK if m.isblk() else stat.S_IFIFO
            os.mknod(base, kind | (m.mode & 0o7777), os.makedev(m.devmajor, m.devminor),
                     dir_fd=parent)
        else:
            raise LayerError(f"{self.what}: {'/'.join(parts)}: unsupported entry type "
                             f"{m.type!r}")
        self._owner_mode(parent, base, m)
        os.utime(base, ns=(int(m.mtime * 1e9),) * 2, dir_fd=parent, follow_symlinks=False)

    def file(self, tar: tarfile.TarFile, m: tarfile.TarInfo, parent: int, base: str) -> None:
        fd = os.open(base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600, dir_fd=parent)
        with os.fdopen(fd, "wb") as out:
            src = tar.extractfile(m)
            assert src is not None
            while data := src.read(_CHUNK):
                out.write(data)

    def hardlink(self, m: tarfile.TarInfo, parent: int, base: str) -> None:
        target = _clean(m.linkname, self.what)
        if not target:
            raise LayerError(f"{self.what}: {m.name}: a hard link to the root")
        tparent = self.parent(target)
        try:
            os.link(target[-1], base, src_dir_fd=tparent, dst_dir_fd=parent,
                    follow_symlinks=False)
        except OSError as e:
            raise LayerError(f"{self.what}: {m.name}: hard link to {m.linkname[:200]!r}: "
                             f"{(e.strerror or str(e)).lower()}") from None
        finally:
            os.close(tparent)

    def _owner_mode(self, parent: int, base: str, m: tarfile.TarInfo) -> None:
        uid, gid = m.uid + self.shift.uid, m.gid + self.shift.gid
        if not (m.isreg() or m.isdir()):
            # links, devices, fifos: by name (opening a fifo would block); the name was
            # made by this process a moment ago, in a directory no container uses yet
            os.chown(base, uid, gid, dir_fd=parent, follow_symlinks=False)
            if not m.issym():
                os.chmod(base, m.mode & 0o7777, dir_fd=parent)
            return
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_DIRECTORY if m.isdir() else 0)
        fd = os.open(base, flags, dir_fd=parent)
        try:
            os.chown(fd, uid, gid)
            os.chmod(fd, m.mode & 0o7777)  # after chown, which clears set-id bits
            self._xattrs(fd, m)
        finally:
            os.close(fd)

    def _xattrs(self, fd: int, m: tarfile.TarInfo) -> None:
        for key, value in (m.pax_headers or {}).items():
            if not key.startswith("SCHILY.xattr."):
                continue
            name = key[len("SCHILY.xattr."):]
            if name.startswith(_REFUSED_XATTRS):
                continue
            raw = value.encode("utf-8", "surrogateescape")
            try:
                os.setxattr(fd, name, raw)
            except OSError as e:
                if e.errno not in (errno.ENOTSUP, errno.EPERM):
                    raise

    def whiteout(self, parts: list[str], m: tarfile.TarInfo) -> None:
        base = parts[-1]
        parent = self.parent(parts)
        try:
            if base == OPAQUE:
                self.opaque(parts[:-1], parent)
            elif base.startswith(WHITEOUT + WHITEOUT):
                pass  # AUFS's own bookkeeping (.wh..wh.plnk, .wh..wh.aufs)
            else:
                name = base[len(WHITEOUT):]
                if name in ("", ".", ".."):
                    raise LayerError(f"{self.what}: whiteout {m.name[:200]!r} names no file")
                hidden = "/".join(parts[:-1] + [name])
                if self.mode == "overlay":
                    if hidden not in self.written:
                        fstree.remove(name, parent)
                        os.mknod(name, stat.S_IFCHR | 0o600, os.makedev(0, 0), dir_fd=parent)
                elif hidden not in self.written:
                    fstree.remove(name, parent)
        except OSError as e:
            raise LayerError(f"{self.what}: {m.name[:200]}: "
                             f"{(e.strerror or str(e)).lower()}") from None
        finally:
            os.close(parent)
        self.mark(parts[:-1])

    def opaque(self, dir_parts: list[str], dir_fd: int) -> None:
        fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            if self.mode == "overlay":
                os.setxattr(fd, "trusted.overlay.opaque", b"y")
            names = os.listdir(fd)  # an O_PATH fd cannot be read
        finally:
            os.close(fd)
        prefix = "/".join(dir_parts)
        for name in names:
            path = f"{prefix}/{name}" if prefix else name
            if path not in self.written:
                fstree.remove(name, dir_fd)

    def finish(self) -> None:
        """Directories' times last: every entry made inside one changed it."""
        for path, mtime in reversed(self.dir_times):
            parts = path.split("/")
            parent = self.parent(parts)
            try:
                os.utime(parts[-1], ns=(mtime * 10**9,) * 2, dir_fd=parent,
                         follow_symlinks=False)
            except FileNotFoundError:
                pass  # removed by a later whiteout of the same layer
            finally:
                os.close(parent)


def apply(blob: IO[bytes], target: str, *, digest: str | None, diff_id: str,
          mode: str = "unpack", shift: Shift | None = None, limit: int | None = None,
          what: str = "layer") -> int:
    """Apply the layer in `blob` to directory `target`; returns its uncompressed size.
    The caller removes `target` when this raises (the layer is half applied)."""
    old_umask = os.umask(0)
    root_fd = os.open(target, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    stored, decompressor, plain = open_layer(blob, digest, limit, what)
    whole = False
    try:
        applier = _Applier(root_fd, mode, shift or Shift(), what)
        try:
            with tarfile.open(fileobj=plain, mode="r|") as tar:  # type: ignore[call-overload]
                for member in tar:
                    applier.entry(tar, member)
            plain.drain()
            if not isinstance(decompressor, _Zstd):  # its feeder thread reads `stored`
                stored.drain()
        except (tarfile.TarError, EOFError, gzip.BadGzipFile, OSError, ValueError) as e:
            if isinstance(e, OciError):
                raise
            raise LayerError(f"{what}: not a valid layer (corrupt or truncated): "
                             f"{e}") from None
        applier.finish()
        whole = True
    finally:
        os.close(root_fd)
        os.umask(old_umask)
        if isinstance(decompressor, _Zstd):
            decompressor.close(check=whole)
    if digest is not None and stored.digest() != digest:
        raise LayerError(f"{what}: content does not match its digest {digest}")
    if plain.digest() != diff_id:
        raise LayerError(f"{what}: uncompressed content does not match its diff_id {diff_id}")
    return plain.count
