"""File descriptors: only stdio, --preserve-fds and socket-activation fds reach the
container; whatever else the caller leaks into the runtime stays out."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import OCIRUN, Runtime, _env, proc_status

LIST_FDS = ["sh", "-c", "ls /proc/1/fd; env | grep ^LISTEN_ || true"]


def with_fds(runtime: Runtime, fds: dict[int, Path], *args: str,
             env_prefix: str = "") -> subprocess.CompletedProcess:
    """Run the runtime from a shell that opened `fds` (as an engine leaking them)."""
    redirs = " ".join(f"{fd}<{path}" for fd, path in fds.items())
    script = f'exec {redirs}; {env_prefix} exec "$@"'
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        r = subprocess.run(["bash", "-c", script, "bash", *OCIRUN, "--root",
                            str(runtime.root), *args], stdin=subprocess.DEVNULL,
                           stdout=out, stderr=err, env=_env(), timeout=30)
        out.seek(0)
        err.seek(0)
        r.stdout, r.stderr = out.read(), err.read()
    return r


def files(runtime: Runtime, *fds: int) -> dict[int, Path]:
    out = {}
    for fd in fds:
        path = runtime.work / f"file{fd}"
        path.write_text(f"content of fd {fd}\n")
        out[fd] = path
    return out


def fd_list(stdout: bytes) -> list[str]:
    listing = stdout.decode().split("--")[0]
    return [w for w in listing.split() if w.isdigit()]


def test_a_leaked_fd_never_reaches_the_container(runtime: Runtime) -> None:
    bundle = runtime.bundle(LIST_FDS)
    r = with_fds(runtime, files(runtime, 3, 5), "run", "--bundle", str(bundle),
                 runtime.new_id())
    assert r.returncode == 0, r.stderr
    assert fd_list(r.stdout) == ["0", "1", "2"]


def test_preserve_fds_passes_fd_3_and_nothing_past_it(runtime: Runtime) -> None:
    bundle = runtime.bundle(["sh", "-c", "ls /proc/1/fd; echo --; cat <&3"])
    r = with_fds(runtime, files(runtime, 3, 5), "run", "--preserve-fds", "1",
                 "--bundle", str(bundle), runtime.new_id())
    assert r.returncode == 0, r.stderr
    assert fd_list(r.stdout) == ["0", "1", "2", "3"]
    assert b"content of fd 3" in r.stdout


def test_preserved_fds_survive_from_create_to_start(runtime: Runtime) -> None:
    out = runtime.work / "out"
    bundle = runtime.bundle(["sh", "-c", "cat <&3 > /out/out; cat <&4 >> /out/out"],
                            edit=lambda s: s["mounts"].append(
                                {"destination": "/out", "type": "bind",
                                 "source": str(runtime.work), "options": ["rbind"]}))
    cid = runtime.new_id()
    r = with_fds(runtime, files(runtime, 3, 4), "create", "--preserve-fds", "2",
                 "--bundle", str(bundle), cid)
    assert r.returncode == 0, r.stderr
    assert runtime("start", cid).returncode == 0
    runtime.wait_status(cid, "stopped")
    assert out.read_text() == "content of fd 3\ncontent of fd 4\n"


def test_preserve_fds_of_a_closed_fd_is_an_error(runtime: Runtime) -> None:
    cid = runtime.new_id()
    r = with_fds(runtime, files(runtime, 3), "run", "--preserve-fds", "2",
                 "--bundle", str(runtime.bundle(LIST_FDS)), cid)
    assert r.returncode != 0 and b"fd 4 is not open" in r.stderr
    assert not (runtime.root / cid).exists()


def test_socket_activation_fds_come_first_with_listen_env(runtime: Runtime) -> None:
    bundle = runtime.bundle(LIST_FDS)
    r = with_fds(runtime, files(runtime, 3, 4, 5, 6), "run", "--preserve-fds", "1",
                 "--bundle", str(bundle), runtime.new_id(),
                 env_prefix="LISTEN_FDS=2 LISTEN_PID=$$")
    assert r.returncode == 0, r.stderr
    # 3-4 are the listen fds, 5 the preserved one; 6 was only leaked
    assert fd_list(r.stdout) == ["0", "1", "2", "3", "4", "5"]
    assert b"LISTEN_FDS=2" in r.stdout and b"LISTEN_PID=1" in r.stdout


def test_listen_fds_meant_for_another_process_are_ignored(runtime: Runtime) -> None:
    bundle = runtime.bundle(LIST_FDS)
    r = with_fds(runtime, files(runtime, 3, 4), "run", "--bundle", str(bundle),
                 runtime.new_id(), env_prefix="LISTEN_FDS=2 LISTEN_PID=1")
    assert r.returncode == 0, r.stderr
    assert fd_list(r.stdout) == ["0", "1", "2"]
    assert b"LISTEN_" not in r.stdout


def _caller_ignoring_and_blocking() -> None:
    """A caller as nohup or a shell's background job leaves it: SIGHUP, SIGINT and
    SIGQUIT ignored, SIGUSR1 blocked."""
    import signal
    for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])


@pytest.mark.parametrize("caller", ["plain", "nohup-like"])
def test_container_process_has_default_signal_dispositions(runtime: Runtime,
                                                           caller: str) -> None:
    cid = runtime.new_id()
    kw = {"preexec_fn": _caller_ignoring_and_blocking} if caller != "plain" else {}
    r = runtime("create", "--bundle", str(runtime.bundle(["sleep", "1000"])), cid, **kw)
    assert r.returncode == 0, r.stderr
    assert runtime("start", cid).returncode == 0
    status = proc_status(runtime.pid(cid))
    # Neither CPython's SIGPIPE/SIGXFSZ nor the caller's choices reach the container.
    assert int(status["SigIgn"], 16) == 0
    assert int(status["SigBlk"], 16) == 0


def test_runtime_fds_do_not_reach_a_created_init(runtime: Runtime) -> None:
    cid = runtime.create(runtime.bundle(["sleep", "1000"]))
    assert runtime("start", cid).returncode == 0
    pid = runtime.pid(cid)
    assert sorted(os.listdir(f"/proc/{pid}/fd"), key=int) == ["0", "1", "2"]
