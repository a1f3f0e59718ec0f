"""ocirun.seccomp against the real kernel: a forked child loads the filter and execs.

The child sets no_new_privs before loading (as a container with noNewPrivileges does);
the tests about CAP_SYS_ADMIN and uid switching skip unless run as root.  The parent never
loads a filter, so each test compares "inside" (the child) with "outside" (the test
process).
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
import traceback
from pathlib import Path
from typing import Callable

import pytest

from ocirun.errors import ConfigError, OciError
from ocirun.seccomp import PreparedFilter, features, load, prepare, send_listener
from ocirun.seccomp.cache import MAGIC, _read
import seccomp_notify
from seccomp_profile import CONTAINERS_PROFILE, load_engine_profile
from ocirun.spec import Seccomp, SyscallArg, SyscallRule
from ocirun.sys import seccomp as ksys

REPO = Path(__file__).resolve().parent.parent
MKDIR = ("mkdir", "mkdirat")  # glibc may use either
PR_SET_NO_NEW_PRIVS = 38
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def nr(name: str) -> int:
    import pyseccomp
    return pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name)


def profile(default: str = "SCMP_ACT_ALLOW", *rules: SyscallRule, **kw: object) -> Seccomp:
    return Seccomp(default_action=default, syscalls=tuple(rules), **kw)  # type: ignore[arg-type]


def deny_mkdir(action: str = "SCMP_ACT_ERRNO", errno_ret: int | None = None) -> Seccomp:
    return profile("SCMP_ACT_ALLOW", SyscallRule(names=MKDIR, action=action,
                                                 errno_ret=errno_ret))


def run_child(prepared: PreparedFilter, target: list[str] | Callable[[int | None], int], *,
              nnp: bool = True, uid: int | None = None) -> tuple[int, str, str]:
    """Fork; the child loads the filter then execs `target` (or calls it with load()'s
    result, the listener fd or None, and exits with what it returns).

    Returns (wait status, stdout, stderr).
    """
    if (not nnp or uid is not None) and os.geteuid() != 0:
        pytest.skip("needs root")
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 127
        try:
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            if uid is not None:
                os.setgroups([])
                os.setresgid(uid, uid, uid)
                os.setresuid(uid, uid, uid)
            if nnp:
                assert _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
            listener = load(prepared)
            if callable(target):
                code = target(listener)
            else:
                os.execv(target[0], target)
        except OciError as e:
            os.write(2, f"OciError: {e.message}\n".encode())
            code = 125
        except BaseException:
            os.write(2, traceback.format_exc().encode())
        os._exit(code)
    os.close(out_w)
    os.close(err_w)
    out = _drain(out_r)
    err = _drain(err_r)
    _, status = os.waitpid(pid, 0)
    return status, out, err


def _drain(fd: int) -> str:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks).decode(errors="replace")


def exit_code(status: int) -> int:
    assert os.WIFEXITED(status), f"not exited: {status:#x}"
    return os.WEXITSTATUS(status)


def raw_syscall(number: int, *args: int) -> int:
    """The syscall's errno (0 on success), with full 64-bit argument registers."""
    ret = _libc.syscall(ctypes.c_long(number), *(ctypes.c_ulong(a) for a in args))
    return ctypes.get_errno() if ret < 0 else 0


@pytest.fixture
def cache(tmp_path: Path) -> str:
    return str(tmp_path / "cache")


# ------------------------------------------------------------------ enforcement
def test_errno_rule_denies_mkdir_inside_and_mkdir_works_outside(tmp_path: Path,
                                                                 cache: str) -> None:
    prepared = prepare(deny_mkdir(), cache)
    status, _, err = run_child(prepared, ["/bin/mkdir", str(tmp_path / "inside")])
    assert exit_code(status) == 1
    assert "Operation not permitted" in err  # no errnoRet: EPERM, as runc
    assert not (tmp_path / "inside").exists()
    subprocess.run(["/bin/mkdir", str(tmp_path / "outside")], check=True)
    assert (tmp_path / "outside").is_dir()


def test_errno_ret_of_a_rule_is_returned(tmp_path: Path, cache: str) -> None:
    prepared = prepare(deny_mkdir(errno_ret=errno.EXDEV), cache)
    status, _, err = run_child(prepared, ["/bin/mkdir", str(tmp_path / "d")])
    assert exit_code(status) == 1
    assert os.strerror(errno.EXDEV) in err


