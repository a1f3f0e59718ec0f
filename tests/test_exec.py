"""exec: a new process in a running container, with the init's namespaces, cgroup and
security setup; its failures never harm the container."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from conftest import OCIRUN, Runtime, _env, proc_status, wait_for


def _running(runtime: Runtime, edit: Any = None, args: list[str] | None = None) -> str:
    cid = runtime.create(runtime.bundle(args, edit=edit))
    assert runtime("start", cid).returncode == 0
    return cid


def _detached(runtime: Runtime, cid: str, *cmd: str, extra: tuple[str, ...] = ()) -> int:
    pid_file = runtime.work / f"exec-{os.urandom(4).hex()}.pid"
    r = runtime("exec", "--detach", "--pid-file", str(pid_file), *extra, cid, *cmd)
    assert r.returncode == 0, r.stderr.decode()
    return int(pid_file.read_text())


def test_exec_returns_the_exit_status_and_passes_stdio(runtime: Runtime) -> None:
    cid = _running(runtime)
    r = runtime("exec", cid, "sh", "-c", "read x; echo out:$x; echo err >&2; exit 7",
                input=b"hi\n")
    assert r.returncode == 7
    assert r.stdout == b"out:hi\n" and r.stderr == b"err\n"


def test_exec_joins_every_namespace_of_the_init(runtime: Runtime) -> None:
    cid = _running(runtime)
    init = runtime.pid(cid)
    pid = _detached(runtime, cid, "sleep", "30")
    for ns in ("mnt", "uts", "ipc", "pid", "net", "cgroup"):
        if os.path.exists(f"/proc/{init}/ns/{ns}"):
            assert os.readlink(f"/proc/{pid}/ns/{ns}") == os.readlink(f"/proc/{init}/ns/{ns}"), ns
    # inside the pid namespace it is not pid 1, and it sees the container's root
    assert proc_status(pid)["NSpid"].split()[-1] != "1"
    assert os.readlink(f"/proc/{pid}/root") == "/"
    r = runtime("exec", cid, "sh", "-c", "echo $$; hostname; ls /")
    assert r.returncode == 0
    assert int(r.stdout.split()[0]) > 1 and b"bin" in r.stdout


def test_exec_joins_the_container_cgroup(runtime: Runtime) -> None:
    cid = _running(runtime)
    init = runtime.pid(cid)
    pid = _detached(runtime, cid, "sleep", "30")
    with open(f"/proc/{init}/cgroup") as a, open(f"/proc/{pid}/cgroup") as b:
        assert a.read() == b.read()
    r = runtime("ps", "--format", "json", cid)
    assert sorted(json.loads(r.stdout)) == sorted([init, pid])


def test_exec_of_a_missing_binary_fails_and_leaves_the_container(runtime: Runtime) -> None:
    cid = _running(runtime)
    init = runtime.pid(cid)
    # 255, as runc and crun: out of the range of the process's own status
    r = runtime("exec", cid, "no-such-binary")
    assert r.returncode == 255
    assert b"executable file not found in $PATH" in r.stderr
    r = runtime("exec", cid, "/no/such/file")
    assert r.returncode == 255 and b"no such file or directory" in r.stderr
    r = runtime("exec", cid, "sh", "-c", "exit 127")
    assert r.returncode == 127  # the process's own status passes through
    r = runtime("exec", "-d", cid, "no-such-binary")
    assert r.returncode != 0 and b"executable file not found" in r.stderr
    assert runtime.state(cid)["status"] == "running" and runtime.pid(cid) == init
    wait_for(lambda: json.loads(runtime("ps", "--format", "json", cid).stdout) == [init],
             what="only the init left in the cgroup")


def test_exec_into_paused_and_stopped_containers_is_refused(runtime: Runtime) -> None:
    cid = _running(runtime)
    assert runtime("pause", cid).returncode == 0
    r = runtime("exec", cid, "true")
    assert r.returncode != 0 and b"paused" in r.stderr
    assert runtime("resume", cid).returncode == 0
    assert runtime("exec", cid, "true").returncode == 0
    assert runtime("kill", cid, "KILL").returncode == 0
    runtime.wait_status(cid, "stopped")
    r = runtime("exec", cid, "true")
    assert r.returncode != 0 and b"stopped" in r.stderr
    r = runtime("exec", "no-such-container", "true")
    assert r.returncode != 0 and b"does not exist" in r.stderr


def test_exec_returns_128_plus_the_signal(runtime: Runtime) -> None:
    cid = _running(runtime)
    proc = subprocess.Popen([*OCIRUN, "--root", str(runtime.root), "exec", cid, "sleep",
                             "1000"], env=_env(), stdin=subprocess.DEVNULL)
    try:
        def exec_pid() -> int | None:
            pids = json.loads(runtime("ps", "--format", "json", cid).stdout)
            others = [p for p in pids if p != runtime.pid(cid)]
            return others[0] if others else None
        wait_for(lambda: exec_pid() is not None, what="exec'd process")
        pid = exec_pid()
        wait_for(lambda: open(f"/proc/{pid}/comm").read().strip() == "sleep", what="exec")
        os.kill(pid, signal.SIGKILL)
        assert proc.wait(timeout=10) == 128 + signal.SIGKILL
    finally:
        proc.kill()
        proc.wait()


def test_exec_forwards_signals_to_the_process(runtime: Runtime) -> None:
    cid = _running(runtime)
    proc = subprocess.Popen([*OCIRUN, "--root", str(runtime.root), "exec", cid, "sh", "-c",
                             "trap 'exit 9' TERM; while :; do sleep 0.05; done"],
                            env=_env(), stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: len(json.loads(runtime("ps", "--format", "json", cid).stdout)) > 2,
                 what="exec'd shell")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 9
    finally:
        proc.kill()
        proc.wait()


def test_exec_user_cwd_env_and_groups(runtime: Runtime) -> None:
    cid = _running(runtime)
    r = runtime("exec", "--user", "1000:1001", "--additional-gids", "5", "-g", "6",
                "--cwd", "/tmp", "-e", "FOO=bar", "--env", "PATH=/bin", cid,
                "sh", "-c", "id -u; id -g; id -G; pwd; echo $FOO $PATH")
    assert r.returncode == 0, r.stderr
    uid, gid, groups, cwd, env = r.stdout.decode().splitlines()
    assert (uid, gid, cwd, env) == ("1000", "1001", "/tmp", "bar /bin")
    assert set(groups.split()) >= {"5", "6"}


def test_exec_flags_after_the_command_belong_to_the_command(runtime: Runtime) -> None:
    cid = _running(runtime)
    r = runtime("exec", cid, "--", "echo", "x", "-e", "--detach")
    assert r.returncode == 0 and r.stdout == b"x -e --detach\n"


def test_exec_has_the_container_capabilities_and_rlimits(runtime: Runtime) -> None:
    def edit(s: dict[str, Any]) -> None:
        s["process"]["rlimits"] = [{"type": "RLIMIT_NOFILE", "soft": 321, "hard": 654}]
    cid = _running(runtime, edit)
    init = runtime.pid(cid)
    pid = _detached(runtime, cid, "sleep", "30")
    mine, theirs = proc_status(pid), proc_status(init)
    for key in ("CapBnd", "CapEff", "CapPrm", "CapInh", "CapAmb", "NoNewPrivs"):
        assert mine[key] == theirs[key], key
    with open(f"/proc/{pid}/limits") as f:
        line = [x for x in f if x.startswith("Max open files")][0].split()
    assert line[3:5] == ["321", "654"]
    extra = _detached(runtime, cid, "sleep", "30", extra=("--cap", "CAP_SYS_ADMIN",
                                                          "--no-new-privs"))
    status = proc_status(extra)
    assert int(status["CapEff"], 16) & (1 << 21)
    assert status["NoNewPrivs"] == "1"


def test_exec_gets_the_container_seccomp_filter(runtime: Runtime) -> None:
    def edit(s: dict[str, Any]) -> None:
        s["linux"]["seccomp"] = {
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO",
                          "errnoRet": 1}]}
    cid = _running(runtime, edit)
    r = runtime("exec", cid, "sh", "-c", "mkdir /tmp/x")
    assert r.returncode != 0 and b"not permitted" in r.stderr.lower()
    pid = _detached(runtime, cid, "sleep", "30")
    assert proc_status(pid)["Seccomp"] == "2"


def test_exec_process_file(runtime: Runtime, tmp_path: Path) -> None:
    cid = _running(runtime)
    process = {"args": ["sh", "-c", "echo $A; id -u; pwd"], "cwd": "/etc",
               "user": {"uid": 42, "gid": 42}, "env": ["A=from-file", "PATH=/bin"]}
    (tmp_path / "process.json").write_text(json.dumps(process))
    r = runtime("exec", "--process", str(tmp_path / "process.json"), cid)
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"from-file\n42\n/etc\n"
    (tmp_path / "bad.json").write_text(json.dumps({"args": [], "cwd": "/"}))
    r = runtime("exec", "--process", str(tmp_path / "bad.json"), cid)
    assert r.returncode != 0 and b"process." in r.stderr


def test_exec_preserve_fds_and_closes_the_rest(runtime: Runtime, tmp_path: Path) -> None:
    cid = _running(runtime)
    data = tmp_path / "data"
    data.write_text("preserved\n")
    cmd = [*OCIRUN, "--root", str(runtime.root), "exec", "--preserve-fds", "1", cid,
           "sh", "-c", "cat <&3; ls /proc/self/fd"]
    # fds 3, 4 and 5 are open in the runtime; only 3 may reach the process
    r = subprocess.run(["sh", "-c", 'exec "$@" 3<"$F" 4<"$F" 5<"$F"', "sh", *cmd],
                       env={**_env(), "F": str(data)}, capture_output=True,
                       stdin=subprocess.DEVNULL, timeout=30)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.decode().split()
    assert lines[0] == "preserved"
    # stdio, fd 3 and the fd `ls` opens for /proc/self/fd: 4 and 5 were closed
    assert lines[1:4] == ["0", "1", "2"] and "3" in lines and "5" not in lines
    assert len(lines) == 6


def test_exec_detached_is_reparented_and_keeps_running(runtime: Runtime) -> None:
    cid = _running(runtime)
    pid = _detached(runtime, cid, "sleep", "30")
    assert open(f"/proc/{pid}/comm").read().strip() == "sleep"
    assert runtime.state(cid)["status"] == "running"
    assert runtime("kill", "--all", cid, "KILL").returncode == 0
    runtime.wait_status(cid, "stopped")
    wait_for(lambda: not os.path.exists(f"/proc/{pid}") or
             open(f"/proc/{pid}/stat").read().split(") ")[1][0] == "Z", what="exec'd gone")


def test_exec_into_a_container_with_a_user_namespace(runtime: Runtime) -> None:
    # The mapped root must be able to reach the rootfs: keep it out of pytest's 0700 dirs.
    top = tempfile.mkdtemp(prefix="ocirun-userns-", dir="/var/tmp")
    try:
        os.chmod(top, 0o755)
        shutil.copytree(runtime.rootfs, f"{top}/rootfs", symlinks=True)

        def edit(s: dict[str, Any]) -> None:
            s["root"]["path"] = f"{top}/rootfs"
            s["linux"]["namespaces"].append({"type": "user"})
            s["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
            s["linux"]["gidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
        cid = _running(runtime, edit)
        init = runtime.pid(cid)
        pid = _detached(runtime, cid, "sleep", "30")
        assert os.readlink(f"/proc/{pid}/ns/user") == os.readlink(f"/proc/{init}/ns/user")
        assert proc_status(pid)["Uid"].split()[0] == "100000"
        r = runtime("exec", "-u", "7", cid, "id", "-u")
        assert r.returncode == 0 and r.stdout == b"7\n", r.stderr
        assert proc_status(pid)["CapEff"] == proc_status(init)["CapEff"]
    finally:
        for cid in list(runtime.created):
            runtime("delete", "--force", cid)
        shutil.rmtree(top, ignore_errors=True)


def test_exec_tty_in_the_foreground_relays_the_terminal(runtime: Runtime) -> None:
    if not shutil.which("script"):
        import pytest
        pytest.skip("needs script(1)")
    cid = _running(runtime)
    ocirun = " ".join([*OCIRUN, "--root", str(runtime.root)])
    # script's stdin stays open: at EOF it would hang its pty up, as it does for runc
    proc = subprocess.Popen(["script", "-eqc", f"stty rows 30 cols 100; {ocirun} exec -t "
                             f"{cid} sh -c 'tty; stty size; exit 5'", "/dev/null"],
                            env=_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        out = proc.stdout.read()
        assert proc.wait(timeout=30) == 5
    finally:
        proc.kill()
        proc.wait()
    assert b"/dev/pts/" in out and b"30 100" in out, out


def test_exec_tty_sends_the_master_over_the_console_socket(runtime: Runtime,
                                                           tmp_path: Path) -> None:
    import socket
    cid = _running(runtime)
    path = str(tmp_path / "console.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    server.settimeout(20)
    try:
        pid_file = tmp_path / "pid"
        proc = subprocess.Popen([*OCIRUN, "--root", str(runtime.root), "exec", "-d", "-t",
                                 "--console-socket", path, "--pid-file", str(pid_file), cid,
                                 "sh", "-c", "tty; read x; echo got:$x"],
                                env=_env(), stdin=subprocess.DEVNULL)
        conn, _ = server.accept()
        _msg, fds, _flags, _addr = socket.recv_fds(conn, 4096, 1)
        conn.close()
        assert proc.wait(timeout=20) == 0
        master = fds[0]
        pid = int(pid_file.read_text())
        assert proc_status(pid)["NSpid"].split()[0] == str(pid)
        os.write(master, b"hello\n")
        out = b""
        while b"got:hello" not in out:
            chunk = os.read(master, 4096)
            assert chunk
            out += chunk
        assert b"/dev/pts/" in out
        os.close(master)
    finally:
        server.close()


def test_exec_errors_reach_the_json_log_and_work_without_path(runtime: Runtime) -> None:
    from conftest import REPO
    cid = _running(runtime)
    log = runtime.work / "log.json"
    r = runtime("--log", str(log), "--log-format=json", "exec", cid, "no-such-binary",
                env={"PYTHONPATH": str(REPO)})
    assert r.returncode == 255
    last = json.loads(log.read_text().splitlines()[-1])
    assert last["level"] == "error" and "executable file not found" in last["msg"]
    assert {"level", "msg", "time"} <= set(last)
    r = runtime("exec", cid, "/bin/echo", "ok", env={"PYTHONPATH": str(REPO)})
    assert r.returncode == 0 and r.stdout == b"ok\n", r.stderr


def test_exec_process_file_from_a_pipe(runtime: Runtime) -> None:
    """`exec -p <(...)` as runc takes it: the caller's own pipe is read to its end."""
    cid = _running(runtime)
    process = json.dumps({"args": ["echo", "from-a-pipe"], "cwd": "/"})  # no user: root
    r = runtime("exec", "-p", "/dev/stdin", cid, input=process.encode())
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == b"from-a-pipe"
    r = runtime("exec", "--pid-file", "/no-such-dir/pid", cid, "true")
    assert r.returncode == 255 and r.stderr.count(b"\n") == 1, r.stderr


def test_exec_process_file_errors_name_the_file(runtime: Runtime) -> None:
    cid = _running(runtime)
    r = runtime("exec", "-p", "/dev/stdin", cid, input=b'{"cwd": "/"}')
    err = r.stderr.decode()
    assert r.returncode == 255 and err.startswith("ocirun: --process /dev/stdin: process.args"), err
    assert "config.json" not in err
