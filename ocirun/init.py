"""What runs in the runtime's children, from fork until execve.

stage1 joins and creates namespaces (its own pid namespace only applies to children),
then forks the init, which becomes pid 1 of a new pid namespace.  The init builds the
rootfs, drops privileges, reports "ready", then blocks on the exec fifo until `start`.
Both report failures over the channel and leave with os._exit: nothing of the parent's
interpreter state (atexit, buffered files) may run twice.
"""

from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass
from typing import Any, NoReturn

from ocirun import sys as ksys
from ocirun.errors import OciError
from ocirun.spec import Spec
from ocirun.sync import Channel

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class InitConfig:
    spec: Spec
    bundle: str
    state_dir_fd: int  # O_PATH fd of the container's state dir: reaches exec.fifo after pivot
    no_pivot: bool = False
    preserve_fds: int = 0
    seccomp: Any = None  # ocirun.seccomp.PreparedFilter, compiled before fork


def _fail(ch: Channel, e: BaseException) -> NoReturn:
    if isinstance(e, OciError):
        msg, code = e.message, e.exit_code
    elif isinstance(e, OSError):
        subject = f" {e.filename}" if e.filename else ""
        msg, code = f"{e.strerror or e}{subject}".strip(), 1
    else:
        msg, code = f"internal error: {type(e).__name__}: {e}", 1
    try:
        ch.send("error", msg=msg, code=code)
    except OSError:
        pass
    os._exit(code)


# ------------------------------------------------------------------------- stage 1
def stage1(ch: Channel, cfg: InitConfig) -> NoReturn:
    try:
        ch.expect("go")  # the parent has put us in the container's cgroup
        linux = cfg.spec.linux
        _join_namespaces(cfg.spec)
        new_flags = 0
        for ns in linux.namespaces:
            if ns.path is None and ns.type != "user":
                new_flags |= ksys.NAMESPACE_FLAGS[ns.type]
        user_ns = linux.namespace("user")
        if user_ns is not None and user_ns.path is None:
            ksys.unshare(ksys.CLONE_NEWUSER)
            ch.send("userns")
            ch.expect("go")  # uid_map and gid_map are written
        if user_ns is not None:
            os.setresgid(0, 0, 0)
            os.setresuid(0, 0, 0)
        if new_flags:
            ksys.unshare(new_flags)
        if linux.time_offsets:
            with open("/proc/self/timens_offsets", "w") as f:
                for clock, (secs, nanos) in linux.time_offsets.items():
                    f.write(f"{clock} {secs} {nanos}\n")
        pid = os.fork()
        if pid == 0:
            init(ch, cfg)
        ch.send("pid", pid=pid)
    except BaseException as e:  # noqa: BLE001 - everything must reach the parent
        _fail(ch, e)
    os._exit(0)


def _join_namespaces(spec: Spec) -> None:
    joins = [ns for ns in spec.linux.namespaces if ns.path]
    # The user namespace first (it owns the others); mount last, since after it the
    # other paths may no longer resolve.  Every file is opened before any join.
    joins.sort(key=lambda ns: (ns.type != "user", ns.type == "mount"))
    fds = []
    try:
        for ns in joins:
            try:
                fds.append((ns, os.open(ns.path, os.O_RDONLY | os.O_CLOEXEC)))
            except OSError as e:
                raise OciError(f"joining {ns.type} namespace {ns.path}: "
                               f"{os.strerror(e.errno).lower()}") from None
        for ns, fd in fds:
            try:
                ksys.setns(fd, ksys.NAMESPACE_FLAGS[ns.type])
            except OSError as e:
                raise OciError(f"joining {ns.type} namespace {ns.path}: "
                               f"{os.strerror(e.errno).lower()}") from None
    finally:
        for _ns, fd in fds:
            os.close(fd)