@pytest.mark.skipif(not os.path.exists(CONTAINERS_PROFILE), reason="no containers-common")
def test_default_errno_ret_applies_to_unlisted_syscalls(tmp_path: Path, cache: str) -> None:
    # Allow what podman allows, except mkdir: mkdir falls to the default action.
    podman = load_engine_profile()
    rules = [SyscallRule(names=tuple(n for n in r.names if n not in MKDIR), action=r.action,
                         errno_ret=r.errno_ret, args=r.args)
             for r in podman.syscalls if set(r.names) - set(MKDIR)]
    sc = Seccomp(default_action="SCMP_ACT_ERRNO", default_errno_ret=errno.EXDEV,
                 architectures=podman.architectures, syscalls=tuple(rules))
    status, _, err = run_child(prepare(sc, cache), ["/bin/mkdir", str(tmp_path / "d")])
    assert exit_code(status) == 1
    assert os.strerror(errno.EXDEV) in err


@pytest.mark.parametrize("action", ["SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL_THREAD",
                                    "SCMP_ACT_KILL", "SCMP_ACT_TRAP"])
def test_killing_actions_end_the_process_with_sigsys(action: str, tmp_path: Path,
                                                     cache: str) -> None:
    status, _, _ = run_child(prepare(deny_mkdir(action), cache),
                             ["/bin/mkdir", str(tmp_path / "d")])
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGSYS
    assert not (tmp_path / "d").exists()


def test_trace_without_a_tracer_fails_with_enosys(tmp_path: Path, cache: str) -> None:
    status, _, err = run_child(prepare(deny_mkdir("SCMP_ACT_TRACE"), cache),
                               ["/bin/mkdir", str(tmp_path / "d")])
    assert exit_code(status) == 1
    assert os.strerror(errno.ENOSYS) in err


def test_log_action_allows(tmp_path: Path, cache: str) -> None:
    status, _, _ = run_child(prepare(deny_mkdir("SCMP_ACT_LOG"), cache),
                             ["/bin/mkdir", str(tmp_path / "d")])
    assert exit_code(status) == 0 and (tmp_path / "d").is_dir()


def test_unknown_syscall_name_is_skipped(tmp_path: Path, cache: str) -> None:
    sc = profile("SCMP_ACT_ALLOW",
                 SyscallRule(names=("no_such_syscall_2099", *MKDIR), action="SCMP_ACT_ERRNO"),
                 SyscallRule(names=("another_future_call",), action="SCMP_ACT_KILL"))
    status, _, err = run_child(prepare(sc, cache), ["/bin/mkdir", str(tmp_path / "d")])
    assert exit_code(status) == 1 and "Operation not permitted" in err


def test_filter_mode_shows_in_proc_status(cache: str) -> None:
    status, out, _ = run_child(prepare(deny_mkdir(), cache),
                               ["/bin/grep", "^Seccomp:", "/proc/self/status"])
    assert exit_code(status) == 0
    assert out.split() == ["Seccomp:", "2"]
    with open("/proc/self/status") as f:
        assert "Seccomp:\t0" in f.read()  # the test process itself is unfiltered


def test_personality_is_allowed_with_one_value_only(cache: str) -> None:
    query = 0xFFFFFFFF  # personality(0xffffffff) only reads the persona
    sc = profile("SCMP_ACT_ALLOW", SyscallRule(
        names=("personality",), action="SCMP_ACT_ERRNO", errno_ret=errno.EACCES,
        args=(SyscallArg(index=0, value=query, op="SCMP_CMP_NE"),)))
    number = nr("personality")

    def child(_: int | None) -> int:
        allowed = raw_syscall(number, query)
        denied = raw_syscall(number, 0x0008)  # PER_LINUX32
        return 0 if (allowed, denied) == (0, errno.EACCES) else 1

    status, _, err = run_child(prepare(sc, cache), child)
    assert exit_code(status) == 0, err


_OPS: dict[str, Callable[[int], bool]] = {
    "SCMP_CMP_NE": lambda x: x != 6,
    "SCMP_CMP_LT": lambda x: x < 6,
    "SCMP_CMP_LE": lambda x: x <= 6,
    "SCMP_CMP_EQ": lambda x: x == 6,
    "SCMP_CMP_GE": lambda x: x >= 6,
    "SCMP_CMP_GT": lambda x: x > 6,
    "SCMP_CMP_MASKED_EQ": lambda x: x & 0xFF == 6,  # value = mask, valueTwo = datum
}
_VALUES = (0, 1, 5, 6, 7, 0x106, 2**32 + 6, 2**32 + 5, 2**63 + 6)


