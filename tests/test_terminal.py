"""process.terminal: the pty comes from the container's own devpts, its master reaches
the engine over --console-socket (SCM_RIGHTS), and foreground `run` attaches the
caller's terminal."""

from __future__ import annotations

import os
import select
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import OCIRUN, Runtime, _env, wait_for


class ConsoleListener:
    """What conmon / containerd's shim do: listen, accept, receive the master."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(1)
        self.sock.settimeout(10)
        self.name = b""

    def receive(self) -> int:
        conn, _ = self.sock.accept()
        with conn:
            self.name, fds, _flags, _addr = socket.recv_fds(conn, 4096, 1)
        assert len(fds) == 1, "one fd, sent with SCM_RIGHTS"
        return fds[0]

    def close(self) -> None:
        self.sock.close()


def read_until(fd: int, marker: bytes, timeout: float = 10) -> bytes:
    out = b""
    deadline = time.monotonic() + timeout
    while marker not in out:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {marker!r} from the pty; got {out!r}")
        if select.select([fd], [], [], left)[0]:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
    assert marker in out, out
    return out


def terminal_bundle(runtime: Runtime, args: list[str] | None = None,
                    size: dict[str, int] | None = None) -> Path:
    def edit(spec: dict[str, Any]) -> None:
        spec["process"]["terminal"] = True
        if size is not None:
            spec["process"]["consoleSize"] = size
    return runtime.bundle(args or ["sh"], edit=edit)


@pytest.fixture
def listener(runtime: Runtime) -> Any:
    lst = ConsoleListener(runtime.work / "console.sock")
    yield lst
    lst.close()


def test_console_socket_receives_the_master_and_drives_a_shell(
        runtime: Runtime, listener: ConsoleListener) -> None:
    bundle = terminal_bundle(runtime)
    cid = runtime.create(bundle, None, "--console-socket", str(listener.path))
    master = listener.receive()
    try:
        assert listener.name == b"/dev/ptmx"  # runc's payload: the master's name
        assert runtime("start", cid).returncode == 0
        os.write(master, b"tty; echo answer=$((6*7))\n")
        out = read_until(master, b"answer=42")
        assert b"/dev/pts/0" in out  # a fresh devpts instance: its first pty
        os.write(master, b"exit 3\n")
        runtime.wait_status(cid, "stopped")
    finally:
        os.close(master)


def test_pty_is_from_the_containers_devpts_and_is_console_and_ctty(
        runtime: Runtime, listener: ConsoleListener) -> None:
    cid = runtime.create(terminal_bundle(runtime), None,
                         "--console-socket", str(listener.path))
    master = listener.receive()
    try:
        pid = runtime.pid(cid)
        slave = os.stat(f"/proc/{pid}/fd/0")
        for fd in (1, 2):
            assert os.stat(f"/proc/{pid}/fd/{fd}").st_rdev == slave.st_rdev
        # The slave lives on the container's devpts mount, not the host's.
        assert slave.st_dev == os.stat(f"/proc/{pid}/root/dev/pts").st_dev
        assert slave.st_dev != os.stat("/dev/pts").st_dev
        # /dev/console is the same pty, bound over a file in the container's /dev.
        assert os.stat(f"/proc/{pid}/root/dev/console").st_rdev == slave.st_rdev
        with open(f"/proc/{pid}/mountinfo") as f:
            assert any(line.split()[4] == "/dev/console" for line in f)
        # It is the init's controlling terminal (stat field 7, tty_nr).
        with open(f"/proc/{pid}/stat") as f:
            tty_nr = int(f.read().rsplit(")", 1)[1].split()[4])
        assert tty_nr == slave.st_rdev
        # And the master we hold is its other end.
        assert runtime("start", cid).returncode == 0
        os.write(master, b"echo via-master\n")
        read_until(master, b"via-master\r\n")
    finally:
        os.close(master)


def test_console_size_is_applied(runtime: Runtime, listener: ConsoleListener) -> None:
    bundle = terminal_bundle(runtime, size={"height": 33, "width": 111})
    cid = runtime.create(bundle, None, "--console-socket", str(listener.path))
    master = listener.receive()
    try:
        assert runtime("start", cid).returncode == 0
        os.write(master, b"stty size; echo done=$((1+1))\n")
        assert b"33 111" in read_until(master, b"done=2")
    finally:
        os.close(master)


def test_create_with_a_terminal_and_no_console_socket_fails(runtime: Runtime) -> None:
    cid = runtime.new_id()
    r = runtime("create", "--bundle", str(terminal_bundle(runtime)), cid)
    assert r.returncode != 0 and b"console-socket" in r.stderr
    assert not (runtime.root / cid).exists()


def test_detached_run_with_a_terminal_and_no_console_socket_fails(runtime: Runtime) -> None:
    cid = runtime.new_id()
    r = runtime("run", "-d", "--bundle", str(terminal_bundle(runtime)), cid)
    assert r.returncode != 0 and b"console-socket" in r.stderr
    assert not (runtime.root / cid).exists()


def test_console_socket_without_a_terminal_fails(runtime: Runtime,
                                                 listener: ConsoleListener) -> None:
    cid = runtime.new_id()
    r = runtime("create", "--bundle", str(runtime.bundle()), "--console-socket",
                str(listener.path), cid)
    assert r.returncode != 0 and b"terminal" in r.stderr


def test_console_socket_nobody_listens_on_is_an_error(runtime: Runtime) -> None:
    cid = runtime.new_id()
    r = runtime("create", "--bundle", str(terminal_bundle(runtime)), "--console-socket",
                str(runtime.work / "nobody.sock"), cid)
    assert r.returncode != 0 and b"nobody.sock" in r.stderr
    assert b"no such file" in r.stderr.lower()
    assert not (runtime.root / cid).exists()


def _spawn_run(runtime: Runtime, bundle: Path, cid: str, rows: int, cols: int) -> Any:
    pexpect = pytest.importorskip("pexpect")
    cmd = " ".join([*OCIRUN, "--root", str(runtime.root), "run", "--bundle", str(bundle),
                    cid])
    # A shell around the runtime shows the exit status and, afterwards, the mode the
    # runtime left the terminal in.
    return pexpect.spawn("/bin/sh", ["-c", f"{cmd}; echo status=$?; stty -a"],
                         env=_env(), timeout=20, dimensions=(rows, cols))


def test_foreground_run_attaches_the_callers_terminal(runtime: Runtime) -> None:
    bundle = terminal_bundle(runtime)
    cid = runtime.new_id()
    child = _spawn_run(runtime, bundle, cid, 20, 70)
    pexpect = pytest.importorskip("pexpect")
    try:
        child.sendline("stty size; echo first=$((6*7))")
        child.expect("first=42")
        assert b"20 70" in child.before  # the caller's size, copied at attach
        child.setwinsize(40, 120)  # SIGWINCH to the runtime, forwarded to the pty
        child.sendline("stty size; echo second=$((7*7))")
        child.expect("second=49")
        assert b"40 120" in child.before
        child.sendline("echo x > /dev/null; exit 5")
        child.expect(r"status=(\d+)")
        assert child.match.group(1) == b"5"
        child.expect(pexpect.EOF)
        modes = child.before.split()  # stty -a, run after the runtime returned
        # Cooked mode is back: the runtime restored the terminal it had made raw.
        assert b"icanon" in modes and b"-icanon" not in modes
        assert b"echo" in modes and b"-echo" not in modes
    finally:
        child.close(force=True)
    assert not (runtime.root / cid).exists()


def test_foreground_run_with_a_terminal_and_no_tty_on_stdin(runtime: Runtime) -> None:
    bundle = terminal_bundle(runtime, ["sh", "-c", "tty; exit 4"])
    cid = runtime.new_id()
    r = runtime("run", "--bundle", str(bundle), cid)
    assert r.returncode == 4, r.stderr
    assert b"/dev/pts/0" in r.stdout


def test_foreground_run_terminal_forwards_kill_status(runtime: Runtime) -> None:
    bundle = terminal_bundle(runtime, ["sleep", "1000"])
    cid = runtime.new_id()
    child = _spawn_run(runtime, bundle, cid, 24, 80)
    try:
        wait_for(lambda: (runtime.root / cid / "state.json").exists() and
                 runtime.state(cid)["status"] == "running", what="running")
        assert runtime("kill", cid, "KILL").returncode == 0
        child.expect(r"status=(\d+)")
        assert child.match.group(1) == b"137"
    finally:
        child.close(force=True)


def test_run_without_terminal_is_unchanged_by_console_code(runtime: Runtime) -> None:
    r = runtime("run", "--bundle", str(runtime.bundle(["sh", "-c", "tty; true"])),
                runtime.new_id())
    assert b"not a tty" in r.stdout
