"""The part of ctypes that ocirun.sys uses, built straight on CPython's `_ctypes`.

`import ctypes` costs ~2-4 ms on this host (its Python module defines some fifty types,
checks their sizes and builds loaders, function prototypes and caches at import), and
`create`/`run` pay it in the parent, whose modules every child inherits.  What the
syscall layer needs (libc functions called with ints, bytes, None and C data; scalar
types; arrays; structures; errno) is all in the C module, and costs ~0.6 ms to set up.

`_ctypes` is private, like the modules in ocirun.compat: these names have been stable
from 3.8 through 3.13, and CI runs the unit tests and a container on each CPython the
machine has.  ctypes itself imports these same names from `_ctypes`, so a CPython
that renamed one would have to change both; no fallback is kept for that.
"""

from __future__ import annotations

import _ctypes
from _ctypes import (FUNCFLAG_CDECL, FUNCFLAG_PYTHONAPI, FUNCFLAG_USE_ERRNO, Array, CFuncPtr,
                     Structure, _SimpleCData, addressof, get_errno, sizeof)

__all__ = ["Array", "Structure", "addressof", "get_errno", "sizeof", "c_char", "c_int",
           "c_uint", "c_long", "c_ulong", "c_uint8", "c_uint16", "c_uint32", "c_uint64",
           "c_void_p", "buffer", "libc", "pythonapi", "raw_syscall"]


def _scalar(name: str, code: str) -> type:
    """A scalar C type: `code` is its struct (and ctypes) format, native size and order."""
    return type(_SimpleCData)(name, (_SimpleCData,), {"_type_": code, "__module__": __name__})


# Each costs ~30 us to make, so those only the seccomp and BPF structures use are made
# on first use (module __getattr__ below).
c_char = _scalar("c_char", "c")
c_int = _scalar("c_int", "i")
c_uint = _scalar("c_uint", "I")
c_long = _scalar("c_long", "l")
c_ulong = _scalar("c_ulong", "L")
c_uint64 = _scalar("c_uint64", "Q")
c_uint32 = c_uint  # "I" is 32 bits on every architecture CPython builds _ctypes for

_LATER = {"c_uint8": "B", "c_uint16": "H", "c_void_p": "P"}


def __getattr__(name: str) -> type:
    code = _LATER.get(name)
    if code is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    cls = globals()[name] = _scalar(name, code)
    return cls


def buffer(size_or_data: int | bytes) -> Array:
    """A zeroed char array of `size` bytes, or one holding a copy of `data` (no NUL is
    added): ctypes.create_string_buffer without the terminator.  Its `.raw` is the bytes."""
    if isinstance(size_or_data, int):
        return (c_char * size_or_data)()
    buf = (c_char * len(size_or_data))()
    buf.raw = size_or_data
    return buf


class Library:
    """dlopen(NULL): the executable and the libraries it loaded (libc, libpython).
    Attributes are its C functions, each made once: calls without argument types, so
    ints are passed as C ints and anything wider must be a c_long/c_ulong/c_uint64."""

    def __init__(self, flags: int, restype: type) -> None:
        class Function(CFuncPtr):
            _flags_ = flags
            _restype_ = restype

        self._function = Function
        self._handle = _ctypes.dlopen(None, 0)  # RTLD_NOW is always added

    def __getattr__(self, name: str) -> CFuncPtr:
        if name.startswith("_"):
            raise AttributeError(name)
        function = self._function((name, self))
        setattr(self, name, function)
        return function


libc = Library(FUNCFLAG_CDECL | FUNCFLAG_USE_ERRNO, c_int)
libc.syscall.restype = c_long
# The same symbols called with the GIL held: the interpreter's own C API
# (PyOS_BeforeFork...), and syscall(2) for clone3 (a fork as os.fork does it).
pythonapi = Library(FUNCFLAG_CDECL | FUNCFLAG_PYTHONAPI | FUNCFLAG_USE_ERRNO, c_int)
raw_syscall = pythonapi.syscall
raw_syscall.restype = c_long