@pytest.mark.parametrize("op", sorted(_OPS))
def test_argument_operator_matches_64_bit_values(op: str, cache: str) -> None:
    # getpgid(x) with a filter "errno 99 when arg0 <op> 6"; other values reach the
    # kernel, which answers ESRCH (no such process) for these bogus pids.
    arg = (SyscallArg(index=0, value=0xFF, value_two=6, op=op) if op == "SCMP_CMP_MASKED_EQ"
           else SyscallArg(index=0, value=6, op=op))
    sc = profile("SCMP_ACT_ALLOW", SyscallRule(names=("getpgid",), action="SCMP_ACT_ERRNO",
                                               errno_ret=99, args=(arg,)))
    number = nr("getpgid")

    def child(_: int | None) -> int:
        got = [raw_syscall(number, x) == 99 for x in _VALUES]
        os.write(1, json.dumps(got).encode())
        return 0

    status, out, err = run_child(prepare(sc, cache), child)
    assert exit_code(status) == 0, err
    assert json.loads(out) == [_OPS[op](x) for x in _VALUES]


def test_conditions_on_different_arguments_are_anded(cache: str) -> None:
    sc = profile("SCMP_ACT_ALLOW", SyscallRule(
        names=("getpriority",), action="SCMP_ACT_ERRNO", errno_ret=99,
        args=(SyscallArg(index=0, value=0, op="SCMP_CMP_EQ"),
              SyscallArg(index=1, value=77777, op="SCMP_CMP_EQ"))))
    number = nr("getpriority")

    def child(_: int | None) -> int:
        both = raw_syscall(number, 0, 77777)
        first_only = raw_syscall(number, 0, 77778)
        return 0 if both == 99 and first_only != 99 else 1

    status, _, err = run_child(prepare(sc, cache), child)
    assert exit_code(status) == 0, err


def test_conditions_on_the_same_argument_are_ored_like_runc(cache: str) -> None:
    sc = profile("SCMP_ACT_ALLOW", SyscallRule(
        names=("getpgid",), action="SCMP_ACT_ERRNO", errno_ret=99,
        args=(SyscallArg(index=0, value=55555, op="SCMP_CMP_EQ"),
              SyscallArg(index=0, value=66666, op="SCMP_CMP_EQ"))))
    number = nr("getpgid")

    def child(_: int | None) -> int:
        got = [raw_syscall(number, x) == 99 for x in (55555, 66666, 77777)]
        return 0 if got == [True, True, False] else 1

    status, _, err = run_child(prepare(sc, cache), child)
    assert exit_code(status) == 0, err


def test_loads_with_cap_sys_admin_and_no_no_new_privs(tmp_path: Path, cache: str) -> None:
    status, _, err = run_child(prepare(deny_mkdir(), cache),
                               ["/bin/mkdir", str(tmp_path / "d")], nnp=False)
    assert exit_code(status) == 1 and "Operation not permitted" in err


def test_without_no_new_privs_or_cap_sys_admin_load_is_a_clear_error(cache: str) -> None:
    status, _, err = run_child(prepare(deny_mkdir(), cache), ["/bin/true"], nnp=False,
                               uid=65534)
    assert exit_code(status) == 125
    assert "no_new_privs or CAP_SYS_ADMIN" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("flag", ["SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG",
                                  "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
                                  "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"])
def test_each_flag_loads(flag: str, tmp_path: Path, cache: str) -> None:
    sc = profile("SCMP_ACT_ALLOW", SyscallRule(names=MKDIR, action="SCMP_ACT_ERRNO"),
                 flags=(flag,))
    prepared = prepare(sc, cache)
    if flag == "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV":
        assert prepared.flags == 0  # without a listener the kernel would refuse it
    else:
        assert prepared.flags != 0  # every flag is known to a 6.x kernel
    status, _, err = run_child(prepared, ["/bin/mkdir", str(tmp_path / "d")])
    assert exit_code(status) == 1 and "Operation not permitted" in err


def test_errno_ret_wider_than_16_bits_is_a_config_error(cache: str) -> None:
    with pytest.raises(ConfigError, match=r"linux\.seccomp\.syscalls\[0\]\.errnoRet"):
        prepare(deny_mkdir(errno_ret=65536), cache)


def test_notify_cannot_be_the_default_action_or_cover_write(cache: str) -> None:
    with pytest.raises(ConfigError, match="defaultAction"):
        prepare(profile("SCMP_ACT_NOTIFY", listener_path="/x"), cache)
    with pytest.raises(ConfigError, match=r"syscalls\[0\]\.names.*write"):
        prepare(profile("SCMP_ACT_ALLOW", SyscallRule(names=("write",),
                                                      action="SCMP_ACT_NOTIFY"),
                        listener_path="/x"), cache)


