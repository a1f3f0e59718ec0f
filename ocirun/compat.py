"""CPython's private C modules that ocirun uses instead of their public wrappers, in one
place, with the public module as the fallback.

The wrappers cost milliseconds on every command (`signal` and `socket` import `enum`,
`json` imports `re`, `hashlib` loads OpenSSL), more than `state` or `start` do; the C
modules behind them import nothing.  They are private: a CPython release may rename
one (3.12 merged `_sha256` into `_sha2`), which is why they are reached only from here
and why CI runs the unit tests and a container on every CPython the machine has.
The finder of the package's own modules (below) uses importlib's private bootstrap
modules in the same way.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

import _signal as signal  # numbers and signal(), without the IntEnums (built in)
import sys as _sys


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


# ------------------------------------------------------------------ the package's imports
# Every `ocirun` command imports 15-45 of the package's modules, and for each the default
# path finder and source loader spend ~30 us in Python code (directory cache checks,
# spec building, pyc classification) before the unmarshal: ~0.6 ms of a `run`.  This
# finder answers for plain modules below `ocirun` only: it looks the .py up in the
# parent package's __path__ and gives it a SourceFileLoader (so tracebacks, linecache,
# inspect and runpy behave as usual) whose get_code takes the __pycache__ pyc only when
# importlib itself would take it without recompiling: this interpreter's magic number,
# a timestamp pyc recording the source's mtime and size.  Anything else (no pyc, a
# stale or hash-based one, -O, a package, a name that is also a directory, an
# interpreter without these bootstrap modules) goes the default way, which compiles
# and writes the pyc as always.
try:
    import marshal
    import posix

    from _frozen_importlib import ModuleSpec
    from _frozen_importlib_external import MAGIC_NUMBER, SourceFileLoader
except ImportError:  # pragma: no cover - not CPython
    SourceFileLoader = object  # type: ignore[assignment,misc]


class _PycLoader(SourceFileLoader):  # type: ignore[misc,valid-type]
    cached = ""
    source_stat: Any = None

    def get_code(self, fullname: str) -> Any:
        st = self.source_stat
        # posix calls, not open(): a buffered file object costs five more system calls
        # (fstat, isatty's ioctl, two lseeks, a second fstat) per module.
        try:
            fd = posix.open(self.cached, posix.O_RDONLY | posix.O_CLOEXEC)
        except OSError:
            data = b""
        else:
            try:
                data = posix.read(fd, posix.fstat(fd).st_size)
            except OSError:
                data = b""
            finally:
                posix.close(fd)
        if (data[:4] == MAGIC_NUMBER and data[4:8] == b"\0\0\0\0"
                and int.from_bytes(data[8:12], "little") == int(st.st_mtime) & 0xFFFFFFFF
                and int.from_bytes(data[12:16], "little") == st.st_size & 0xFFFFFFFF):
            return marshal.loads(memoryview(data)[16:])
        return super().get_code(fullname)


class _ModuleFinder:
    ocirun_finder = True

    @classmethod
    def find_spec(cls, name: str, path: Any = None, target: Any = None) -> Any:
        if path is None or not name.startswith("ocirun.") or _sys.flags.optimize:
            return None
        base = name.rpartition(".")[2]
        for directory in path:
            source = f"{directory}/{base}.py"
            try:
                source_stat = posix.stat(source)
            except OSError:
                continue
            try:
                posix.stat(f"{directory}/{base}")
                return None  # a package of that name would win: the default's call
            except OSError:
                pass
            loader = _PycLoader(name, source)
            loader.cached = f"{directory}/__pycache__/{base}.{_sys.implementation.cache_tag}.pyc"
            loader.source_stat = source_stat
            spec = ModuleSpec(name, loader, origin=source)
            spec.has_location = True
            spec.cached = loader.cached
            return spec
        return None


def install_module_finder() -> None:
    if SourceFileLoader is object or any(getattr(f, "ocirun_finder", False)
                                         for f in _sys.meta_path):
        return
    _sys.meta_path.insert(0, _ModuleFinder)
