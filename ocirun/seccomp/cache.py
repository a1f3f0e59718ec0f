"""prepare(): the compiled filter for a seccomp section, from the cache or libseccomp.

Engines send the same 300-400 rule profile with every container; compiling it costs tens
of milliseconds (plus ~26 ms to import pyseccomp), loading the result costs microseconds.
So the exported BPF program is cached beside the runtime's state root (cache_dir_for:
never inside it, where engines and `runc list` take every entry for a container),
keyed by the SHA-256 of a canonical form (see cache_key) of the parts of the section
that shape the program (default action, errno, architectures, rules), the machine,
FORMAT_VERSION and ocirun's version (two versions sharing a cache never read each
other's programs).  At most MAX_ENTRIES programs are kept: a hit refreshes the file's
mtime, and a write evicts the least recently used beyond that.  Flags and
the listener settings are not in the key: they do not change the program, only how it is
loaded.  A hit imports neither pyseccomp nor json nor hashlib (the C _sha256 suffices).

A cache file is `MAGIC + sha256(program) + program`; it is written to a unique temporary
name and renamed into place, so concurrent creates each write a complete file and the
last rename wins (all of them hold the same bytes).  A file that fails its checksum is
treated as a miss and replaced.

The cache is not keyed by the libseccomp version: the state root normally lives on a
tmpfs (/run), so a library upgrade followed by a reboot starts afresh anyway.
"""

from __future__ import annotations

import os
import sys

from ocirun.record import Record
from ocirun.compat import sha256
from ocirun.sys import seccomp as ksys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ocirun.spec import Seccomp

FORMAT_VERSION = 1
MAGIC = b"ocirun-seccomp-bpf/1\n"
_SUFFIX = ".bpf"
MAX_ENTRIES = 64  # distinct profiles; an engine sends one or two


def cache_dir_for(state_root: str) -> str:
    """<root>.cache/seccomp: one cache per runtime root, on the same (tmpfs) mount."""
    return os.path.join(os.path.normpath(state_root) + ".cache", "seccomp")

FLAG_BITS = {
    "SECCOMP_FILTER_FLAG_TSYNC": ksys.FILTER_FLAG_TSYNC,
    "SECCOMP_FILTER_FLAG_LOG": ksys.FILTER_FLAG_LOG,
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW": ksys.FILTER_FLAG_SPEC_ALLOW,
    "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV": ksys.FILTER_FLAG_WAIT_KILLABLE_RECV,
}


class PreparedFilter(Record):
    """Everything load() needs, computed before fork."""
    program: bytes        # struct sock_filter[], host endian, as libseccomp exported it
    flags: int            # SECCOMP_FILTER_FLAG_* for seccomp(2): asked for and supported
    uses_notify: bool     # load() adds NEW_LISTENER and returns the listener fd
    cache_path: str = ""  # where the program is (or would have been) cached
    cache_hit: bool = False

    @property
    def instructions(self) -> int:
        return len(self.program) // 8


def cache_key(seccomp: Seccomp) -> str:
    """Hex SHA-256 of the canonical form of what shapes the BPF program.

    The canonical form is the repr() of nested tuples holding only str, int, bool and
    None (what the spec parser produces): unambiguous and the same in every process,
    without `json.dumps`, whose import (re, enum...) cost more than everything else a
    cache hit does.
    """
    rules = tuple((tuple(r.names), r.action, r.errno_ret,
                   tuple((a.index, a.op, a.value, a.value_two) for a in r.args))
                  for r in seccomp.syscalls)
    from ocirun import __version__
    doc = (FORMAT_VERSION, __version__, os.uname().machine, sys.maxsize > 2**32,
           seccomp.default_action,
           seccomp.default_errno_ret, tuple(seccomp.architectures), rules)
    return sha256(repr(doc).encode()).hexdigest()


def uses_notify(seccomp: Seccomp) -> bool:
    return seccomp.default_action == "SCMP_ACT_NOTIFY" or any(
        r.action == "SCMP_ACT_NOTIFY" for r in seccomp.syscalls)


def load_flags(seccomp: Seccomp, notify: bool) -> int:
    """The seccomp(2) flags for the config, minus those the kernel lacks or refuses."""
    bits = 0
    for name in seccomp.flags:
        bit = FLAG_BITS[name]
        if bit == ksys.FILTER_FLAG_WAIT_KILLABLE_RECV and not notify:
            continue  # only means something for a listener; the kernel refuses it alone
        if bit == ksys.FILTER_FLAG_TSYNC and notify:
            # The kernel refuses TSYNC with NEW_LISTENER (unless TSYNC_ESRCH); the init is
            # single-threaded, so TSYNC has nothing to synchronise anyway.
            continue
        if ksys.filter_flag_supported(bit):
            bits |= bit
    return bits


def prepare(seccomp: Seccomp, cache_dir: str) -> PreparedFilter:
    """The filter for `seccomp`: from `cache_dir`, or compiled and cached there.

    A hit needs no FFI (unless `flags` must be probed): the process that will call
    load() warms it up before entering the container's namespaces (ocirun.seccomp.warm_up).
    """
    notify = uses_notify(seccomp)
    flags = load_flags(seccomp, notify) if seccomp.flags else 0
    path = os.path.join(cache_dir, cache_key(seccomp) + _SUFFIX)
    program = _read(path)
    if program is not None:
        try:
            os.utime(path)  # most recently used
        except OSError:
            pass
        return PreparedFilter(program, flags, notify, path, cache_hit=True)

    from ocirun.seccomp.compiler import compile_bpf  # imports pyseccomp: misses only
    program = compile_bpf(seccomp)
    _write(path, program)
    return PreparedFilter(program, flags, notify, path, cache_hit=False)


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    head = len(MAGIC) + 32
    if len(data) <= head or not data.startswith(MAGIC) or (len(data) - head) % 8:
        return None
    program = data[head:]
    if sha256(program).digest() != data[len(MAGIC):head]:
        return None
    return program


def _write(path: str, program: bytes) -> None:
    """Atomically publish the program; a cache we cannot write is not an error."""
    cache_dir = os.path.dirname(path)
    tmp = f"{path}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
    try:
        os.makedirs(cache_dir, mode=0o700, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            data = memoryview(MAGIC + sha256(program).digest() + program)
            while data:
                data = data[os.write(fd, data):]
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        return
    _evict(cache_dir, keep=path)


def _evict(cache_dir: str, keep: str) -> None:
    """Remove the least recently used programs beyond MAX_ENTRIES (misses only)."""
    try:
        entries = [e for e in os.scandir(cache_dir) if e.name.endswith(_SUFFIX)]
    except OSError:
        return
    if len(entries) <= MAX_ENTRIES:
        return
    def mtime(entry: os.DirEntry) -> float:
        try:
            return entry.stat().st_mtime
        except OSError:
            return 0.0
    for entry in sorted(entries, key=mtime)[:len(entries) - MAX_ENTRIES]:
        if entry.path != keep:
            try:
                os.unlink(entry.path)
            except OSError:
                pass