def test_architectures_this_machine_cannot_run_are_skipped(tmp_path: Path,
                                                           cache: str) -> None:
    arches = ("SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32", "SCMP_ARCH_S390X",
              "SCMP_ARCH_LOONGARCH64")
    sc = profile("SCMP_ACT_ALLOW", SyscallRule(names=MKDIR, action="SCMP_ACT_ERRNO"),
                 architectures=arches)
    status, _, err = run_child(prepare(sc, cache), ["/bin/mkdir", str(tmp_path / "d")])
    assert exit_code(status) == 1 and "Operation not permitted" in err


def test_load_makes_no_syscall_after_installing_the_filter(cache: str) -> None:
    # Kill on the calls a runtime's last steps might make; load() and execve must not.
    sc = profile("SCMP_ACT_ALLOW", SyscallRule(
        names=("getcwd", "close_range", "fcntl", "getpid", "rt_sigprocmask"),
        action="SCMP_ACT_KILL_PROCESS"))
    status, _, err = run_child(prepare(sc, cache), ["/bin/true"])
    assert exit_code(status) == 0, err


# ----------------------------------------------------------------------- notify
def test_notify_listener_reaches_the_agent_and_answers_a_syscall(tmp_path: Path,
                                                                 cache: str) -> None:
    sock_path = str(tmp_path / "agent.sock")
    target = tmp_path / "notified"
    sc = profile("SCMP_ACT_ALLOW", SyscallRule(names=MKDIR, action="SCMP_ACT_NOTIFY"),
                 listener_path=sock_path, listener_metadata="agent-meta",
                 flags=("SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"))
    prepared = prepare(sc, cache)
    assert prepared.uses_notify
    state = {"ociVersion": "1.2.0", "id": "ctr", "status": "created", "pid": 4242,
             "bundle": "/bundle", "annotations": {}}

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as agent:
        agent.bind(sock_path)
        agent.listen(1)
        agent.settimeout(10)

        def child(fd: int | None) -> int:
            assert fd is not None
            send_listener(fd, sc, json.dumps(state).encode())
            os.close(fd)
            os.execv("/bin/mkdir", ["/bin/mkdir", str(target)])
            return 127

        # run_child blocks until the child exits, so drive it from a forked helper.
        helper = os.fork()
        if helper == 0:
            status, _, err = run_child(prepared, child)
            os.write(2, err.encode())
            os._exit(exit_code(status) if os.WIFEXITED(status) else 200)

        conn, _ = agent.accept()
        with conn:
            conn.settimeout(10)
            data, fds, _, _ = socket.recv_fds(conn, 1 << 16, 1)
            while chunk := conn.recv(1 << 16):
                data += chunk
        assert len(fds) == 1
        listener = fds[0]
        doc = json.loads(data)
        assert doc["fds"] == ["seccompFd"] and doc["metadata"] == "agent-meta"
        assert doc["pid"] == 4242 and doc["state"] == state and doc["ociVersion"]

        poller = select.poll()
        poller.register(listener, select.POLLIN)
        assert poller.poll(10_000), "no notification within 10 s"
        notif = seccomp_notify.notif_recv(listener)
        assert notif.data.nr in (nr("mkdir"), nr("mkdirat"))
        path_arg = notif.data.args[0 if notif.data.nr == nr("mkdir") else 1]
        with open(f"/proc/{notif.pid}/mem", "rb") as mem:
            path = os.pread(mem.fileno(), 4096, path_arg).split(b"\0")[0]
        assert path == os.fsencode(target)
        assert seccomp_notify.notif_id_valid(listener, notif.id)
        seccomp_notify.notif_send(listener, notif.id, val=0, error=0)  # "done", without doing it
        os.close(listener)

        _, status = os.waitpid(helper, 0)
    assert exit_code(status) == 0  # mkdir believed it succeeded...
    assert not target.exists()     # ...because the agent said so


def test_send_listener_to_a_missing_socket_is_a_one_line_error(tmp_path: Path) -> None:
    sc = profile("SCMP_ACT_ALLOW", SyscallRule(names=MKDIR, action="SCMP_ACT_NOTIFY"),
                 listener_path=str(tmp_path / "nobody-listens"))
    r, w = os.pipe()
    try:
        with pytest.raises(OciError, match=r"^seccomp: sending the listener fd to .*"
                                           r"nobody-listens: no such file or directory$"):
            send_listener(r, sc, b'{"pid": 1}')
    finally:
        os.close(r)
        os.close(w)