# ---------------------------------------------------------------------------- init
def init(ch: Channel, cfg: InitConfig) -> NoReturn:
    try:
        state_json = _setup(ch, cfg)
    except BaseException as e:  # noqa: BLE001
        _fail(ch, e)
    _wait_and_exec(cfg, state_json)


def _setup(ch: Channel, cfg: InitConfig) -> bytes:
    """Everything up to "ready"; returns the state JSON the parent gave for hooks."""
    # Everything the init will use is imported now: after pivot_root the interpreter's
    # library is out of reach.
    import resource  # noqa: F401 - used by _set_rlimits
    import _prctl  # noqa: F401 - used by caps.apply
    from ocirun import caps, devices, rootfs
    from ocirun.hooks import run_hooks
    if cfg.seccomp is not None:
        from ocirun import seccomp  # noqa: F401 - used by _load_seccomp

    spec = cfg.spec
    process = spec.process
    assert process is not None and spec.root is not None
    linux = spec.linux
    os.setsid()
    in_userns = linux.namespace("user") is not None
    mount_ns = linux.namespace("mount")
    new_rootfs = mount_ns is not None and mount_ns.path is None
    if new_rootfs:
        rootfs.prepare_root(spec)
        rootfs.mount_all(spec, cfg.bundle)
        devices.create_devices(spec, in_userns)
        os.makedirs(rootfs.secure_join(spec.root.path, process.cwd), 0o755, exist_ok=True)
    if spec.hostname is not None:
        socket.sethostname(spec.hostname)
    if spec.domainname is not None:
        ksys.setdomainname(spec.domainname)
    ch.send("hooks")  # prestart + createRuntime run in the runtime's namespaces
    msg, _ = ch.expect("go")
    state_json = msg["state"].encode()
    run_hooks(spec.hooks.create_container, state_json, "createContainer")
    if new_rootfs:
        rootfs.pivot(spec.root.path, cfg.no_pivot)
    for key, value in linux.sysctl.items():  # before readonlyPaths covers /proc/sys
        _write(f"/proc/sys/{key.replace('.', '/')}", value, f"sysctl {key}")
    if new_rootfs:
        rootfs.finish(spec)
    if process.oom_score_adj is not None:
        _write("/proc/self/oom_score_adj", str(process.oom_score_adj), "oomScoreAdj")
    if linux.personality is not None:
        ksys.personality(0x0008 if linux.personality.domain == "LINUX32" else 0)
    prepare_process(ch, process, cfg.seccomp, in_userns)
    executable(process.args[0], process.env)  # fail at create, as runc does
    ch.send("ready")
    ch.close()
    return state_json


