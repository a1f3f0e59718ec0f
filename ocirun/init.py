"""What runs in the runtime's children, from fork until execve.

Most configs need one child: the init, born by clone3 with its new namespaces
(direct_flags), pid 1 of its pid namespace from its first instruction.  Where that
cannot be (a user namespace, whose id maps must be written between it and the others;
a time namespace or a pid namespace to join, which only apply to children), stage1
joins and creates the namespaces, then forks the init.  The init builds the rootfs,
drops privileges, reports "ready", then blocks on the exec fifo until `start`.  Both
report failures over the channel and leave with os._exit: nothing of the parent's
interpreter state (atexit, buffered files) may run twice.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NoReturn

from ocirun.compat import signal
from ocirun import jsonio
from ocirun import state as st
from ocirun import sys as ksys
from ocirun.errors import OciError
from ocirun.log import one_line
from ocirun.record import Record
from ocirun.spec import Spec
from ocirun.sync import (Channel, Failed, Go, InitPid, MountNsMade, Ready, RunHooks,
                         SeccompListener, UserNsMade)

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class InitConfig(Record):
    spec: Spec
    bundle: str
    exec_fifo_fd: int  # O_PATH fd of the exec fifo itself (never of a directory)
    lock_fd: int = -1  # the runtime's lock of the container dir: not ours to hold
    no_pivot: bool = False
    preserve_fds: int = 0
    seccomp: Any = None  # ocirun.seccomp.PreparedFilter, compiled before fork
    console_fd: int | None = None  # connected console socket: the pty master goes there
    listen_fds: int = 0  # systemd socket-activation fds, passed at 3.. before preserve_fds
    session_keyring: str | None = None  # name of a new session keyring (runc's default)
    cgroup_tasks: tuple[str, ...] = ()  # v1 `tasks` files stage1 writes "0" to itself


def report_failure(ch: Channel, e: BaseException) -> NoReturn:
    if isinstance(e, OciError):
        msg, code = e.message, e.exit_code
    elif isinstance(e, OSError):
        subject = f" {e.filename}" if e.filename else ""
        msg, code = f"{e.strerror or e}{subject}".strip(), 1
    else:
        msg, code = f"internal error: {type(e).__name__}: {e}", 1
    try:
        ch.send(Failed(msg=msg, code=code))
    except OSError:
        pass
    os._exit(code)


# ------------------------------------------------------------------------- stage 1
def direct_flags(spec: Spec) -> int | None:
    """The CLONE_NEW* flags the init can be born with (see the module's doc), or None
    where stage1 must make the namespaces.  The cgroup namespace is never among them:
    it is made after the v1 cgroups are joined, so that they are its root."""
    flags = 0
    for ns in spec.linux.namespaces:
        if ns.type in ("user", "time") or (ns.type == "pid" and ns.path is not None):
            return None
        if ns.path is None and ns.type != "cgroup":
            flags |= ksys.NAMESPACE_FLAGS[ns.type]
    return flags


def _first_steps(ch: Channel, cfg: InitConfig, new_userns: bool) -> None:
    """What stage1 and a directly born init do first, up to the parent's "go"."""
    for tasks in cfg.cgroup_tasks:
        join_v1_cgroup(tasks)
    if cfg.lock_fd >= 0:
        os.close(cfg.lock_fd)  # or `start` would wait for the init to exec
    if not new_userns:
        # From here on /proc/<pid> of this process and of the init (exe, fd, cwd,
        # root) is out of reach of container processes; with a new user namespace
        # an unprivileged runtime must still write our id maps first.
        ksys.set_dumpable(False)
    # Imports (lookups: the runtime made them) while the runtime's user and mounts
    # still reach the library.
    preload(cfg)
    # We are in the container's cgroups (placed by the parent unless born there and
    # our own `tasks` writes did it); the limits may still be being written: the
    # parent has them in place before it reads our next message.
    ch.expect(Go)


def direct_init(ch: Channel, cfg: InitConfig) -> NoReturn:
    """The init, born with the namespaces of direct_flags: joins the others, makes the
    cgroup namespace, then goes on as stage1's init would."""
    try:
        _first_steps(ch, cfg, new_userns=False)
        _join_namespaces(cfg.spec)
        cgroup_ns = cfg.spec.linux.namespace("cgroup")
        if cgroup_ns is not None and cgroup_ns.path is None:
            ksys.unshare(ksys.CLONE_NEWCGROUP)
    except BaseException as e:  # noqa: BLE001 - everything must reach the parent
        report_failure(ch, e)
    init(ch, cfg)


def stage1(ch: Channel, cfg: InitConfig) -> NoReturn:
    try:
        linux = cfg.spec.linux
        user_ns = linux.namespace("user")
        new_userns = user_ns is not None and user_ns.path is None
        _first_steps(ch, cfg, new_userns)
        _join_namespaces(cfg.spec)
        new_flags = 0
        for ns in linux.namespaces:
            if ns.path is None and ns.type != "user":
                new_flags |= ksys.NAMESPACE_FLAGS[ns.type]
        if new_userns:
            ksys.unshare(ksys.CLONE_NEWUSER)
            ch.send(UserNsMade())
            ch.expect(Go)  # uid_map and gid_map are written
            ksys.set_dumpable(False)
        if user_ns is not None:
            os.setresgid(0, 0, 0)
            os.setresuid(0, 0, 0)
        if new_flags:
            ksys.unshare(new_flags)
        if new_userns and new_flags & ksys.CLONE_NEWNS and cfg.spec.mounts:
            _receive_bind_sources(ch, cfg.spec)
        if linux.time_offsets:
            _write_own_proc("timens_offsets", "".join(
                f"{clock} {secs} {nanos}\n" for clock, (secs, nanos)
                in linux.time_offsets.items()), "linux.timeOffsets")
        if fork_and_report(ch) == 0:
            init(ch, cfg)
    except BaseException as e:  # noqa: BLE001 - everything must reach the parent
        report_failure(ch, e)
    os._exit(0)


def _receive_bind_sources(ch: Channel, spec: Spec) -> None:
    """In a new user namespace the bind sources are opened for us by the runtime, in
    our new mount namespace (see rootfs.open_bind_sources)."""
    from ocirun import rootfs
    if not rootfs.bind_sources(spec):
        return
    global _bind_source_fds
    ch.send(MountNsMade())
    msg, fds = ch.expect(Go)
    _bind_source_fds = dict(zip(msg.mounts, fds))


def join_v1_cgroup(tasks: str | int) -> None:
    """Move this single-threaded process into a v1 cgroup by writing "0" to its
    `tasks` (a path, or an fd of it opened by the runtime): a thread moving itself
    does not take the cgroup threadgroup lock for writing, which the runtime's write
    of our pid would (an RCU grace period)."""
    try:
        fd = tasks if isinstance(tasks, int) else os.open(tasks, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, b"0")
        finally:
            if fd is not tasks:
                os.close(fd)
    except OSError as e:
        where = os.path.dirname(tasks) if isinstance(tasks, str) else "a v1 cgroup"
        raise OciError(f"cgroups: joining {where}: {os.strerror(e.errno).lower()}") from None


# OCIRUN_PLACEMENT=fork: always the fallback of fork_in (tests, comparisons).
_FORCE_FORK = os.environ.get("OCIRUN_PLACEMENT") == "fork"


def fork_in(cgroup_fd: int = -1, ns_flags: int | None = None) -> tuple[int, bool, str, bool]:
    """fork(); with `cgroup_fd` (a cgroup2 directory), the child born in that cgroup
    (clone3 CLONE_INTO_CGROUP) where the kernel allows it; with `ns_flags` (see
    direct_flags), born with those new namespaces where it can.  Returns (pid, born in
    the cgroup, why not, born with the namespaces); pid is 0 in the child.  A kernel or
    directory that cannot (ENOSYS before 5.3, E2BIG before 5.7, EINVAL, EPERM, ENOENT
    across an nsdelegate boundary...) gets a plain fork, and the caller writes the pid
    to cgroup.procs; namespaces the clone cannot make are left to stage1, whose unshare
    then reports why."""
    why = ""
    if cgroup_fd >= 0:
        if _FORCE_FORK:
            why = "OCIRUN_PLACEMENT=fork"
        else:
            try:
                return ksys.clone3(ns_flags or 0, cgroup_fd), True, "", ns_flags is not None
            except OSError as e:
                why = f"clone3: {os.strerror(e.errno).lower()}"
    if ns_flags:
        try:
            return ksys.clone3(ns_flags), False, why, True
        except OSError:
            pass
    return os.fork(), False, why, ns_flags == 0


def fork_and_report(ch: Channel, cgroup_fd: int = -1) -> int:
    """fork() (into `cgroup_fd`'s cgroup if it can: fork_in), and send the child's pid
    to the runtime before the child may speak.

    Parent and child write to the same socket: a parent descheduled right after fork
    must not let the child's messages overtake "pid".  The child waits on a pipe until
    the pid went out; if its parent died first, it sees EOF and leaves without a word,
    so the runtime sees EOF too rather than waiting forever.  Returns 0 in the child."""
    gate_r, gate_w = os.pipe()
    pid, born, why, _ = fork_in(cgroup_fd)
    if pid == 0:
        os.close(gate_w)
        try:
            reported = os.read(gate_r, 1) == b"1"
        except OSError:
            reported = False
        os.close(gate_r)
        if not reported:
            os._exit(1)
        return 0
    os.close(gate_r)
    ch.send(InitPid(pid=pid, born=born, why=why))
    os.write(gate_w, b"1")
    os.close(gate_w)
    return pid


def _join_namespaces(spec: Spec) -> None:
    """setns into every namespace given by path.  Every file is opened first (a join
    may hide the others' paths).  Order: what the runtime's own credentials allow
    first, then the user namespace (which changes what we may join), then what was
    refused before it, the mount namespace last (it changes our root)."""
    joins = [ns for ns in spec.linux.namespaces if ns.path]
    fds = []
    try:
        for ns in joins:
            try:
                fds.append((ns, os.open(ns.path, os.O_RDONLY | os.O_CLOEXEC)))
            except OSError as e:
                raise OciError(f"joining {ns.type} namespace {ns.path}: "
                               f"{os.strerror(e.errno).lower()}") from None

        def join(ns: Any, fd: int) -> None:
            try:
                ksys.setns(fd, ksys.NAMESPACE_FLAGS[ns.type])
            except OSError as e:
                raise OciError(f"joining {ns.type} namespace {ns.path}: "
                               f"{os.strerror(e.errno).lower()}") from None

        user = [(ns, fd) for ns, fd in fds if ns.type == "user"]
        mount = [(ns, fd) for ns, fd in fds if ns.type == "mount"]
        later = []
        for ns, fd in fds:
            if ns.type in ("user", "mount"):
                continue
            if not user:
                join(ns, fd)
                continue
            try:
                ksys.setns(fd, ksys.NAMESPACE_FLAGS[ns.type])
            except OSError as e:
                if e.errno != errno.EPERM:
                    raise OciError(f"joining {ns.type} namespace {ns.path}: "
                                   f"{os.strerror(e.errno).lower()}") from None
                later.append((ns, fd))
        for ns, fd in user + later + mount:
            join(ns, fd)
    finally:
        for _ns, fd in fds:
            os.close(fd)


# ---------------------------------------------------------------------------- init
def init(ch: Channel, cfg: InitConfig) -> NoReturn:
    try:
        hook_state, target = _setup(ch, cfg)
    except BaseException as e:  # noqa: BLE001
        report_failure(ch, e)
    _wait_and_exec(cfg, hook_state, target)


def preload(cfg: InitConfig) -> None:
    """Import everything the init will use.  The runtime calls it before the fork
    (imports in a forked child pay a copy-on-write fault for most pages they touch:
    twice the time); the first child again before any namespace is joined or made
    (lookups then), so that nothing is imported where the library is out of reach:
    in a user namespace the mapped root may not read it (e.g. under /root), after
    pivot_root it is gone."""
    from ocirun import caps, devices, rootfs  # noqa: F401
    ksys.load()
    if cfg.spec.hooks.create_container or cfg.spec.hooks.start_container:
        from ocirun import hooks  # noqa: F401
    if cfg.console_fd is not None:
        from ocirun import console  # noqa: F401
    if any(m.type == "cgroup" for m in cfg.spec.mounts):
        from ocirun.cgroups import detect  # noqa: F401 - used by rootfs._mount_cgroup
    if cfg.seccomp is not None:
        from ocirun import seccomp  # noqa: F401 - used by _load_seccomp
    process = cfg.spec.process
    if process is not None and (process.apparmor_profile or process.selinux_label):
        from ocirun import lsm  # noqa: F401 - used by _set_exec_labels


def _setup(ch: Channel, cfg: InitConfig) -> tuple[dict[str, Any], ExecTarget]:
    """Everything up to "ready"; returns the state the parent gave for hooks, and what
    to execve (resolved here, as runc does: a missing executable fails create)."""
    spec = cfg.spec
    process = spec.process
    assert process is not None and spec.root is not None
    linux = spec.linux
    os.setsid()
    in_userns = linux.namespace("user") is not None
    mount_ns = linux.namespace("mount")
    # A mount namespace joined by path gets the rootfs built in it too, as runc does
    # (create refused the runtime's own: see spec.host_namespace_conflicts).
    new_rootfs = mount_ns is not None
    writable_for_now = _build_rootfs(cfg, in_userns) if new_rootfs else ()
    if spec.hostname is not None:
        from ocirun.compat import socket
        socket.sethostname(spec.hostname)
    net_ns = linux.namespace("network")
    if net_ns is not None and net_ns.path is None:
        ksys.loopback_up()  # as runc: a new network namespace's lo starts down
    if spec.domainname is not None:
        ksys.setdomainname(spec.domainname)
    hook_state: dict[str, Any] = {}
    if spec.hooks.sync_after_mounts():
        # Without hooks nothing waits for us here (the runtime has the cgroup limits
        # in place before it reads our "ready").
        ch.send(RunHooks())
        msg, _ = ch.expect(Go)
        hook_state = msg.state or {}
    if spec.hooks.create_container:
        from ocirun.hooks import run_hooks
        run_hooks(spec.hooks.create_container, container_hook_state(hook_state, "creating"),
                  "createContainer", spec.root.path)
    _enter_root(cfg, new_rootfs, writable_for_now)
    if process.oom_score_adj is not None:
        _write_own_proc("oom_score_adj", str(process.oom_score_adj), "oomScoreAdj")
    if linux.personality is not None:
        ksys.personality(0x0008 if linux.personality.domain == "LINUX32" else 0)
    if cfg.session_keyring is not None:
        _join_session_keyring(cfg.session_keyring)
    prepare_process(ch, process, cfg.seccomp, in_userns)
    target = exec_target(process, _listen_env(cfg))
    ch.send(Ready())
    ch.close()
    return hook_state, target


def _build_rootfs(cfg: InitConfig, in_userns: bool) -> tuple[Any, ...]:
    """Mounts, device nodes and the cwd's check, all beneath a rootfs fd; returns the
    mounts to make read-only once everything beneath them is in place."""
    from ocirun import devices, rootfs
    spec = cfg.spec
    assert spec.root is not None and spec.process is not None
    rootfs.prepare_root(spec, cfg.bundle)
    root_fd = rootfs.open_root(spec.root.path)  # after the bind onto itself
    try:
        writable_for_now = rootfs.mount_all(spec, cfg.bundle, root_fd, _bind_source_fds)
        for fd in _bind_source_fds.values():
            os.close(fd)
        devices.create_devices(spec, in_userns, root_fd)
        try:
            os.close(rootfs.resolve_dir(root_fd, spec.process.cwd))
        except OSError as e:
            raise _cwd_error(spec.process.cwd, e) from None
    finally:
        os.close(root_fd)
    return writable_for_now


def _enter_root(cfg: InitConfig, new_rootfs: bool, writable_for_now: tuple[Any, ...]) -> None:
    """pivot_root (or chroot without a mount namespace), the console, sysctls, then
    masked/readonly paths and read-only mounts."""
    from ocirun import rootfs
    spec = cfg.spec
    assert spec.root is not None and spec.process is not None
    if new_rootfs:
        rootfs.pivot(spec.root.path, cfg.no_pivot)
    elif spec.linux.namespace("mount") is None:
        _enter_root_by_chroot(cfg)
    if cfg.console_fd is not None:
        # After pivot_root, so the pty comes from the container's own devpts; before
        # the root may go read-only, so /dev/console can still be created.
        from ocirun import console
        console.setup_console(cfg.console_fd, spec.process.console_size, new_rootfs)
    for key, value in spec.linux.sysctl.items():  # before readonlyPaths covers /proc/sys
        _write(f"/proc/sys/{key.replace('.', '/')}", value, f"sysctl {key}")
    if new_rootfs:
        rootfs.finish(spec, writable_for_now)


def _enter_root_by_chroot(cfg: InitConfig) -> None:
    """No mount namespace: nothing may be mounted in the runtime's, so root.path is
    entered by chroot (the config was refused if it asked for mounts).  The rootfs
    has no /proc of its own then: the exec fifo is reopened through the runtime's,
    by an fd held until then (closed before execve, like every fd of ours)."""
    assert cfg.spec.root is not None
    global _proc_fd
    _proc_fd = os.open("/proc", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    os.chroot(cfg.spec.root.path)
    os.chdir("/")


_proc_fd = -1  # set by _enter_root_by_chroot
_bind_source_fds: dict[int, int] = {}  # set by stage1: see _receive_bind_sources


def container_hook_state(state: dict[str, Any], status: str) -> bytes:
    """The state for a hook run in the container's namespaces: the status of that
    moment, and the pid as the container sees it (runtime-spec, State)."""
    return jsonio.dumps({**state, "status": status, "pid": os.getpid()}).encode()


def reset_signals() -> None:
    """Every signal at its default disposition and none blocked: an ignored signal
    stays ignored across execve, and neither CPython's choices (SIGPIPE, SIGXFSZ) nor
    the caller's (nohup's SIGHUP, a shell's SIGINT/SIGQUIT for background jobs) are
    the container's.  runc passes some of the caller's through; the spec is silent.
    CPython read every disposition at start-up and records each one it set since, so
    only the signals it does not know at their default cost a system call."""
    default = signal.SIG_DFL
    for sig in signal.valid_signals():
        if sig in (signal.SIGKILL, signal.SIGSTOP) or signal.getsignal(sig) is default:
            continue
        try:
            signal.signal(sig, default)
        except (OSError, ValueError):
            pass  # the C library's own real-time signals
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def _join_session_keyring(name: str) -> None:
    """A keyring of the container's own, so it cannot reach the caller's keys."""
    try:
        ksys.join_session_keyring(name)
    except OSError as e:
        if e.errno not in (38, 1):  # ENOSYS, EPERM: kernels and sandboxes without keys
            raise OciError(f"joining a new session keyring: {os.strerror(e.errno).lower()}") from None


def _write(path: str, value: str, what: str) -> None:
    """Write a /proc file, opened through a checked procfs (ksys.open_procfs)."""
    try:
        fd = ksys.open_procfs(path.removeprefix("/proc/"), os.O_WRONLY)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)
    except OSError as e:
        raise OciError(f"{what}: writing {path}: {os.strerror(e.errno).lower()}") from None


def _write_own_proc(name: str, value: str, what: str) -> None:
    """Write /proc/self/<name>.  A non-dumpable process's /proc files belong to the
    host's root, out of reach of root in a user namespace: such a write is made
    dumpable for its duration (the process still holds all of its capabilities then,
    which keeps it out of reach of the container's processes)."""
    path = f"/proc/self/{name}"
    try:
        _write(path, value, what)
    except OciError:
        ksys.set_dumpable(True)
        try:
            _write(path, value, what)
        finally:
            ksys.set_dumpable(False)


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
    for rl in rlimits:
        try:
            ksys.setrlimit(rl.type, rl.soft, rl.hard)
        except OSError as e:
            raise OciError(f"process.rlimits: setting {rl.type} to {rl.soft}/{rl.hard}: "
                           f"{os.strerror(e.errno).lower()}") from None


def _seccomp_early(process: Any, seccomp: Any) -> bool:
    """Load before dropping capabilities: without no_new_privs the kernel wants
    CAP_SYS_ADMIN, and a notify listener must reach the runtime before it exits."""
    return seccomp is not None and (not process.no_new_privileges or seccomp.uses_notify)


def prepare_process(ch: Channel | None, process: Any, seccomp: Any, in_userns: bool) -> None:
    """The security setup every container process gets (the init and each exec'd
    one), in order: rlimits, cwd, an early seccomp filter, user and capabilities."""
    from ocirun import caps
    if process.apparmor_profile or process.selinux_label:
        _set_exec_labels(process)  # before no_new_privs, which limits transitions
    _set_rlimits(process.rlimits)
    enter_cwd(process.cwd)
    if _seccomp_early(process, seccomp):
        _load_seccomp(ch, seccomp)
    caps.apply(process, setgroups_allowed=_setgroups_allowed(in_userns))


def _set_exec_labels(process: Any) -> None:
    from ocirun import lsm
    for name, value, what in lsm.exec_attributes(process):
        try:
            _write_own_proc(name, value, what)
        except OciError as e:
            label = value.removeprefix("exec ")
            raise OciError(f"{what}: the kernel refused {label!r} for execve ({e.message}"
                           "; is the profile loaded?)") from None


def _cwd_error(cwd: str, e: OSError) -> OciError:
    why = ("it leads through a magic link (/proc/.../fd, cwd, root)"
           if e.errno == errno.ELOOP else os.strerror(e.errno).lower())
    return OciError(f"chdir to cwd ({cwd!r}) set in config.json failed: {why}")


def enter_cwd(cwd: str) -> None:
    """chdir to the process's cwd, resolved inside the container's root: symlinks are
    followed as if the root were "/", and magic links (/proc/self/fd/N, /proc/1/cwd),
    which could name a runtime fd or a host directory, are refused."""
    try:
        _chdir_in_root(cwd)
    except OSError as e:
        raise _cwd_error(cwd, e) from None
    try:
        os.getcwd()  # the kernel names a directory outside our root "(unreachable)"
    except FileNotFoundError:
        raise OciError(f"chdir to cwd ({cwd!r}) set in config.json failed: it is "
                       "outside the container's root") from None


def _chdir_in_root(cwd: str) -> None:
    root = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            fd = ksys.openat2(root, cwd, os.O_PATH | os.O_DIRECTORY,
                              ksys.RESOLVE_IN_ROOT | ksys.RESOLVE_NO_MAGICLINKS)
        except OSError as e:
            if e.errno != errno.ENOSYS:
                raise
            os.chdir(cwd)  # before Linux 5.6: enter_cwd's getcwd check still holds
            return
    finally:
        os.close(root)
    try:
        os.fchdir(fd)
    finally:
        os.close(fd)


class ExecTarget(Record):
    """What a container process execs: exec_target's lookup, made before it waits."""
    path: str  # args[0] resolved
    env: dict[str, str]


def exec_target(process: Any, extra_env: tuple[str, ...] = ()) -> ExecTarget:
    """args[0] resolved with the container's PATH, and the environment: the process's,
    `extra_env` entries overriding its own, HOME from the container's /etc/passwd
    where it has none (as runc)."""
    env = env_dict(process.env + extra_env)
    env.setdefault("HOME", _home(process.user.uid))
    return ExecTarget(executable(process.args[0], process.env + extra_env), env)


def exec_process(process: Any, seccomp: Any, preserve_fds: int,
                 ch: Channel | None = None, keep_fd: int = -1,
                 target: ExecTarget | None = None) -> NoReturn:
    """The end of every container process: resolve args[0] (unless `target` has it),
    load a late seccomp filter (no_new_privs set), close every fd but stdio and the
    preserved ones, execve.  `ch` or `keep_fd` (close-on-exec) stays open so that a
    failure can still be reported on it."""
    if target is None:
        target = exec_target(process)
    reset_signals()
    if seccomp is not None and not _seccomp_early(process, seccomp):
        _load_seccomp(ch, seccomp)
    first = 3 + preserve_fds
    for fd in range(3, first):
        try:
            os.set_inheritable(fd, True)
        except OSError:
            pass  # not open: nothing to preserve
    keep = ch.fileno() if ch is not None else keep_fd
    if keep > first:
        ksys.close_range(first, keep - 1)
    ksys.close_range(max(first, keep + 1))
    os.execve(target.path, list(process.args), target.env)
    raise AssertionError("execve returned")


def _load_seccomp(ch: Channel | None, prepared: Any) -> None:
    from ocirun import seccomp
    listener = seccomp.load(prepared)
    if listener is not None:
        if ch is None:
            raise OciError("seccomp notify listener created after the runtime exited")
        ch.send(SeccompListener(), [listener])
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


_PASSWD_MAX = 4 << 20  # bytes of the image's /etc/passwd looked at


def _home(uid: int) -> str:
    """The user's home in the container's /etc/passwd, else "/".  The file is the
    image's: a fifo or device there (which would block or never end), bytes that are
    not UTF-8 or a giant file must not keep the container from starting."""
    try:
        fd = os.open("/etc/passwd", os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return "/"
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return "/"
        data = os.read(fd, min(info.st_size, _PASSWD_MAX))
    except OSError:
        return "/"
    finally:
        os.close(fd)
    wanted = str(uid).encode()
    for line in data.split(b"\n"):
        fields = line.split(b":")
        if len(fields) > 5 and fields[2] == wanted:
            return os.fsdecode(fields[5])
    return "/"


def _listen_env(cfg: InitConfig) -> tuple[str, ...]:
    """Socket activation: the fds passed on are the init's (sd_listen_fds)."""
    return (f"LISTEN_FDS={cfg.listen_fds}", "LISTEN_PID=1") if cfg.listen_fds else ()


def _wait_and_exec(cfg: InitConfig, hook_state: dict[str, Any],
                   target: ExecTarget) -> NoReturn:
    process = cfg.spec.process
    assert process is not None
    fifo = -1
    try:
        # The kernel keeps only the permission bits of a umask (a uint32 in the spec).
        os.umask(process.user.umask & 0o777 if process.user.umask is not None else 0o022)
        # The waiting init is charged to the container's memory cgroup: give back
        # what the setup freed before blocking (possibly for a long time) on the fifo.
        ksys.malloc_trim()
        # Blocks until `start` opens the fifo for reading.  Reopened through our own
        # /proc (the container's, after pivot_root): the init holds no directory fd
        # of the runtime that a path could walk out of.
        try:
            if _proc_fd >= 0:
                fifo = os.open(f"self/fd/{cfg.exec_fifo_fd}", os.O_WRONLY | os.O_CLOEXEC,
                               dir_fd=_proc_fd)
                os.close(_proc_fd)
            else:
                fifo = os.open(f"/proc/self/fd/{cfg.exec_fifo_fd}",
                               os.O_WRONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise OciError("exec fifo: the container has no /proc to reopen it through "
                           "(mount proc at /proc)") from None
        os.close(cfg.exec_fifo_fd)
        os.write(fifo, st.FIFO_RELEASED)
        if cfg.spec.hooks.start_container:
            from ocirun.hooks import run_hooks
            run_hooks(cfg.spec.hooks.start_container,
                      container_hook_state(hook_state, "created"), "startContainer")
        _fifo_write(fifo, st.FIFO_EXECUTING)
        exec_process(process, cfg.seccomp, cfg.listen_fds + cfg.preserve_fds,
                     keep_fd=fifo, target=target)
    except OciError as e:
        _die(e.message, e.exit_code, fifo)
    except OSError as e:
        _die(f"exec {process.args[0]}: {os.strerror(e.errno).lower()}",
             126 if e.errno in (13, 1) else 127, fifo)
    except BaseException as e:  # noqa: BLE001
        _die(f"internal error: {e}", 1, fifo)


def _fifo_write(fifo: int, data: bytes) -> bool:
    try:
        os.write(fifo, data)
        return True
    except OSError:
        return False  # `start` went away: the container goes on all the same


def _die(msg: str, code: int, fifo: int = -1) -> NoReturn:
    """Report a failure after the exec fifo opened: to `start`, which prints it, or
    if it is gone, on the container's stderr."""
    try:
        told = fifo >= 0 and _fifo_write(
            fifo, st.FIFO_ERROR + jsonio.dumps({"msg": msg, "code": code}).encode())
        if not told:
            try:
                os.write(2, f"ocirun: {one_line(msg)}\n".encode())
            except OSError:
                pass
    finally:
        sys.stderr = None  # type: ignore[assignment]
        os._exit(code)