# -------------------------------------------------------------- podman's profile
@pytest.mark.skipif(not os.path.exists(CONTAINERS_PROFILE), reason="no containers-common")
def test_podman_default_profile_runs_a_busybox_shell(tmp_path: Path, cache: str) -> None:
    sc = load_engine_profile()
    assert len(sc.syscalls) > 20 and sum(len(r.names) for r in sc.syscalls) > 300
    script = textwrap.dedent(f"""
        set -e
        cd {tmp_path}
        mkdir -p a/b && echo hello > a/b/f && cat a/b/f
        ln -s a/b/f link && cat link && chmod 600 a/b/f && mv a moved
        ls moved/b | wc -l
        sleep 0.01 & wait
        echo "$(( 6 * 7 ))" | sed s/4/four/
        grep ^Seccomp: /proc/self/status
        """)
    status, out, err = run_child(prepare(sc, cache), ["/usr/bin/busybox", "sh", "-c", script])
    assert exit_code(status) == 0, err
    assert out.split("\n")[:4] == ["hello", "hello", "1", "four2"]
    assert "Seccomp:\t2" in out


@pytest.mark.skipif(not os.path.exists(CONTAINERS_PROFILE), reason="no containers-common")
def test_podman_default_profile_denies_what_it_lists_and_what_it_omits(cache: str) -> None:
    sc = load_engine_profile()
    acct, add_key = nr("acct"), nr("add_key")

    def child(_: int | None) -> int:
        # acct needs CAP_SYS_PACCT, not in podman's default set: explicit EPERM rule;
        # add_key is not listed at all: defaultErrnoRet (ENOSYS).
        got = (raw_syscall(acct, 0), raw_syscall(add_key, 0, 0, 0, 0, 0))
        return 0 if got == (errno.EPERM, errno.ENOSYS) else 1

    status, _, err = run_child(prepare(sc, cache), child)
    assert exit_code(status) == 0, err


@pytest.mark.skipif(not os.path.exists(CONTAINERS_PROFILE), reason="no containers-common")
@pytest.mark.parametrize("default_errno", [None, errno.EPERM])
def test_syscalls_newer_than_the_profile_get_enosys_not_the_default_errno(
        default_errno: int | None, cache: str) -> None:
    # runc's -ENOSYS stub: libc falls back from a new syscall only on ENOSYS.
    sc = load_engine_profile().replace(default_errno_ret=default_errno)
    add_key = nr("add_key")

    def child(_: int | None) -> int:
        got = (raw_syscall(1000, 0), raw_syscall(add_key, 0, 0, 0, 0, 0))
        return 0 if got == (errno.ENOSYS, errno.EPERM) else 1

    status, _, err = run_child(prepare(sc, cache), child)
    assert exit_code(status) == 0, err


def test_no_enosys_stub_when_the_default_action_allows_or_is_enosys() -> None:
    from ocirun.seccomp import enosys
    assert not enosys.wanted(deny_mkdir())
    assert not enosys.wanted(profile("SCMP_ACT_ERRNO", default_errno_ret=errno.ENOSYS))
    assert enosys.wanted(profile("SCMP_ACT_ERRNO"))
    assert enosys.wanted(profile("SCMP_ACT_KILL_PROCESS"))


def _run_stub(stub: bytes, arch: int, number: int) -> str:
    """Interpret the stub (classic BPF subset) for one syscall: "enosys" or "filter"."""
    import struct
    insns = [struct.unpack("=HBBI", stub[i:i + 8]) for i in range(0, len(stub), 8)]
    acc, pc = 0, 0
    while pc < len(insns):
        op, jt, jf, k = insns[pc]
        if op == 0x20:
            acc = {0: number, 4: arch}[k]
        elif op == 0x06:
            assert k == 0x00050000 | errno.ENOSYS
            return "enosys"
        elif op == 0x05:
            pc += k
        else:
            hit = {0x15: acc == k, 0x25: acc > k, 0x45: bool(acc & k)}[op]
            pc += jt if hit else jf
        pc += 1
    assert pc == len(insns)  # falls exactly onto libseccomp's program
    return "filter"


def test_enosys_stub_branches_per_arch_and_for_x32() -> None:
    from ocirun.seccomp import enosys
    from ocirun.seccomp.compiler import ARCH_TOKENS as T
    x86_64, x86, x32, s390x = (T["SCMP_ARCH_X86_64"], T["SCMP_ARCH_X86"],
                               T["SCMP_ARCH_X32"], T["SCMP_ARCH_S390X"])
    stub = enosys.stub({x86_64: 448, x86: 400, x32: 0x40000000 + 300, s390x: 440}, x32)
    cases = {
        (x86_64, 448): "filter", (x86_64, 449): "enosys", (x86_64, 0): "filter",
        (x86, 400): "filter", (x86, 401): "enosys",
        (x86_64, 0x40000000 + 300): "filter", (x86_64, 0x40000000 + 301): "enosys",
        (s390x, 0): "enosys", (s390x, 5): "filter", (s390x, 441): "enosys",
        (T["SCMP_ARCH_AARCH64"], 9999): "filter",  # arch not in the stub: filter decides
    }
    for (arch, number), want in cases.items():
        assert _run_stub(stub, arch, number) == want, (hex(arch), number)
    # Without x32 in the filter, x32 syscalls go straight to libseccomp's program.
    only64 = enosys.stub({x86_64: 448}, x32)
    assert _run_stub(only64, x86_64, 0x40000000 + 999) == "filter"
    assert _run_stub(only64, x86_64, 449) == "enosys"


