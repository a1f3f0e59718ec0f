"""A minimal D-Bus client: just enough to ask systemd for transient units.

Why our own: the systemd cgroup driver needs a handful of method calls and one
signal, and a pip dependency (or libdbus through ctypes) would be heavier than
the wire format itself.  Implemented from the D-Bus specification:

  * transport: a unix stream socket, SASL "AUTH EXTERNAL <uid in hex>", BEGIN;
  * messages: little-endian header (type, flags, version 1, body length, serial,
    header fields a(yv)), padded to 8, then the body;
  * marshalling of the basic types plus arrays, structs, dict entries, variants.

Unix fd passing, introspection and big-endian *sending* are left out; big-endian
messages are still decoded, as the spec obliges a peer to accept both.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import time
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

SYSTEM_BUS = "/run/dbus/system_bus_socket"
SYSTEMD_PRIVATE = "/run/systemd/private"  # systemd's peer-to-peer socket, root only

METHOD_CALL, METHOD_RETURN, ERROR, SIGNAL = 1, 2, 3, 4
NO_REPLY_EXPECTED = 0x1

# Header field codes and the type each one carries.
_FIELDS = {1: ("path", "o"), 2: ("interface", "s"), 3: ("member", "s"),
           4: ("error_name", "s"), 5: ("reply_serial", "u"), 6: ("destination", "s"),
           7: ("sender", "s"), 8: ("signature", "g"), 9: ("unix_fds", "u")}
_CODES = {name: (code, sig) for code, (name, sig) in _FIELDS.items()}

# Fixed-size basic types: struct format and alignment (boolean travels as a uint32).
_FIXED = {"y": ("B", 1), "b": ("I", 4), "n": ("h", 2), "q": ("H", 2), "i": ("i", 4),
          "u": ("I", 4), "x": ("q", 8), "t": ("Q", 8), "d": ("d", 8), "h": ("I", 4)}


class DBusError(Exception):
    """An ERROR reply: `name` is the D-Bus error name (org.freedesktop...)."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}" if message else name)
        self.name = name
        self.message = message


class Variant:
    """A value with its signature, for "v" (Python values alone are ambiguous)."""

    def __init__(self, signature: str, value: Any) -> None:
        self.signature = signature
        self.value = value

    def __repr__(self) -> str:
        return f"Variant({self.signature!r}, {self.value!r})"


# --------------------------------------------------------------- signatures
def _split(sig: str) -> list[str]:
    """"sa(sv)u" -> ["s", "a(sv)", "u"]: one complete type each."""
    out, i = [], 0
    while i < len(sig):
        j = _end(sig, i)
        out.append(sig[i:j])
        i = j
    return out


def _end(sig: str, i: int) -> int:
    """Index just past the single complete type starting at sig[i]."""
    c = sig[i]
    if c == "a":
        return _end(sig, i + 1)
    if c in "({":
        depth, j = 0, i
        while j < len(sig):
            if sig[j] in "({":
                depth += 1
            elif sig[j] in ")}":
                depth -= 1
                if depth == 0:
                    return j + 1
            j += 1
        raise ValueError(f"unbalanced D-Bus signature {sig!r}")
    return i + 1


def _align_of(t: str) -> int:
    if t[0] in _FIXED:
        return _FIXED[t[0]][1]
    return {"s": 4, "o": 4, "g": 1, "a": 4, "(": 8, "{": 8, "v": 1}[t[0]]


# -------------------------------------------------------------- marshalling
class _Writer:
    def __init__(self) -> None:
        self.buf = bytearray()

    def pad(self, n: int) -> None:
        self.buf += b"\0" * (-len(self.buf) % n)

    def put(self, t: str, v: Any) -> None:
        c = t[0]
        if c in _FIXED:
            fmt, size = _FIXED[c]
            self.pad(size)
            self.buf += struct.pack("<" + fmt, int(v) if c != "d" else float(v))
        elif c in "so":
            data = v.encode()
            self.pad(4)
            self.buf += struct.pack("<I", len(data)) + data + b"\0"
        elif c == "g":
            data = v.encode()
            self.buf += struct.pack("<B", len(data)) + data + b"\0"
        elif c == "v":
            self.put("g", v.signature)
            self.put(v.signature, v.value)
        elif c == "(":
            self.pad(8)
            for sub, item in zip(_split(t[1:-1]), v):
                self.put(sub, item)
        elif c == "a":
            elem = t[1:]
            self.pad(4)
            at = len(self.buf)
            self.buf += b"\0\0\0\0"  # length, patched below
            self.pad(_align_of(elem))  # the padding before the first element is not counted
            start = len(self.buf)
            if elem[0] == "{":
                key_t, val_t = _split(elem[1:-1])
                for key, val in v.items():
                    self.pad(8)
                    self.put(key_t, key)
                    self.put(val_t, val)
            else:
                for item in v:
                    self.put(elem, item)
            self.buf[at:at + 4] = struct.pack("<I", len(self.buf) - start)
        else:
            raise ValueError(f"D-Bus type {t!r} is not supported")


