"""exec: run one more process in a running container.

Roles and order (one SEQPACKET channel, as for create):
  runtime  checks the status, builds the Process, compiles seccomp, opens the init's
           /proc/<pid>/ns/* files, re-checks that the init is still the same process,
           forks the joiner;
  joiner   waits for "go", joins the namespaces (user first, then the rest, mount
           last), becomes root in a joined user namespace, forks the process (a pid
           namespace applies to children only) and reports its pid;
  runtime  puts that pid in the container's cgroup, answers "go";
  process  gets the init's security tail (init.prepare_process: rlimits, cwd, seccomp,
           user, capabilities), then init.exec_process (lookup, fds, execve).
The channel is close-on-exec: the runtime sees EOF once the process has exec'd, or
an "error" message with the text to show if anything failed.  The running container is
never touched beyond the new process and its cgroup membership.
"""

from __future__ import annotations

import fcntl
import os
import sys

from ocirun.compat import signal
from ocirun import jsonio, log
from ocirun import state as st
from ocirun import sys as ksys
from ocirun.errors import OciError
from ocirun.record import Record
from ocirun.spec import (CAPABILITIES, Capabilities, ConsoleSize, Process, Spec,
                         parse_process)
from ocirun.sync import Channel, ChildError, Failed, Go, InitPid, SeccompListener

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NoReturn


class ExecOptions(Record):
    args: tuple[str, ...] = ()
    process_file: str | None = None
    detach: bool = False
    pid_file: str | None = None
    tty: bool | None = None
    console_socket: str | None = None
    cwd: str | None = None
    env: tuple[str, ...] = ()
    user: str | None = None
    additional_gids: tuple[int, ...] = ()
    caps: tuple[str, ...] = ()
    no_new_privs: bool | None = None
    preserve_fds: int = 0
    process_label: str | None = None
    apparmor: str | None = None
    ignore_paused: bool = False
    cgroups: tuple[str, ...] = ()  # --cgroup: sub-cgroups to run in (runc's format)


# ------------------------------------------------------------------- the process
def _cap_name(raw: str) -> str:
    name = raw.upper()
    if not name.startswith("CAP_"):
        name = "CAP_" + name
    if name not in CAPABILITIES:
        raise OciError(f"unknown capability {raw!r}")
    return name


def _parse_user(raw: str) -> tuple[int, int | None]:
    uid_s, sep, gid_s = raw.partition(":")
    try:
        uid = int(uid_s)
        gid = int(gid_s) if sep else None
    except ValueError:
        raise OciError(f"--user {raw!r}: expected a numeric uid[:gid]") from None
    if uid < 0 or (gid is not None and gid < 0):
        raise OciError(f"--user {raw!r}: ids must not be negative")
    return uid, gid


def _read_process_file(path: str) -> Process:
    from ocirun.spec import read_config_bytes
    if path == "-":
        try:
            data = sys.stdin.buffer.read()
        except OSError as e:
            raise OciError(f"--process -: {(e.strerror or str(e)).lower()}") from None
    else:
        data = read_config_bytes(path, f"--process {path}", pipe_ok=True)
    from ocirun.errors import ConfigError
    try:
        return parse_process(jsonio.loads(data))
    except ConfigError as e:  # the file's own paths, not config.json's
        raise OciError(f"--process {path}: {e.path}: {e.problem}") from None
    except RecursionError:
        raise OciError(f"--process {path}: invalid JSON: nested too deep") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise OciError(f"--process {path}: invalid JSON: {e}") from None


def build_process(spec: Spec, opts: ExecOptions) -> Process:
    """The process to run: --process FILE as given, or the container's process with
    the command line's args and overrides (as runc does)."""
    base = spec.process
    if opts.process_file:
        process = _read_process_file(opts.process_file)
    else:
        if not opts.args:
            raise OciError("exec: the command to run is missing (ocirun exec ID CMD...)")
        if base is None:
            raise OciError("exec: the container has no process to take defaults from")
        process = base.replace(args=tuple(opts.args), terminal=bool(opts.tty))
        if opts.cwd:
            process = process.replace(cwd=opts.cwd)
        for e in opts.env:
            if "=" not in e:
                raise OciError(f"--env {e!r}: expected KEY=value")
        process = process.replace(env=process.env + tuple(opts.env))
        user = process.user
        if opts.user:
            uid, gid = _parse_user(opts.user)
            user = user.replace(uid=uid, gid=user.gid if gid is None else gid)
        if opts.additional_gids:
            user = user.replace(additional_gids=user.additional_gids +
                           tuple(opts.additional_gids))
        process = process.replace(user=user)
        if opts.no_new_privs is not None:
            process = process.replace(no_new_privileges=opts.no_new_privs)
        if opts.caps:
            c = process.capabilities or Capabilities()
            extra = tuple(_cap_name(x) for x in opts.caps)
            c = c.replace(bounding=c.bounding + extra, effective=c.effective + extra,
                        permitted=c.permitted + extra,
                        ambient=c.ambient + extra if c.inheritable else c.ambient)
            process = process.replace(capabilities=c)
        if opts.apparmor:
            process = process.replace(apparmor_profile=opts.apparmor)
        if opts.process_label:
            process = process.replace(selinux_label=opts.process_label)
    # What the process leaves out comes from the container (libcontainer's rule).
    if base is not None:
        if process.capabilities is None:
            process = process.replace(capabilities=base.capabilities)
        if not process.rlimits:
            process = process.replace(rlimits=base.rlimits)
    if not process.cwd.startswith("/"):
        raise OciError(f"exec: cwd {process.cwd!r} must be an absolute path")
    return process