# ------------------------------------------------------------------------ cache
def test_second_prepare_is_a_cache_hit_with_the_same_program(cache: str) -> None:
    first = prepare(deny_mkdir(), cache)
    second = prepare(deny_mkdir(), cache)
    assert (first.cache_hit, second.cache_hit) == (False, True)
    assert first.program == second.program and first.cache_path == second.cache_path
    assert Path(first.cache_path).read_bytes().startswith(MAGIC)


def test_cache_key_ignores_flags_and_listener_but_not_rules(cache: str) -> None:
    base = prepare(deny_mkdir(), cache)
    flagged = prepare(profile("SCMP_ACT_ALLOW", SyscallRule(names=MKDIR, action="SCMP_ACT_ERRNO"),
                              flags=("SECCOMP_FILTER_FLAG_LOG",)), cache)
    other = prepare(deny_mkdir(errno_ret=errno.EXDEV), cache)
    assert flagged.cache_path == base.cache_path and flagged.cache_hit
    assert flagged.flags == ksys.FILTER_FLAG_LOG
    assert other.cache_path != base.cache_path and not other.cache_hit


def test_cache_hit_loads_without_importing_pyseccomp(tmp_path: Path, cache: str) -> None:
    script = textwrap.dedent(f"""
        import os, sys
        from ocirun.seccomp import prepare, load
        from ocirun.spec import Seccomp, SyscallRule
        sc = Seccomp(default_action="SCMP_ACT_ALLOW",
                     syscalls=(SyscallRule(names=("mkdir", "mkdirat"), action="SCMP_ACT_ERRNO"),))
        p = prepare(sc, {cache!r})
        print(p.cache_hit, "pyseccomp" in sys.modules, "ocirun.seccomp.compiler" in sys.modules)
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            load(p)
            os.execv("/bin/mkdir", ["mkdir", {str(tmp_path / "d")!r}])
        print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
        """)
    env = dict(os.environ, PYTHONPATH=str(REPO))

    def run() -> list[str]:
        res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                             text=True, check=True)
        return res.stdout.split()

    assert run() == ["False", "True", "True", "1"]   # miss: compiled with pyseccomp
    assert run() == ["True", "False", "False", "1"]  # hit: no pyseccomp at all
    assert not (tmp_path / "d").exists()


def test_cache_hit_imports_nothing_heavy(cache: str) -> None:
    # The hit is on every engine's create: no pyseccomp, and none of json, re, enum,
    # typing, hashlib (a few ms each, more than the hit's own work).
    sc = load_engine_profile() if os.path.exists(CONTAINERS_PROFILE) else deny_mkdir()
    config = {"ociVersion": "1.0.2", "root": {"path": "rootfs"},
              "process": {"args": ["/bin/true"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
              "linux": {"seccomp": {
                  "defaultAction": sc.default_action,
                  "architectures": list(sc.architectures),
                  "syscalls": [{"names": list(r.names), "action": r.action,
                                **({"errnoRet": r.errno_ret} if r.errno_ret is not None else {}),
                                "args": [{"index": a.index, "value": a.value,
                                          "valueTwo": a.value_two, "op": a.op}
                                         for a in r.args]}
                               for r in sc.syscalls]}}}
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(REPO)!r})
        from ocirun.spec import parse_spec
        spec = parse_spec({config!r}, "/")
        before = set(sys.modules)
        from ocirun.seccomp import prepare
        p = prepare(spec.linux.seccomp, {cache!r})
        print(p.cache_hit, " ".join(sorted(set(sys.modules) - before)))
        """)
    from ocirun.spec import parse_spec
    assert not prepare(parse_spec(config, "/").linux.seccomp, cache).cache_hit  # fill it
    out = subprocess.run([sys.executable, "-I", "-S", "-c", script], capture_output=True,
                         text=True, check=True).stdout.split()
    assert out[0] == "True"
    heavy = {"json", "re", "enum", "typing", "hashlib", "_hashlib", "pyseccomp", "seccomp",
             "ocirun.seccomp.compiler", "ocirun.seccomp.enosys", "socket", "ctypes",
             "_ctypes", "ocirun.sys.ffi"}
    assert not set(out[1:]) & heavy, sorted(set(out[1:]) & heavy)


def test_after_warm_up_load_imports_nothing(tmp_path: Path, cache: str) -> None:
    # What stage1 does before entering the container's namespaces: from then on,
    # load() must not need a file (the interpreter's library is out of reach).
    assert not prepare(deny_mkdir(), cache).cache_hit  # fill the cache
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(REPO)!r})
        from ocirun.seccomp import load, prepare, warm_up
        from ocirun.spec import Seccomp, SyscallRule
        p = prepare(Seccomp(default_action="SCMP_ACT_ALLOW", syscalls=(SyscallRule(
            names=("mkdir", "mkdirat"), action="SCMP_ACT_ERRNO"),)), {cache!r})
        assert "_ctypes" not in sys.modules and p.cache_hit
        warm_up()
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            before = set(sys.modules)
            load(p)
            os.write(w, " ".join(sorted(set(sys.modules) - before)).encode() + b".")
            os.execv("/bin/mkdir", ["mkdir", {str(tmp_path / "d")!r}])
        os.close(w)
        print(os.read(r, 4096).decode()[:-1] or "-", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
        """)
    out = subprocess.run([sys.executable, "-I", "-S", "-c", script], capture_output=True,
                         text=True, check=True).stdout.split()
    assert out == ["-", "1"]  # nothing imported; mkdir denied
    assert not (tmp_path / "d").exists()


