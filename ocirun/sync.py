"""The channel between the runtime and its children: small JSON messages over a
SOCK_SEQPACKET socketpair, with file descriptors passed alongside.

Message kinds (field "t"):
  child -> parent: "userns" (maps please), "pid" (init's host pid), "hooks"
                   (run createRuntime hooks), "seccomp" (+ listener fd), "ready", "error"
  parent -> child: "go" (continue)
A child that fails sends "error" with the message the user should see, then exits.
"""

from __future__ import annotations

import _socket  # not `socket`: its enums cost milliseconds on every create and exec
import os
import sys

from ocirun import jsonio
from ocirun.errors import OciError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_MAX = 65536
_MAX_FDS = 4


class ChildError(OciError):
    """An error raised in a child process, reported by the parent."""


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

    def send(self, kind: str, fds: list[int] | None = None, **fields: Any) -> None:
        data = jsonio.dumps({"t": kind, **fields}).encode()
        if fds:
            packed = b"".join(fd.to_bytes(4, sys.byteorder) for fd in fds)
            self.sock.sendmsg([data], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, packed)])
        else:
            self.sock.sendall(data)

    def recv(self) -> tuple[dict[str, Any], list[int]]:
        """The next message; an EOF means the other side died without a word."""
        data, ancillary, _flags, _addr = self.sock.recvmsg(_MAX, _socket.CMSG_LEN(4 * _MAX_FDS))
        fds = [int.from_bytes(payload[i:i + 4], sys.byteorder)
               for level, kind, payload in ancillary
               if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS
               for i in range(0, len(payload) - len(payload) % 4, 4)]
        if not data:
            for fd in fds:
                os.close(fd)
            raise EOFError
        return jsonio.loads(data), fds

    def expect(self, *kinds: str) -> tuple[dict[str, Any], list[int]]:
        """Receive a message of one of `kinds`; a child's error is raised as ChildError."""
        try:
            msg, fds = self.recv()
        except EOFError:
            raise ChildError("container init exited unexpectedly") from None
        if msg["t"] == "error":
            raise ChildError(msg["msg"], msg.get("code", 1))
        if msg["t"] not in kinds:
            raise ChildError(f"unexpected message {msg['t']!r} from container init")
        return msg, fds

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