# ------------------------------------------------------------------ runtime side
class _Plan(Record):
    process: Process
    seccomp: Any
    preserve_fds: int
    in_userns: bool
    console_fd: int = -1  # connected console socket: the pty master goes there
    cgroup_fd: int = -1  # the cgroup2 directory to be born in (init.fork_in)
    tasks_fds: tuple[int, ...] = ()  # v1 `tasks` files the process writes "0" to


def _load_container(root: str, container_id: str, ignore_paused: bool
                    ) -> tuple[st.State, Spec]:
    cdir = st.open_container(root, container_id)
    state = st.load(cdir)
    if state.status == "stopped":
        raise OciError(f"cannot exec in a stopped container ({container_id})")
    if state.status == "paused" and not ignore_paused:
        raise OciError(f"cannot exec in a paused container ({container_id}); resume it "
                       "first")
    if state.status == "creating":
        raise OciError(f"cannot exec in container {container_id}: it is being created")
    try:
        from ocirun import container
        spec = container.read_spec(cdir, state.bundle)
    except OSError as e:
        raise OciError(f"container {container_id}: reading its config: "
                       f"{(e.strerror or str(e)).lower()}") from None
    except ValueError as e:
        raise OciError(f"container {container_id}: its stored config is corrupt: {e}") \
            from None
    return state, spec


def _open_namespaces(state: st.State, spec: Spec) -> list[tuple[str, int]]:
    """Open the init's namespace files, user first and mount last; every namespace the
    config lists is joined (those it does not list are the runtime's own)."""
    types = sorted({ns.type for ns in spec.linux.namespaces},
                   key=lambda t: (t != "user", t == "mount", t))
    fds: list[tuple[str, int]] = []
    try:
        for t in types:
            path = f"/proc/{state.pid}/ns/{ksys.NAMESPACE_FILES[t]}"
            try:
                fds.append((t, os.open(path, os.O_RDONLY | os.O_CLOEXEC)))
            except OSError as e:
                raise OciError(f"exec: opening {path}: "
                               f"{os.strerror(e.errno).lower()}") from None
        if "mount" not in types:
            # No mount namespace: the init entered its root by chroot (see
            # init._enter_root_by_chroot); the process enters the same directory.
            path = f"/proc/{state.pid}/root"
            try:
                fds.append(("root", os.open(path, os.O_PATH | os.O_DIRECTORY |
                                            os.O_CLOEXEC)))
            except OSError as e:
                raise OciError(f"exec: opening {path}: "
                               f"{os.strerror(e.errno).lower()}") from None
        if st.process_start_time(state.pid) != state.pid_start:
            raise OciError(f"cannot exec in a stopped container ({state.id})")
        return fds
    except BaseException:
        for _t, fd in fds:
            os.close(fd)
        raise