def test_cache_key_is_canonical_and_covers_what_shapes_the_program() -> None:
    from ocirun.seccomp.cache import cache_key
    arg = SyscallArg(index=0, value=1, op="SCMP_CMP_EQ")
    base = profile("SCMP_ACT_ERRNO", SyscallRule(names=("read", "write"), action="SCMP_ACT_ALLOW",
                                                 args=(arg,)),
                   architectures=("SCMP_ARCH_X86_64",), default_errno_ret=1)
    key = cache_key(base)
    # Lists where the parser gives tuples, flags and listener settings: same program.
    rule = base.syscalls[0]
    assert cache_key(base.replace(syscalls=[rule.replace(names=["read", "write"])],
                                  architectures=["SCMP_ARCH_X86_64"])) == key
    assert cache_key(base.replace(flags=("SECCOMP_FILTER_FLAG_LOG",),
                                  listener_path="/l", listener_metadata="m")) == key
    # Anything that changes the program changes the key.
    changed = [
        base.replace(default_action="SCMP_ACT_KILL_PROCESS"),
        base.replace(default_errno_ret=None),
        base.replace(default_errno_ret=2),
        base.replace(architectures=("SCMP_ARCH_X86_64", "SCMP_ARCH_X86")),
        base.replace(syscalls=()),
        base.replace(syscalls=(rule.replace(names=("read",)),)),
        base.replace(syscalls=(rule.replace(names=("write", "read")),)),
        base.replace(syscalls=(rule.replace(action="SCMP_ACT_LOG"),)),
        base.replace(syscalls=(rule.replace(errno_ret=1),)),
        base.replace(syscalls=(rule.replace(args=()),)),
        base.replace(syscalls=(rule.replace(args=(arg.replace(index=1),)),)),
        base.replace(syscalls=(rule.replace(args=(arg.replace(value=2),)),)),
        base.replace(syscalls=(rule.replace(args=(arg.replace(value_two=1),)),)),
        base.replace(syscalls=(rule.replace(args=(arg.replace(op="SCMP_CMP_NE"),)),)),
        base.replace(syscalls=(rule, rule)),
    ]
    keys = [cache_key(c) for c in changed]
    assert key not in keys and len(set(keys)) == len(keys)


def test_cache_key_is_the_same_in_every_process() -> None:
    from ocirun.seccomp.cache import cache_key
    sc = deny_mkdir(errno_ret=errno.EXDEV)
    script = ("import sys; sys.path.insert(0, %r)\n"
              "from ocirun.seccomp.cache import cache_key\n"
              "from ocirun.spec import Seccomp, SyscallRule\n"
              "print(cache_key(Seccomp(default_action='SCMP_ACT_ALLOW', syscalls=(SyscallRule("
              "names=%r, action='SCMP_ACT_ERRNO', errno_ret=%d),))))" % (str(REPO), MKDIR,
                                                                          errno.EXDEV))
    keys = {subprocess.run([sys.executable, "-I", "-S", "-c", script], check=True, text=True,
                           capture_output=True, env={"PYTHONHASHSEED": seed}).stdout.strip()
            for seed in ("1", "2", "random")}
    assert keys == {cache_key(sc)}


