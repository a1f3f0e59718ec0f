"""The channel between the runtime and its children: small JSON messages over a
SOCK_SEQPACKET socketpair, with file descriptors passed alongside.

Message kinds (field "t"):
  child -> parent: "userns" (maps please), "pid" (init's host pid), "hooks"
                   (run createRuntime hooks), "seccomp" (+ listener fd), "ready", "error"
  parent -> child: "go" (continue)
A child that fails sends "error" with the message the user should see, then exits.
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any

from ocirun.errors import OciError

_MAX = 65536


class ChildError(OciError):
    """An error raised in a child process, reported by the parent."""


class Channel:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    @staticmethod
    def pair() -> tuple[Channel, Channel]:
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        return Channel(a), Channel(b)

    def send(self, kind: str, fds: list[int] | None = None, **fields: Any) -> None:
        data = json.dumps({"t": kind, **fields}).encode()
        if fds:
            socket.send_fds(self.sock, [data], fds)
        else:
            self.sock.sendall(data)

    def recv(self) -> tuple[dict[str, Any], list[int]]:
        """The next message; an EOF means the other side died without a word."""
        data, fds, _flags, _addr = socket.recv_fds(self.sock, _MAX, 4)
        if not data:
            for fd in fds:
                os.close(fd)
            raise EOFError
        return json.loads(data), fds

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

