"""send_listener(): hand the notify listener fd to the seccomp agent.

Runtime spec, "Seccomp" / listenerPath: the runtime connects to the unix socket at
`listenerPath` and sends the container process state
  {"ociVersion", "fds": ["seccompFd"], "pid", "metadata", "state": {...}}
with the listener fd attached (SCM_RIGHTS), the fds in the order of the "fds" array.
"""

from __future__ import annotations

import array
import json
import socket

from ocirun import OCI_VERSION
from ocirun.errors import OciError
from ocirun.spec import Seccomp


def process_state(seccomp: Seccomp, state_json: bytes, pid: int | None = None) -> bytes:
    """The containerProcessState document for the agent.

    `state_json` is the container's OCI state (as given to hooks); `pid` is the process
    that owns the filter when it is not the container's init (exec).
    """
    state = json.loads(state_json)
    doc: dict[str, object] = {
        "ociVersion": OCI_VERSION,
        "fds": ["seccompFd"],
        "pid": state.get("pid", 0) if pid is None else pid,
    }
    if seccomp.listener_metadata:
        doc["metadata"] = seccomp.listener_metadata
    doc["state"] = state
    return json.dumps(doc).encode()


def send_listener(listener_fd: int, seccomp: Seccomp, state_json: bytes,
                  pid: int | None = None) -> None:
    """Connect to seccomp.listener_path and send the process state plus the fd.

    The caller keeps (and closes) its own copy of `listener_fd`.
    """
    path = seccomp.listener_path
    if not path:
        raise OciError("seccomp: SCMP_ACT_NOTIFY is used but listenerPath is not set")
    message = process_state(seccomp, state_json, pid)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as s:
            s.connect(path)
            # The fd rides on the first bytes; a stream socket may take the rest later.
            fds = array.array("i", [listener_fd]).tobytes()
            sent = s.sendmsg([message], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
            if sent < len(message):
                s.sendall(message[sent:])
    except OSError as e:
        raise OciError(f"seccomp: sending the listener fd to {path}: "
                       f"{(e.strerror or str(e)).lower()}") from None
