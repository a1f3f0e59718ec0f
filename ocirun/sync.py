"""The channel between the runtime and its children, and the messages they exchange:
typed records, sent as small JSON objects over a SOCK_SEQPACKET socketpair (field "t"
names the kind) with file descriptors passed alongside.  recv() turns every packet
back into its record, or raises ProtocolError: an unknown kind, a missing, extra or
mistyped field.

  child -> parent: UserNsMade (write my id maps), MountNsMade (open the bind sources
                   in my mount namespace), InitPid, RunHooks (prestart and
                   createRuntime), SeccompListener (+ its fd), Ready, Failed
  parent -> child: Go (continue; with the hooks' state or the bind sources' paths)
  helper -> parent: BindSources (+ the fds)
A child that fails sends Failed with the message the user should see, then exits.
"""

from __future__ import annotations

import os
import sys

from ocirun import jsonio
from ocirun.compat import socket as _socket  # not `socket`: its enums cost ms
from ocirun.errors import OciError
from ocirun.record import Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TypeVar
    M = TypeVar("M", bound="Message")

_MAX = 65536
_MAX_FDS = 4


class ChildError(OciError):
    """An error raised in a child process, reported by the parent.  kind "died": the
    child went away without a word (EOF)."""


class ProtocolError(ChildError):
    """A packet that is not one of the messages below."""


# ------------------------------------------------------------------- messages
class Message(Record):
    KIND = ""


class InitPid(Message):
    KIND = "pid"
    pid: int
    born: bool = False  # in the container's cgroup by clone3
    why: str = ""  # why not


def _bare(name: str, kind: str, doc: str) -> type[Message]:
    """A message without fields."""
    return type(name, (Message,), {"KIND": kind, "__doc__": doc, "__module__": __name__})


UserNsMade = _bare("UserNsMade", "userns", "My user namespace exists: write its id maps.")
MountNsMade = _bare("MountNsMade", "mntns", "Open the bind sources in my mount namespace.")
RunHooks = _bare("RunHooks", "hooks", "Run prestart and createRuntime.")
SeccompListener = _bare("SeccompListener", "seccomp", "The notify listener is passed along.")
Ready = _bare("Ready", "ready", "The init waits on the exec fifo.")


class Failed(Message):
    KIND = "error"
    msg: str
    code: int = 1


class Go(Message):
    KIND = "go"
    state: dict[str, Any] | None = None  # the state the container's hooks are given
    mounts: tuple[int, ...] = ()  # indexes in spec.mounts of the fds passed along


class BindSources(Message):
    KIND = "sources"
    mounts: tuple[int, ...] = ()


MESSAGES: dict[str, type[Message]] = {
    cls.KIND: cls for cls in (UserNsMade, MountNsMade, InitPid, RunHooks, SeccompListener,
                              Ready, Failed, Go, BindSources)}

# The field types, by annotation (annotations are strings here: `from __future__`).
_CHECKS: dict[str, Any] = {
    "int": lambda v: type(v) is int,
    "bool": lambda v: type(v) is bool,
    "str": lambda v: type(v) is str,
    "str | None": lambda v: v is None or type(v) is str,
    "dict[str, Any] | None": lambda v: v is None or type(v) is dict,
    "tuple[int, ...]": lambda v: isinstance(v, list) and all(type(i) is int for i in v),
}


def encode(msg: Message) -> bytes:
    return jsonio.dumps({"t": msg.KIND, **{
        f: list(v) if isinstance(v, tuple) else v for f, v in msg.to_dict().items()}}).encode()


def decode(data: bytes) -> Message:
    try:
        raw = jsonio.loads(data)
    except ValueError:
        raise ProtocolError("malformed message from a runtime child") from None
    kind = raw.get("t") if isinstance(raw, dict) else None
    cls = MESSAGES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ProtocolError(f"unknown message {kind!r} from a runtime child")
    fields = {k: v for k, v in raw.items() if k != "t"}
    for name, value in fields.items():
        check = _CHECKS.get(cls._types.get(name, ""))
        if check is None or not check(value):
            raise ProtocolError(f"message {cls.KIND!r}: bad field {name!r}")
        if isinstance(value, list):
            fields[name] = tuple(value)
    try:
        return cls(**fields)
    except TypeError as e:
        raise ProtocolError(f"message {cls.KIND!r}: {e}") from None


# -------------------------------------------------------------------- channel
class Channel:
    def __init__(self, sock: _socket.socket) -> None:
        self.sock = sock

    @staticmethod
    def pair() -> tuple[Channel, Channel]:
        a, b = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
        return Channel(a), Channel(b)

    @staticmethod
    def from_fd(fd: int) -> Channel:
        return Channel(_socket.socket(fileno=fd))

    def send(self, msg: Message, fds: list[int] | None = None) -> None:
        data = encode(msg)
        if fds:
            packed = b"".join(fd.to_bytes(4, sys.byteorder) for fd in fds)
            self.sock.sendmsg([data], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, packed)])
        else:
            self.sock.sendall(data)

    def recv(self) -> tuple[Message, list[int]]:
        """The next message; an EOF means the other side died without a word."""
        data, ancillary, _flags, _addr = self.sock.recvmsg(_MAX, _socket.CMSG_LEN(4 * _MAX_FDS))
        fds = [int.from_bytes(payload[i:i + 4], sys.byteorder)
               for level, kind, payload in ancillary
               if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS
               for i in range(0, len(payload) - len(payload) % 4, 4)]
        try:
            if not data:
                raise EOFError
            return decode(data), fds
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise

    def expect(self, *types: type[M]) -> tuple[M, list[int]]:
        """Receive a message of one of `types`; a child's Failed is raised as
        ChildError, its silent death as ChildError of kind "died"."""
        try:
            msg, fds = self.recv()
        except EOFError:
            raise ChildError("container init exited unexpectedly", kind="died") from None
        if isinstance(msg, Failed):
            raise ChildError(msg.msg, msg.code)
        if not isinstance(msg, types):
            for fd in fds:
                os.close(fd)
            raise ProtocolError(f"unexpected message {msg.KIND!r} from container init")
        return msg, fds  # type: ignore[return-value]

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()
