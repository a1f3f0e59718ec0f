"""Terminals: the container's pty, the console socket, and `run` attached to a tty.

Child side (the init, after pivot_root, before the root is made read-only):
`setup_console` opens the container's own /dev/ptmx (a symlink into its devpts), binds the
slave onto /dev/console, makes it the controlling terminal and stdio, and sends the
master over the console socket: one message whose payload is the master's name and
whose SCM_RIGHTS carries the fd — what runc sends and what conmon and go-runc's
ReceiveMaster read.

Parent side: `connect` resolves and connects --console-socket on the host before the
fork; `receive_master` is the other end of that exchange when the runtime itself is the
receiver (foreground `run` with a terminal), and `relay` then copies between the user's
terminal and the master until the container's init exits.
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import socket
import stat
import struct
from typing import Any

from ocirun.errors import OciError

TIOCSCTTY = 0x540E
TIOCGWINSZ = 0x5413
TIOCSWINSZ = 0x5414
TIOCGPTN = 0x80045430
TIOCSPTLCK = 0x40045431
TIOCGPTPEER = 0x5441

MASTER_NAME = "/dev/ptmx"


# ----------------------------------------------------------------------- parent side
def connect(path: str) -> socket.socket:
    """Connect to an engine's console socket (resolved in the runtime's namespaces)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError as e:
        sock.close()
        raise OciError(f"--console-socket {path}: connect: "
                       f"{os.strerror(e.errno).lower() if e.errno else e}") from None
    return sock