def exec_in(root: str, container_id: str, opts: ExecOptions) -> int:
    """Run the process; in the foreground return its exit status (128+N on a signal),
    detached return 0 once it has exec'd."""
    state, spec = _load_container(root, container_id, opts.ignore_paused)
    process = _checked_process(spec, opts)
    seccomp = None
    if spec.linux.seccomp is not None:
        from ocirun import seccomp as sc
        seccomp = sc.prepare(spec.linux.seccomp, sc.cache_dir_for(root))
    cgroup = cgroup_paths = None
    if state.cgroup:
        from ocirun.cgroups import manager_from_state
        cgroup = manager_from_state(state.cgroup)
        if opts.cgroups:
            cgroup_paths = cgroup.sub_paths(opts.cgroups)
    elif opts.cgroups:
        raise OciError(f"exec --cgroup: container {container_id} has no cgroup")
    process, ours, console_sock = _terminal(process, opts)
    born_in, own_tasks = (None, ())
    if cgroup is not None and cgroup.self_placing and os.geteuid() == 0:
        born_in, own_tasks = cgroup.placement(cgroup_paths)
    placement_fds = _open_placement(born_in, own_tasks)
    plan = _Plan(process=process, seccomp=seccomp, preserve_fds=opts.preserve_fds,
                 in_userns=spec.linux.namespace("user") is not None,
                 console_fd=console_sock.fileno() if console_sock is not None else -1,
                 cgroup_fd=placement_fds[0], tasks_fds=placement_fds[1:])
    _preload_for_children(seccomp is not None)
    if not opts.detach:
        # The process is our grandchild: as a subreaper we can wait for it.
        ksys.set_child_subreaper()
    try:
        pid, master = _start(state, spec, plan, placement_fds, ours, console_sock,
                             lambda ch: _drive(ch, spec, state, cgroup, cgroup_paths,
                                               born_in, bool(own_tasks)))
    finally:
        for sock in (ours, console_sock):
            if sock is not None:
                sock.close()
    log.debug(f"exec: process {pid} started in container {container_id}")
    return _after_start(opts, pid, master)


def _checked_process(spec: Spec, opts: ExecOptions) -> Any:
    from ocirun import caps
    process = build_process(spec, opts)
    process = caps.keep_grantable(process, spec.linux.namespace("user") is not None)
    if process.apparmor_profile or process.selinux_label:
        from ocirun import lsm
        lsm.check_host(process)
    if process.terminal and opts.detach and not opts.console_socket:
        raise OciError("cannot allocate a tty for a detached exec without "
                       "--console-socket")
    return process


def _terminal(process: Any, opts: ExecOptions) -> tuple[Any, Any, Any]:
    """(process, our end of the console socket pair or None, the children's end or
    the engine's --console-socket or None)."""
    if not process.terminal:
        return process, None, None
    from ocirun import console
    if opts.console_socket:
        return process, None, console.connect(opts.console_socket)
    # Foreground without an engine: we receive the master and relay.
    ours, theirs = console.socket_pair()
    size = console.get_winsize(0)
    if size is not None and process.console_size is None:
        # sized before execve, or the first output races the relay's resize
        process = process.replace(console_size=ConsoleSize(height=size[0], width=size[1]))
    return process, ours, theirs


def _preload_for_children(seccomp: bool) -> None:
    """Everything the children use, imported now: after setns(mount) the interpreter's
    library is out of reach."""
    from ocirun import caps, init  # noqa: F401
    ksys.load()
    if seccomp:
        from ocirun.seccomp import loader  # noqa: F401


def _start(state: st.State, spec: Spec, plan: _Plan, placement_fds: tuple[int, ...],
           ours: Any, console_sock: Any, drive: Any) -> tuple[int, int]:
    """Fork the joiner and answer it until the process exec'd: (its pid, the pty
    master we relay, or -1)."""
    ns_fds = _open_namespaces(state, spec)
    parent, child = Channel.pair()
    try:
        joiner = os.fork()
    except BaseException:
        for _t, fd in ns_fds:
            os.close(fd)
        raise
    if joiner == 0:
        parent.close()
        if ours is not None:
            ours.close()
        _joiner(child, ns_fds, plan)
    child.close()
    for fd in [fd for _t, fd in ns_fds] + [fd for fd in placement_fds if fd >= 0]:
        os.close(fd)
    if console_sock is not None:
        console_sock.close()  # the children have their copies
    pid = 0
    try:
        parent.send(Go())
        pid = drive(parent)
        if ours is None:
            return pid, -1
        from ocirun import console
        return pid, console.receive_master(ours)
    except BaseException:
        if pid:
            _kill(pid)
        raise
    finally:
        parent.close()
        _reap(joiner)


def _after_start(opts: ExecOptions, pid: int, master: int) -> int:
    """--pid-file, then (in the foreground) wait for the process: its exit status."""
    if opts.pid_file:
        from ocirun.process import write_pid_file
        try:
            write_pid_file(opts.pid_file, pid)
        except OSError as e:
            raise OciError(f"--pid-file {opts.pid_file}: "
                           f"{(e.strerror or str(e)).lower()}") from None
    if opts.detach:
        return 0
    from ocirun.process import FORWARDED_SIGNALS, exit_status, wait_forwarding_signals
    if master < 0:
        return wait_forwarding_signals(pid)
    from ocirun import console
    try:
        return exit_status(console.relay(master, pid, FORWARDED_SIGNALS))
    finally:
        os.close(master)