def _write(path: str, value: str, what: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(value)
    except OSError as e:
        raise OciError(f"{what}: writing {path}: {os.strerror(e.errno).lower()}") from None


def _setgroups_allowed(in_userns: bool) -> bool:
    if not in_userns:
        return True
    try:
        with open("/proc/self/setgroups") as f:
            return f.read().strip() == "allow"
    except OSError:
        return True


def _set_rlimits(rlimits: tuple[Any, ...]) -> None:
    if not rlimits:
        return
    import resource
    for rl in rlimits:
        try:
            resource.setrlimit(getattr(resource, rl.type), (rl.soft, rl.hard))
        except (ValueError, OSError) as e:
            raise OciError(f"setting {rl.type} to {rl.soft}/{rl.hard}: {e}") from None


def _seccomp_early(process: Any, seccomp: Any) -> bool:
    """Load before dropping capabilities: without no_new_privs the kernel wants
    CAP_SYS_ADMIN, and a notify listener must reach the runtime before it exits."""
    return seccomp is not None and (not process.no_new_privileges or seccomp.uses_notify)


def prepare_process(ch: Channel | None, process: Any, seccomp: Any, in_userns: bool) -> None:
    """The security setup every container process gets (the init and each exec'd
    one), in order: rlimits, cwd, an early seccomp filter, user and capabilities."""
    from ocirun import caps
    _set_rlimits(process.rlimits)
    try:
        os.chdir(process.cwd)
    except OSError as e:
        raise OciError(f"chdir to cwd ({process.cwd!r}) set in config.json failed: "
                       f"{os.strerror(e.errno).lower()}") from None
    if _seccomp_early(process, seccomp):
        _load_seccomp(ch, seccomp)
    caps.apply(process, setgroups_allowed=_setgroups_allowed(in_userns))


def exec_process(process: Any, seccomp: Any, preserve_fds: int,
                 ch: Channel | None = None) -> NoReturn:
    """The end of every container process: resolve args[0], load a late seccomp
    filter (no_new_privs set), close every fd but stdio and the preserved ones, execve.
    `ch` (close-on-exec) stays open so that a failure can still be reported on it."""
    env = env_dict(process.env)
    env.setdefault("HOME", _home(process.user.uid))
    path = executable(process.args[0], process.env)
    if seccomp is not None and not _seccomp_early(process, seccomp):
        _load_seccomp(ch, seccomp)
    first = 3 + preserve_fds
    for fd in range(3, first):
        try:
            os.set_inheritable(fd, True)
        except OSError:
            pass  # not open: nothing to preserve
    keep = ch.fileno() if ch is not None else -1
    if keep > first:
        ksys.close_range(first, keep - 1)
    ksys.close_range(max(first, keep + 1))
    os.execve(path, list(process.args), env)
    raise AssertionError("execve returned")


def _load_seccomp(ch: Channel | None, prepared: Any) -> None:
    from ocirun import seccomp
    listener = seccomp.load(prepared)
    if listener is not None:
        if ch is None:
            raise OciError("seccomp notify listener created after the runtime exited")
        ch.send("seccomp", fds=[listener])
        os.close(listener)


def env_dict(env: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for entry in env:
        key, _, value = entry.partition("=")
        out[key] = value
    return out


def executable(name: str, env: tuple[str, ...]) -> str:
    """args[0] resolved like execvp, with the container's own PATH."""
    if "/" in name:
        if not os.path.exists(name):
            raise OciError(f'exec: "{name}": stat {name}: no such file or directory', 127)
        if os.path.isdir(name) or not os.access(name, os.X_OK):
            raise OciError(f'exec: "{name}": permission denied', 126)
        return name
    for directory in env_dict(env).get("PATH", DEFAULT_PATH).split(":"):
        candidate = os.path.join(directory or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise OciError(f'exec: "{name}": executable file not found in $PATH', 127)


def _home(uid: int) -> str:
    try:
        with open("/etc/passwd") as f:
            for line in f:
                fields = line.split(":")
                if len(fields) > 5 and fields[2] == str(uid):
                    return fields[5]
    except OSError:
        pass
    return "/"


def _wait_and_exec(cfg: InitConfig, state_json: bytes) -> NoReturn:
    from ocirun.hooks import run_hooks

    process = cfg.spec.process
    assert process is not None
    try:
        os.umask(process.user.umask if process.user.umask is not None else 0o022)
        fifo = os.open("exec.fifo", os.O_WRONLY | os.O_CLOEXEC, dir_fd=cfg.state_dir_fd)
        os.write(fifo, b"0")
        os.close(fifo)
        os.close(cfg.state_dir_fd)
        if cfg.spec.hooks.start_container:
            run_hooks(cfg.spec.hooks.start_container, state_json, "startContainer")
        exec_process(process, cfg.seccomp, cfg.preserve_fds)
    except OciError as e:
        _die(e.message, e.exit_code)
    except OSError as e:
        _die(f"exec {process.args[0]}: {os.strerror(e.errno).lower()}",
             126 if e.errno in (13, 1) else 127)
    except BaseException as e:  # noqa: BLE001
        _die(f"internal error: {e}", 1)


def _die(msg: str, code: int) -> NoReturn:
    try:
        os.write(2, f"ocirun: {msg}\n".encode())
    finally:
        sys.stderr = None  # type: ignore[assignment]
        os._exit(code)