def socket_pair() -> tuple[socket.socket, socket.socket]:
    """(ours, the init's) for a runtime that receives the master itself."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)


def receive_master(sock: socket.socket) -> int:
    """The pty master sent by the init (it is sent before the init reports ready)."""
    try:
        _data, fds, _flags, _addr = socket.recv_fds(sock, 4096, 1)
    except OSError as e:
        raise OciError(f"receiving the container's pty: {e.strerror or e}") from None
    if not fds:
        raise OciError("the container's init sent no pty master")
    return fds[0]


def get_winsize(fd: int) -> tuple[int, int] | None:
    try:
        rows, cols, _x, _y = struct.unpack(
            "HHHH", fcntl.ioctl(fd, TIOCGWINSZ, b"\0" * 8))
    except OSError:
        return None
    return rows, cols


def set_winsize(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def relay(master: int, pid: int, forwarded: tuple[int, ...]) -> int:
    """Attach the runtime's stdio to the container's pty until `pid` (our child, the
    container's init) exits; returns its wait status.  The user's terminal is put in
    raw mode and restored whatever happens; window-size changes follow SIGWINCH."""
    import termios
    import tty

    from ocirun.process import staying
    staying()
    in_fd = 0
    saved = None
    if os.isatty(in_fd):
        saved = termios.tcgetattr(in_fd)
        size = get_winsize(in_fd)
        if size is not None:
            set_winsize(master, *size)

    def on_winch(_signum: int, _frame: Any) -> None:
        size = get_winsize(in_fd)
        if size is not None:
            try:
                set_winsize(master, *size)
            except OSError:
                pass

    def forward(signum: int, _frame: Any) -> None:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    old_handlers = {sig: signal.signal(sig, forward) for sig in forwarded
                    if sig != signal.SIGWINCH}
    old_handlers[signal.SIGWINCH] = signal.signal(signal.SIGWINCH, on_winch)
    pidfd = os.pidfd_open(pid)
    try:
        if saved is not None:
            tty.setraw(in_fd, termios.TCSANOW)
        return _copy_until_exit(master, pid, pidfd, in_fd, 1)
    finally:
        os.close(pidfd)
        if saved is not None:
            termios.tcsetattr(in_fd, termios.TCSADRAIN, saved)
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)


def _copy_until_exit(master: int, pid: int, pidfd: int, in_fd: int, out_fd: int) -> int:
    """Copy in_fd to the pty and the pty to out_fd until `pid` exits: its status."""
    import select
    status: int | None = None
    watch_stdin = True
    hung_up = False  # every slave fd is closed: only the exit is left to wait for
    pending = b""  # user input the pty has not taken yet
    while status is None:
        rlist = [pidfd] + ([master] if not hung_up else []) + (
            [in_fd] if watch_stdin and not pending else [])
        wlist = [master] if pending and not hung_up else []
        readable, writable, _ = select.select(rlist, wlist, [])
        if master in readable and not _copy_out(master, out_fd):
            hung_up = True
        if in_fd in readable:
            try:
                pending = os.read(in_fd, 65536)
            except OSError:
                pending = b""
            if not pending:
                watch_stdin = False
        if master in writable and pending:
            try:
                pending = pending[os.write(master, pending):]
            except OSError:
                pending = b""
        if pidfd in readable:
            status = os.waitpid(pid, 0)[1]
    if not hung_up:
        _drain(master, out_fd)
    return status


def _copy_out(master: int, out_fd: int) -> bool:
    """Copy what the container wrote; False once the pty is hung up."""
    try:
        data = os.read(master, 65536)
    except OSError as e:
        if e.errno in (errno.EIO, errno.EBADF):
            return False
        if e.errno == errno.EAGAIN:
            return True
        raise
    if not data:
        return False
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(out_fd, view):]
        except BlockingIOError:
            import select
            select.select([], [out_fd], [])
        except OSError:
            return True  # nobody reads our output any more: keep draining the pty
    return True


def _drain(master: int, out_fd: int, quiet_for: float = 0.2) -> None:
    """After the init exits: what is left in the pty, until it hangs up or goes quiet."""
    import select
    while select.select([master], [], [], quiet_for)[0]:
        if not _copy_out(master, out_fd):
            return


# ------------------------------------------------------------------------ child side
def setup_console(sock_fd: int, console_size: Any, mount_console: bool) -> None:
    """In the init: allocate the pty from the container's devpts and make it stdio.

    Runs after pivot_root, so /dev/ptmx and /dev/pts are the container's; sock_fd is the
    connected console socket (closed here).  console_size is spec.process.consoleSize.
    """
    try:
        master = os.open(MASTER_NAME, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as e:
        raise OciError(f"process.terminal: opening {MASTER_NAME} in the container: "
                       f"{os.strerror(e.errno).lower()} (is /dev/pts a devpts mount?)") from None
    slave = -1
    try:
        fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))  # unlockpt
        slave = _open_peer(master)
        if console_size is not None and console_size.height and console_size.width:
            set_winsize(master, console_size.height, console_size.width)
        if mount_console:
            _mount_console(slave)
        sock = socket.socket(fileno=sock_fd)
        try:
            socket.send_fds(sock, [MASTER_NAME.encode()], [master])
        except OSError as e:
            raise OciError(f"sending the pty master over the console socket: "
                           f"{os.strerror(e.errno).lower()}") from None
        finally:
            sock.close()
    except BaseException:
        if slave >= 0:
            os.close(slave)
        raise
    finally:
        os.close(master)
    for fd in (0, 1, 2):
        os.dup2(slave, fd)
    if slave > 2:
        os.close(slave)
    fcntl.ioctl(0, TIOCSCTTY, 0)


def _open_peer(master: int) -> int:
    """The pty's slave, opened from the master itself (TIOCGPTPEER, Linux 4.13+), not
    by its /dev/pts name, which anyone sharing the container's /dev could swap for a
    symlink (runc's CVE-2025-52565); checked to be a pty slave either way."""
    try:
        slave = fcntl.ioctl(master, TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as e:
        if e.errno != errno.EINVAL and e.errno != errno.ENOTTY:
            raise OciError(f"opening the pty's slave: {os.strerror(e.errno).lower()}") from None
        number = struct.unpack("I", fcntl.ioctl(master, TIOCGPTN, b"\0" * 4))[0]
        slave = os.open(f"/dev/pts/{number}", os.O_RDWR | os.O_NOCTTY | os.O_NOFOLLOW |
                        os.O_CLOEXEC)
    st = os.fstat(slave)
    if not stat.S_ISCHR(st.st_mode) or not 136 <= os.major(st.st_rdev) <= 143:
        os.close(slave)
        raise OciError("process.terminal: the pty's slave is not a pty")
    return slave


def _mount_console(slave: int) -> None:
    """Bind the slave onto /dev/console by fd, onto a /dev/console opened without
    following a symlink: both ends are the files checked, not names looked up again."""
    from ocirun import sys as ksys
    console = "/dev/console"
    try:
        try:
            target = os.open(console, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            os.close(os.open(console, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW |
                             os.O_CLOEXEC, 0o600))
            target = os.open(console, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            mode = os.fstat(target).st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISCHR(mode)):
                raise OciError(f"process.terminal: {console} in the container is not a file "
                               "or a device (a symlink?): refusing to bind the pty onto it")
            ksys.bind_fd(slave, target)
        finally:
            os.close(target)
    except OSError as e:
        raise OciError(f"binding the pty onto {console}: "
                       f"{os.strerror(e.errno).lower()}") from None