def _open_placement(born_in: str | None, tasks: tuple[str, ...]) -> tuple[int, ...]:
    """fds of the cgroup2 directory (-1 if none) and the v1 `tasks` files, opened here:
    the children resolve paths in the container's mount namespace."""
    fds = [-1]
    try:
        if born_in is not None:
            fds[0] = os.open(born_in, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        for path in tasks:
            fds.append(os.open(path, os.O_WRONLY | os.O_CLOEXEC))
    except OSError as e:
        for fd in fds:
            if fd >= 0:
                os.close(fd)
        raise OciError(f"exec: joining the container's cgroup: "
                       f"{os.strerror(e.errno).lower()} ({e.filename})") from None
    return tuple(fds)


def _drive(ch: Channel, spec: Spec, state: st.State, cgroup: Any,
           cgroup_paths: dict[str, str] | None = None, born_in: str | None = None,
           self_placed: bool = False) -> int:
    """Answer the children until the process exec'd (EOF); returns its host pid."""
    pid = 0
    while True:
        try:
            msg, fds = ch.recv()
        except EOFError:
            break
        except ConnectionResetError:
            break
        if isinstance(msg, Failed):
            for fd in fds:
                os.close(fd)
            raise ChildError(msg.msg, msg.code)
        if isinstance(msg, InitPid):
            pid = msg.pid
            if cgroup is not None:
                try:
                    if born_in is None and not self_placed:
                        cgroup.add_process(pid, cgroup_paths)
                    elif born_in is not None and not msg.born:
                        log.debug(f"cgroup placement: a cgroup.procs write ({msg.why})")
                        from ocirun.cgroups import fsutil
                        fsutil.write_pid(born_in, pid)
                except OSError as e:
                    raise OciError(f"exec: joining the container's cgroup: "
                                   f"{(e.strerror or str(e)).lower()}") from None
            ch.send(Go())
        elif isinstance(msg, SeccompListener):
            from ocirun.create import forward_seccomp_listener
            forward_seccomp_listener(spec, state, fds)
        else:
            raise OciError(f"exec: unexpected message {msg.KIND!r}")
    if not pid:
        raise OciError("exec: the process exited before it started")
    return pid


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


# --------------------------------------------------------------------- children
def _fail(ch: Channel, e: BaseException) -> NoReturn:
    from ocirun.init import report_failure as fail
    fail(ch, e)


def _joiner(ch: Channel, ns_fds: list[tuple[str, int]], plan: _Plan) -> NoReturn:
    try:
        ksys.set_dumpable(False)  # see init.stage1: /proc/<pid> out of the container's reach
        ch.expect(Go)
        for t, fd in ns_fds:
            if t == "root":
                os.fchdir(fd)
                os.chroot(".")
                continue
            try:
                ksys.setns(fd, ksys.NAMESPACE_FLAGS[t])
            except OSError as e:
                raise OciError(f"exec: joining the container's {t} namespace: "
                               f"{os.strerror(e.errno).lower()}") from None
        for _t, fd in ns_fds:
            os.close(fd)
        if plan.in_userns:
            os.setresgid(0, 0, 0)
            os.setresuid(0, 0, 0)
        from ocirun.init import fork_and_report
        if fork_and_report(ch, plan.cgroup_fd) == 0:
            _process(ch, plan)
    except BaseException as e:  # noqa: BLE001 - everything must reach the runtime
        _fail(ch, e)
    os._exit(0)


def _process(ch: Channel, plan: _Plan) -> NoReturn:
    from ocirun.init import exec_process, prepare_process
    try:
        if plan.cgroup_fd >= 0:
            os.close(plan.cgroup_fd)  # a host directory: no further use to us
        from ocirun.init import join_v1_cgroup
        for fd in plan.tasks_fds:
            join_v1_cgroup(fd)
            os.close(fd)
        ch.expect(Go)  # we are in the container's cgroup
        first = 3 + plan.preserve_fds
        if ch.fileno() < first:  # keep the channel clear of the preserved fds
            high = fcntl.fcntl(ch.fileno(), fcntl.F_DUPFD_CLOEXEC, first)
            ch.close()
            ch = Channel.from_fd(high)
        os.setsid()  # a session of its own, as the init has (and the pty's, with one)
        if plan.console_fd >= 0:
            from ocirun import console
            console.setup_console(plan.console_fd, plan.process.console_size, False)
        prepare_process(ch, plan.process, plan.seccomp, plan.in_userns)
        try:
            exec_process(plan.process, plan.seccomp, plan.preserve_fds, ch)
        except OSError as e:  # from execve itself
            raise OciError(f'exec: "{plan.process.args[0]}": '
                           f"{os.strerror(e.errno).lower()}",
                           126 if e.errno in (1, 13) else 127) from None
    except BaseException as e:  # noqa: BLE001
        _fail(ch, e)