class _Reader:
    def __init__(self, data: bytes, little: bool) -> None:
        self.data = data
        self.pos = 0
        self.end = "<" if little else ">"

    def align(self, n: int) -> None:
        self.pos += -self.pos % n

    def get(self, t: str) -> Any:
        c = t[0]
        if c in _FIXED:
            fmt, size = _FIXED[c]
            self.align(size)
            (v,) = struct.unpack_from(self.end + fmt, self.data, self.pos)
            self.pos += size
            return bool(v) if c == "b" else v
        if c in "so":
            self.align(4)
            (n,) = struct.unpack_from(self.end + "I", self.data, self.pos)
            s = self.data[self.pos + 4:self.pos + 4 + n].decode()
            self.pos += 5 + n
            return s
        if c == "g":
            n = self.data[self.pos]
            s = self.data[self.pos + 1:self.pos + 1 + n].decode()
            self.pos += 2 + n
            return s
        if c == "v":
            sig = self.get("g")
            return Variant(sig, self.get(sig))
        if c == "(":
            self.align(8)
            return tuple(self.get(sub) for sub in _split(t[1:-1]))
        if c == "a":
            elem = t[1:]
            self.align(4)
            (n,) = struct.unpack_from(self.end + "I", self.data, self.pos)
            self.pos += 4
            self.align(_align_of(elem))
            stop = self.pos + n
            if elem[0] == "{":
                key_t, val_t = _split(elem[1:-1])
                out: dict[Any, Any] = {}
                while self.pos < stop:
                    self.align(8)
                    key = self.get(key_t)
                    out[key] = self.get(val_t)
                return out
            items = []
            while self.pos < stop:
                items.append(self.get(elem))
            return items
        raise ValueError(f"D-Bus type {t!r} is not supported")


class Message:
    def __init__(self, type_: int, serial: int, fields: dict[str, Any],
                 body: tuple[Any, ...]) -> None:
        self.type = type_
        self.serial = serial
        self.fields = fields
        self.body = body

    def __getattr__(self, name: str) -> Any:
        if name in _CODES:
            return self.fields.get(name)
        raise AttributeError(name)


def encode(type_: int, serial: int, fields: dict[str, Any], signature: str = "",
           body: tuple[Any, ...] = (), flags: int = 0) -> bytes:
    b = _Writer()
    for t, v in zip(_split(signature), body):
        b.put(t, v)
    if signature:
        fields = dict(fields, signature=signature)
    h = _Writer()
    h.buf += struct.pack("<cBBBII", b"l", type_, flags, 1, len(b.buf), serial)
    h.put("a(yv)", [(_CODES[k][0], Variant(_CODES[k][1], v)) for k, v in fields.items()])
    h.pad(8)  # the body starts 8-aligned
    return bytes(h.buf + b.buf)


def _frame_length(head: bytes) -> int:
    """Total length of a message from its first 16 bytes."""
    end = "<" if head[0:1] == b"l" else ">"
    body_len, _, fields_len = struct.unpack_from(end + "III", head, 4)
    return 16 + fields_len + (-(16 + fields_len) % 8) + body_len


def decode(data: bytes) -> Message:
    little = data[0:1] == b"l"
    r = _Reader(data, little)
    r.pos = 12
    fields = {_FIELDS[code][0]: v.value for code, v in r.get("a(yv)") if code in _FIELDS}
    r.align(8)
    type_ = data[1]
    serial = struct.unpack_from("<I" if little else ">I", data, 8)[0]
    body = tuple(r.get(t) for t in _split(fields.get("signature", "")))
    return Message(type_, serial, fields, body)