def test_syscall_names_are_checked_with_their_json_path() -> None:
    from ocirun.spec import parse_spec

    def config(names: object) -> dict[str, object]:
        return {"ociVersion": "1.0.2", "root": {"path": "rootfs"},
                "linux": {"seccomp": {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                    {"names": ["read"], "action": "SCMP_ACT_LOG"},
                    {"names": names, "action": "SCMP_ACT_ERRNO"}]}}}
    # Unknown names are the compiler's business (skipped, as runc), not the parser's.
    ok = parse_spec(config(["mkdir", "mkdirat", "no_such_syscall"]), "/").linux.seccomp
    assert ok is not None
    assert ok.syscalls[1].names == ("mkdir", "mkdirat", "no_such_syscall")
    for names, where in (([" mkdir", 7], r"syscalls\[1\]\.names\[1\]: must be a string"),
                         ("mkdir", r"syscalls\[1\]\.names: must be an array"),
                         ([], r"syscalls\[1\]\.names: must contain at least one")):
        with pytest.raises(ConfigError, match=where):
            parse_spec(config(names), "/")


def test_corrupt_cache_file_is_recompiled(cache: str) -> None:
    first = prepare(deny_mkdir(), cache)
    data = bytearray(Path(first.cache_path).read_bytes())
    data[-1] ^= 0xFF
    Path(first.cache_path).write_bytes(bytes(data))
    again = prepare(deny_mkdir(), cache)
    assert not again.cache_hit and again.program == first.program
    assert prepare(deny_mkdir(), cache).cache_hit


def test_unwritable_cache_dir_still_prepares(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    prepared = prepare(deny_mkdir(), str(blocker / "cache"))  # cannot mkdir under a file
    assert not prepared.cache_hit and prepared.instructions > 0


def test_concurrent_prepares_leave_one_valid_cache_file(cache: str) -> None:
    sc = (load_engine_profile() if os.path.exists(CONTAINERS_PROFILE) else deny_mkdir())
    gate_r, gate_w = os.pipe()
    res_r, res_w = os.pipe()
    pids = []
    for _ in range(8):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(gate_w)
                os.read(gate_r, 1)  # all start together when the gate closes
                p = prepare(sc, cache)
                os.write(res_w, _sha(p.program).encode() + b"\n")
                code = 0
            finally:
                os._exit(code)
        pids.append(pid)
    os.close(gate_w)
    os.close(res_w)
    digests = _drain(res_r).split()
    assert all(exit_code(os.waitpid(p, 0)[1]) == 0 for p in pids)
    assert len(digests) == 8 and len(set(digests)) == 1
    files = os.listdir(cache)
    assert len(files) == 1 and files[0].endswith(".bpf"), files
    program = _read(os.path.join(cache, files[0]))
    assert program is not None and _sha(program) == digests[0]


def _sha(data: bytes) -> str:
    import hashlib
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------- features
def test_features_lists_actions_operators_archs_and_flags() -> None:
    f = features()
    assert f["enabled"] is True
    assert {"SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL_PROCESS",
            "SCMP_ACT_NOTIFY", "SCMP_ACT_LOG"} <= set(f["actions"])
    assert len(f["operators"]) == 7 and "SCMP_CMP_MASKED_EQ" in f["operators"]
    assert {"SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_AARCH64"} <= set(f["archs"])
    assert set(f["supportedFlags"]) <= set(f["knownFlags"])
    assert "SECCOMP_FILTER_FLAG_LOG" in f["supportedFlags"]


def test_cache_lives_beside_the_state_root_not_in_it(tmp_path: Path) -> None:
    """Engines (and `runc list`) take every entry of a runtime root for a container."""
    from ocirun.seccomp import cache_dir_for
    root = tmp_path / "root"
    assert cache_dir_for(str(root)) == str(tmp_path / "root.cache" / "seccomp")
    assert cache_dir_for(str(root) + "/") == cache_dir_for(str(root))


def test_cache_keeps_the_most_recently_used_programs(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from ocirun.seccomp import cache as cache_mod
    monkeypatch.setattr(cache_mod, "MAX_ENTRIES", 3)
    cache = str(tmp_path / "c")
    profiles = [deny_mkdir(errno_ret=n) for n in range(1, 6)]
    first = prepare(profiles[0], cache)
    others = [prepare(p, cache) for p in profiles[1:3]]
    for age, prepared in enumerate([first, *others], 1):  # first is the oldest...
        os.utime(prepared.cache_path, (age * 100, age * 100))
    assert prepare(profiles[0], cache).cache_hit  # ...but used again: most recent now
    for profile in profiles[3:]:
        prepare(profile, cache)
    files = os.listdir(cache)
    assert len(files) == 3
    assert os.path.basename(first.cache_path) in files
