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
           "c_int64", "c_void_p", "buffer", "libc", "pythonapi", "raw_syscall"]


# Scalar types: their `_type_` codes are struct's (and ctypes'), native size and order.
class c_char(_SimpleCData):
    _type_ = "c"


class c_int(_SimpleCData):
    _type_ = "i"


class c_uint(_SimpleCData):
    _type_ = "I"


class c_long(_SimpleCData):
    _type_ = "l"


class c_ulong(_SimpleCData):
    _type_ = "L"


class c_uint8(_SimpleCData):
    _type_ = "B"


class c_uint16(_SimpleCData):
    _type_ = "H"


class c_uint32(_SimpleCData):
    _type_ = "I"


class c_uint64(_SimpleCData):
    _type_ = "Q"


class c_int64(_SimpleCData):
    _type_ = "q"


class c_void_p(_SimpleCData):
    _type_ = "P"


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
# libc's functions again, called with the GIL held (for clone3: fork as os.fork does it).
raw_syscall = Library(FUNCFLAG_CDECL | FUNCFLAG_PYTHONAPI | FUNCFLAG_USE_ERRNO,
                       c_long).syscall
# The interpreter's own C API (PyOS_BeforeFork...), GIL held.
pythonapi = Library(FUNCFLAG_CDECL | FUNCFLAG_PYTHONAPI, c_int)
libc.syscall.restype = c_long