# ----------------------------------------------------------------- the link
class Connection:
    """One authenticated connection: method calls, replies, queued signals."""

    def __init__(self, path: str, bus: bool, timeout: float = 10.0) -> None:
        """`bus`: a message bus (send Hello, address systemd by name) rather than a
        peer-to-peer socket such as /run/systemd/private."""
        self.bus = bus
        self.timeout = timeout
        self._serial = 0
        self._buf = b""
        self.signals: list[Message] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            self.sock.settimeout(timeout)
            self.sock.connect(path)
            self._auth()
            if bus:
                self.call("org.freedesktop.DBus", "/org/freedesktop/DBus",
                          "org.freedesktop.DBus", "Hello")
            else:
                self._ping_until_answered()
        except BaseException:
            self.sock.close()
            raise

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _auth(self) -> None:
        # The credentials byte comes first; EXTERNAL proves who we are by the socket's
        # peer credentials, and the argument is our uid as hex-encoded ASCII digits.
        self.sock.sendall(b"\0AUTH EXTERNAL " + str(os.geteuid()).encode().hex().encode()
                          + b"\r\n")
        line = self._line()
        if not line.startswith(b"OK "):
            raise OSError(f"D-Bus authentication refused: {line.decode(errors='replace')}")
        self.sock.sendall(b"BEGIN\r\n")

    def _ping_until_answered(self) -> None:
        """Peer.Ping until one is answered, before the first real call.

        systemd 252's sd-bus server may read BEGIN together with the message behind
        it and then leave that message in its buffer until the socket becomes
        readable again (seen here: a Subscribe answered only when we hung up).  A
        fresh ping makes it readable; replies to earlier pings are dropped by call().
        """
        deadline = time.monotonic() + self.timeout
        while True:
            self._serial += 1
            self.sock.sendall(encode(METHOD_CALL, self._serial, {
                "path": "/", "interface": "org.freedesktop.DBus.Peer", "member": "Ping"}))
            try:
                msg = self._recv(min(time.monotonic() + 0.1, deadline))
            except TimeoutError:
                if time.monotonic() >= deadline:
                    raise
                continue
            if msg.type in (METHOD_RETURN, ERROR):
                return

    def _line(self) -> bytes:
        while b"\r\n" not in self._buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise OSError("D-Bus peer closed the connection during authentication")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\r\n")
        return line

    def _recv(self, deadline: float) -> Message:
        while True:
            if len(self._buf) >= 16:
                n = _frame_length(self._buf[:16])
                if len(self._buf) >= n:
                    data, self._buf = self._buf[:n], self._buf[n:]
                    return decode(data)
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.sock], [], [], left)[0]:
                raise TimeoutError("no answer from D-Bus peer")
            chunk = self.sock.recv(65536)
            if not chunk:
                raise OSError("D-Bus peer closed the connection")
            self._buf += chunk

    def call(self, destination: str, path: str, interface: str, member: str,
             signature: str = "", *args: Any) -> tuple[Any, ...]:
        """A method call; returns the reply's body, raises DBusError for an error."""
        self._serial += 1
        serial = self._serial
        fields: dict[str, Any] = {"path": path, "interface": interface, "member": member}
        if self.bus:  # on a peer-to-peer link there is no one to route by name
            fields["destination"] = destination
        self.sock.sendall(encode(METHOD_CALL, serial, fields, signature, args))
        deadline = time.monotonic() + self.timeout
        while True:
            msg = self._recv(deadline)
            if msg.type == SIGNAL:
                self.signals.append(msg)  # e.g. a JobRemoved that beat our reply
            elif msg.reply_serial == serial:
                if msg.type == ERROR:
                    text = msg.body[0] if msg.body and isinstance(msg.body[0], str) else ""
                    raise DBusError(msg.error_name or "unknown error", text)
                return msg.body

    def wait_signal(self, match: Callable[[Message], bool], timeout: float) -> Message:
        """The first signal (queued or arriving within `timeout`) that `match` accepts."""
        deadline = time.monotonic() + timeout
        while True:
            for i, msg in enumerate(self.signals):
                if match(msg):
                    return self.signals.pop(i)
            self.signals.clear()  # nothing else is waited for: do not let them pile up
            msg = self._recv(deadline)
            if msg.type == SIGNAL:
                self.signals.append(msg)
