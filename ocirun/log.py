"""--log / --log-format: where warnings and errors go, in the form engines parse.

With --log-format json each line is {"level", "msg", "time"} (containerd keeps the last
"error" line as the message).  Errors always go to stderr as well.
"""

from __future__ import annotations

import os
import sys
import time

from ocirun import jsonio

_path: str | None = None
_json = False
_debug = False


def configure(path: str | None, fmt: str, debug: bool) -> None:
    """Log to `path` (appended to, made if missing) from now on; a path that cannot
    be written is an error now, as runc's, not a log silently lost later."""
    global _path, _json, _debug
    _json, _debug = fmt == "json", debug
    if path is not None:
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                             0o644))
        except OSError as e:
            from ocirun.errors import OciError
            raise OciError(f"--log {path}: {os.strerror(e.errno).lower()}") from None
    _path = path


def one_line(msg: str) -> str:
    """`msg` with every character that could break or fake a line (newlines, NEL,
    terminal controls, lone surrogates from a config's strings) written as an escape."""
    if msg.isprintable():
        return msg
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in msg)


def _now() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(now)) + \
        f".{int(now % 1 * 1e9):09d}" + time.strftime("%z", time.localtime(now))[:3] + ":" + \
        time.strftime("%z", time.localtime(now))[3:]


def _write(level: str, msg: str) -> None:
    msg = one_line(msg)
    if _json:
        line = jsonio.dumps({"level": level, "msg": msg, "time": _now()})
    else:
        line = f'time="{_now()}" level={level} msg="{msg}"'
    try:
        fd = os.open(_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)  # type: ignore[arg-type]
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)
    except OSError:
        pass


def error(msg: str) -> None:
    if _path:
        _write("error", msg)
    print(f"ocirun: {one_line(msg)}", file=sys.stderr)


def warn(msg: str) -> None:
    if _path:
        _write("warning", msg)
    else:
        print(f"ocirun: warning: {one_line(msg)}", file=sys.stderr)


def debug(msg: str) -> None:
    if _debug:
        if _path:
            _write("debug", msg)
        else:
            print(f"ocirun: debug: {one_line(msg)}", file=sys.stderr)
