"""Command line, mirroring runc: global flags, then a subcommand, its flags and args.

Only parsing and dispatch live here; every command imports what it needs when it runs.
"""

from __future__ import annotations

import os
import sys
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

from ocirun import jsonio, log
from ocirun.errors import OciError

BOOL, STR, INT = "bool", "str", "int"


# Flag and Command are plain slotted classes, not Records: every call builds the ~100
# of them below, and a Record's generic __init__ would take ~0.3 ms of that.
class Flag:
    __slots__ = ("dest", "kind", "names", "default", "repeat")

    def __init__(self, dest: str, kind: str, names: tuple[str, ...], default: Any = None,
                 repeat: bool = False) -> None:
        self.dest, self.kind, self.names = dest, kind, names
        self.default, self.repeat = default, repeat


class Command:
    __slots__ = ("usage", "flags", "min_args", "max_args", "summary", "stop_at_arg")

    def __init__(self, usage: str, flags: tuple[Flag, ...] = (), min_args: int = 1,
                 max_args: int = 1, summary: str = "", stop_at_arg: bool = False) -> None:
        self.usage, self.flags, self.min_args, self.max_args = usage, flags, min_args, max_args
        self.summary = summary
        self.stop_at_arg = stop_at_arg  # flags end at the first argument (exec ID CMD -f...)


_CREATE_FLAGS = (
    Flag("bundle", STR, ("--bundle", "-b"), "."),
    Flag("pid_file", STR, ("--pid-file",)),
    Flag("console_socket", STR, ("--console-socket",)),
    Flag("no_pivot", BOOL, ("--no-pivot",), False),
    Flag("no_new_keyring", BOOL, ("--no-new-keyring",), False),
    Flag("preserve_fds", INT, ("--preserve-fds",), 0),
)

_UPDATE_LIMITS = ("memory", "memory_reservation", "memory_swap", "kernel_memory",
                  "kernel_memory_tcp", "cpu_quota", "cpu_period", "cpu_rt_period",
                  "cpu_rt_runtime", "cpu_idle", "cpuset_cpus", "cpuset_mems", "blkio_weight",
                  "pids_limit")  # `update --<name>`, with dashes

COMMANDS: dict[str, Command] = {
    "create": Command("create [flags] <container-id>", _CREATE_FLAGS,
                      summary="create a container"),
    "run": Command("run [flags] <container-id>",
                   _CREATE_FLAGS + (Flag("detach", BOOL, ("--detach", "-d"), False),
                                    Flag("keep", BOOL, ("--keep",), False)),
                   summary="create and start a container"),
    "start": Command("start <container-id>", summary="run the process of a created container"),
    "state": Command("state <container-id>", summary="print the state of a container"),
    "kill": Command("kill [--all] <container-id> [signal]",
                    (Flag("all", BOOL, ("--all", "-a"), False),), 1, 2,
                    summary="send a signal (default TERM) to the container's init"),
    "delete": Command("delete [--force] <container-id>...",
                      (Flag("force", BOOL, ("--force", "-f"), False),), 1, 1 << 16,
                      summary="delete a container and what it holds"),
    "list": Command("list [--format table|json] [--quiet]",
                    (Flag("format", STR, ("--format", "-f"), "table"),
                     Flag("quiet", BOOL, ("--quiet", "-q"), False)), 0, 0,
                    summary="list containers"),
    "spec": Command("spec [--bundle DIR] [--rootless]",
                    (Flag("bundle", STR, ("--bundle", "-b"), "."),
                     Flag("rootless", BOOL, ("--rootless",), False)), 0, 0,
                    summary="write a default config.json"),
    "validate": Command("validate [--bundle DIR]",
                        (Flag("bundle", STR, ("--bundle", "-b"), "."),), 0, 0,
                        summary="check a bundle's config.json against the runtime spec"),
    "pause": Command("pause <container-id>", summary="freeze every process of a container"),
    "resume": Command("resume <container-id>", summary="thaw a paused container"),
    "exec": Command("exec [flags] <container-id> [--] <command> [args...]", (
        Flag("process", STR, ("--process", "-p")),
        Flag("detach", BOOL, ("--detach", "-d"), False),
        Flag("pid_file", STR, ("--pid-file",)),
        Flag("tty", BOOL, ("--tty", "-t")),
        Flag("console_socket", STR, ("--console-socket",)),
        Flag("cwd", STR, ("--cwd",)),
        Flag("env", STR, ("--env", "-e"), (), True),
        Flag("user", STR, ("--user", "-u")),
        Flag("additional_gids", INT, ("--additional-gids", "-g"), (), True),
        Flag("cap", STR, ("--cap", "-c"), (), True),
        Flag("no_new_privs", BOOL, ("--no-new-privs",)),
        Flag("preserve_fds", INT, ("--preserve-fds",), 0),
        Flag("process_label", STR, ("--process-label",)),
        Flag("apparmor", STR, ("--apparmor",)),
        Flag("ignore_paused", BOOL, ("--ignore-paused",), False),
        Flag("cgroup", STR, ("--cgroup",), (), True),
    ), 1, 1 << 16, "run a new process in a running container", stop_at_arg=True),
    "update": Command("update [--resources FILE|-] [flags] <container-id>", (
        Flag("resources", STR, ("--resources", "-r")),
        Flag("cpu_shares", STR, ("--cpu-share", "--cpu-shares")),
        *(Flag(name, STR, ("--" + name.replace("_", "-"),)) for name in _UPDATE_LIMITS),
    ), summary="change the resource limits of a running container"),
    "events": Command("events [--stats] [--interval 5s] <container-id>", (
        Flag("stats", BOOL, ("--stats",), False),
        Flag("interval", STR, ("--interval",), "5s"),
    ), summary="print resource usage and OOM events as JSON lines"),
    "features": Command("features", (), 0, 0,
                        summary="print the features this runtime supports (JSON)"),
    "ps": Command("ps [--format table|json] <container-id> [ps options...]",
                  (Flag("format", STR, ("--format", "-f"), "table"),), 1, 1 << 16,
                  summary="list the processes of a container (ps(1), default -ef)",
                  stop_at_arg=True),
    "bundle": Command("bundle create|ls|rm [flags] ...", (), 1, 1 << 16,
                      summary="make a bundle from an image archive; list/remove stored layers",
                      stop_at_arg=True),
}

_STORE_FLAG = Flag("store", STR, ("--store",), "/var/lib/ocirun/store")
BUNDLE_COMMANDS: dict[str, Command] = {
    "create": Command(
        "bundle create --from ARCHIVE|DIR|- [--ref NAME] [--unpack|--overlay] "
        "[--uid-shift N --gid-shift N] [--max-layer-size BYTES] [--store DIR] <bundle-dir>", (
            Flag("source", STR, ("--from",)),
            Flag("ref", STR, ("--ref",)),
            Flag("unpack", BOOL, ("--unpack",), False),
            Flag("overlay", BOOL, ("--overlay",), False),
            Flag("uid_shift", INT, ("--uid-shift",), 0),
            Flag("gid_shift", INT, ("--gid-shift",), 0),
            Flag("max_layer_size", INT, ("--max-layer-size",), 16 << 30),
            _STORE_FLAG), summary="write a bundle (config.json and rootfs) from an image"),
    "ls": Command("bundle ls [--format table|json] [--store DIR]",
                  (Flag("format", STR, ("--format", "-f"), "table"), _STORE_FLAG), 0, 0,
                  summary="list the store's layers, their size and the bundles using them"),
    "rm": Command("bundle rm [--store DIR] <bundle-dir>...", (_STORE_FLAG,), 1, 1 << 16,
                  summary="remove overlay bundles and the layers no other bundle uses"),
}

_GLOBAL_FLAGS = (
    Flag("root", STR, ("--root",)),
    Flag("log", STR, ("--log",)),
    Flag("log_format", STR, ("--log-format",), "text"),
    Flag("debug", BOOL, ("--debug",), False),
    Flag("systemd_cgroup", BOOL, ("--systemd-cgroup",), False),
    Flag("rootless", STR, ("--rootless",), "auto"),
    Flag("criu", STR, ("--criu",)),
    Flag("version", BOOL, ("--version", "-v", "-version"), False),  # after other flags too
)


class UsageError(OciError):
    pass


class Parsed:
    def __init__(self, values: dict[str, Any]) -> None:
        self.values = values
        self.args: list[str] = []


def _parse_value(flag: Flag, name: str, raw: str) -> Any:
    if flag.kind == BOOL:
        if raw.lower() in ("true", "1"):
            return True
        if raw.lower() in ("false", "0"):
            return False
        raise UsageError(f"invalid boolean value {raw!r} for {name}")
    if flag.kind == INT:
        try:
            return int(raw)
        except ValueError:
            raise UsageError(f"invalid value {raw!r} for {name}: not an integer") from None
    return raw


def parse_flags(argv: list[str], flags: tuple[Flag, ...], stop_at_arg: bool) -> tuple[Parsed, list[str]]:
    """Parse leading flags; returns what was parsed and the rest of argv."""
    by_name = {name: f for f in flags for name in f.names}
    parsed = Parsed({f.dest: f.default for f in flags})
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            parsed.args.extend(argv[i + 1:])
            return parsed, []
        if not arg.startswith("-") or arg == "-":
            if stop_at_arg:
                return parsed, argv[i:]
            parsed.args.append(arg)
            i += 1
            continue
        name, eq, inline = arg.partition("=")
        if name.startswith("-") and not name.startswith("--") and len(name) > 2 and not eq:
            name, inline, eq = name[:2], name[2:], "="  # -bDIR
        if name in ("-h", "--help"):
            raise _Help()
        flag = by_name.get(name)
        if flag is None:
            raise UsageError(f"flag provided but not defined: {name}")
        if flag.kind == BOOL:
            value = _parse_value(flag, name, inline) if eq else True
        elif eq:
            value = _parse_value(flag, name, inline)
        else:
            i += 1
            if i >= len(argv):
                raise UsageError(f"flag needs an argument: {name}")
            value = _parse_value(flag, name, argv[i])
        if flag.repeat:
            value = [*(parsed.values[flag.dest] or ()), value]
        parsed.values[flag.dest] = value
        i += 1
    return parsed, []


class _Help(Exception):
    pass


def _usage() -> str:
    lines = ["usage: ocirun [global flags] <command> [flags] [args]", "",
             "global flags: --root DIR, --log FILE, --log-format text|json, --debug, "
             "--systemd-cgroup, --version, --help", "", "commands:"]
    lines += [f"  {name:<10} {cmd.summary}" for name, cmd in COMMANDS.items()]
    return "\n".join(lines)


def _version() -> str:
    from ocirun.features import version_text
    return version_text()


def parse_signal(raw: str) -> int:
    from ocirun import signals
    if raw.isdigit():
        num = int(raw)
        if not 0 <= num < 65:  # 0: "is it alive", as kill(2) and runc take it
            raise OciError(f"invalid signal {raw!r}")
        return num
    name = raw.upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    sig = signals.number(name)
    if sig is None:
        raise OciError(f"invalid signal {raw!r}")
    return sig


def _root(g: dict[str, Any]) -> str:
    from ocirun.state import default_root
    return os.path.abspath(g["root"]) if g["root"] else default_root()


def _create_options(v: dict[str, Any], g: dict[str, Any]) -> Any:
    from ocirun.create import CreateOptions
    if v["preserve_fds"] < 0:
        raise UsageError("--preserve-fds must not be negative")
    return CreateOptions(bundle=v["bundle"], pid_file=v["pid_file"],
                         console_socket=v["console_socket"], no_pivot=v["no_pivot"],
                         no_new_keyring=v["no_new_keyring"], preserve_fds=v["preserve_fds"],
                         systemd_cgroup=g["systemd_cgroup"], rootless=g["rootless"])


def _cmd_create(g: dict[str, Any], v: dict[str, Any], args: list[str]) -> int:
    from ocirun.create import create
    create(_root(g), args[0], _create_options(v, g))
    return 0


def _cmd_run(g: dict[str, Any], v: dict[str, Any], args: list[str]) -> int:
    from ocirun.run import run
    if v["keep"] and v["detach"]:
        raise UsageError("--keep and --detach cannot be used together (a detached "
                         "container is kept anyway)")
    return run(_root(g), args[0], _create_options(v, g), v["detach"], v["keep"])


def _cmd_start(g: dict[str, Any], v: dict[str, Any], args: list[str]) -> int:
    from ocirun.start import start
    start(_root(g), args[0])
    return 0


def _cmd_state(g: dict[str, Any], v: dict[str, Any], args: list[str]) -> int:
    from ocirun import state as st  # `state` is called often: keep it light
    print(jsonio.dumps(st.load(st.open_container(_root(g), args[0])).to_oci(), indent=2))
    return 0


def _cmd_kill(g: dict[str, Any], v: dict[str, Any], args: list[str]) -> int:
    from ocirun.kill import kill
    sig = parse_signal(args[1] if len(args) > 1 else "TERM")
    kill(_root(g), args[0], sig, v["all"])
    return 0


def _cmd_delete(g: dict[str, Any], v: dict[str, Any], args: list[str]) -> int:
    from ocirun.delete import delete
    status = 0
    for container_id in args:
        try:
            delete(_root(g), container_id, v["force"])
        except OciError as e:
            if len(args) == 1:
                raise
            log.error(e.message)
            status = 1
    return status


def _cmd_list(g: dict[str, Any], v: dict[str, Any], args: list[str]) -> int:
    from ocirun.listing import list_
    try:
        list_(_root(g), v["format"], v["quiet"])
    except ValueError as e:
        raise UsageError(str(e)) from None
    return 0


def _cmd_spec(g: dict[str, Any], v: dict[str, Any], args: list[str]) -> int:
    from ocirun.specgen import write_spec
    write_spec(v["bundle"], v["rootless"])
    return 0


def _cmd_validate(g: dict[str, Any], v: dict[str, Any], args: list[str]) -> int:
    from ocirun.validate import validate_bundle
    problems = validate_bundle(v["bundle"])
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        raise OciError(f"config.json is invalid: {len(problems)} problem(s)")
    print(f"{os.path.join(v['bundle'], 'config.json')}: valid")
    return 0


def _cmd_pause(g: dict[str, Any], v: dict[str, Any], args: list[str]) -> int:
    from ocirun.pause import pause
    pause(_root(g), args[0])
    return 0


def _cmd_resume(g: dict[str, Any], v: dict[str, Any], args: list[str]) -> int:
    from ocirun.pause import resume
    resume(_root(g), args[0])
    return 0


def _cmd_exec(g: dict[str, Any], v: dict[str, Any], args: list[str]) -> int:
    from ocirun.exec import ExecOptions, exec_in
    container_id, command = args[0], args[1:]
    if command[:1] == ["--"]:
        command = command[1:]
    if v["process"] and command:
        raise UsageError("exec: give either --process or a command, not both")
    if v["preserve_fds"] < 0:
        raise UsageError("--preserve-fds must not be negative")
    opts = ExecOptions(
        args=tuple(command), process_file=v["process"], detach=v["detach"],
        pid_file=v["pid_file"], tty=v["tty"], console_socket=v["console_socket"],
        cwd=v["cwd"], env=tuple(v["env"]), user=v["user"],
        additional_gids=tuple(v["additional_gids"]), caps=tuple(v["cap"]),
        no_new_privs=v["no_new_privs"], preserve_fds=v["preserve_fds"],
        process_label=v["process_label"], apparmor=v["apparmor"],
        ignore_paused=v["ignore_paused"], cgroups=tuple(v["cgroup"]))
    try:
        return exec_in(_root(g), container_id, opts)
    except OciError as e:
        # runc's status when the process could not be run at all: 255 is out of the
        # range a process's own exit status or 128+signal can take.
        raise OciError(e.message, 255) from None


def _cmd_update(g: dict[str, Any], v: dict[str, Any], args: list[str]) -> int:
    from ocirun.update import FLAG_FIELDS, build_resources, update
    resources = build_resources(v["resources"], {k: v[k] for k in FLAG_FIELDS})
    update(_root(g), args[0], resources)
    return 0


def _cmd_events(g: dict[str, Any], v: dict[str, Any], args: list[str]) -> int:
    from ocirun.events import events, parse_duration
    events(_root(g), args[0], v["stats"], parse_duration(v["interval"]))
    return 0


def _cmd_features(g: dict[str, Any], v: dict[str, Any], args: list[str]) -> int:
    from ocirun.features import features
    print(jsonio.dumps(features(), indent=4))
    return 0


def _cmd_ps(g: dict[str, Any], v: dict[str, Any], args: list[str]) -> int:
    from ocirun.ps import ps
    if v["format"] not in ("table", "json"):
        raise UsageError(f"invalid --format {v['format']!r} (table or json)")
    try:
        ps(_root(g), args[0], v["format"], args[1:])
    except ValueError as e:
        raise UsageError(str(e)) from None
    return 0


def _cmd_bundle(g: dict[str, Any], v: dict[str, Any], args: list[str]) -> int:
    name, rest = args[0], args[1:]
    command = BUNDLE_COMMANDS.get(name)
    if command is None:
        raise UsageError(f"unknown bundle command {name!r} (create, ls or rm)")
    try:
        parsed, tail = parse_flags(rest, command.flags, stop_at_arg=False)
    except _Help:
        print(f"usage: ocirun {command.usage}")
        return 0
    o, args = parsed.values, parsed.args + tail
    if not command.min_args <= len(args) <= command.max_args:
        raise UsageError(f"usage: ocirun {command.usage}")
    from ocirun.process import staying
    staying()  # unpacking an image takes seconds: the collector is wanted back
    from ocirun.image import bundle
    if name == "ls":
        if o["format"] not in ("table", "json"):
            raise UsageError(f"invalid --format {o['format']!r} (table or json)")
        bundle.list_store(o["store"], o["format"])
    elif name == "rm":
        bundle.remove(o["store"], args, _root(g))
    else:
        if not o["source"]:
            raise UsageError("bundle create needs --from ARCHIVE|DIR|-")
        if o["unpack"] and o["overlay"]:
            raise UsageError("--unpack and --overlay exclude each other")
        for flag in ("uid_shift", "gid_shift", "max_layer_size"):
            if o[flag] < 0:
                raise UsageError(f"--{flag.replace('_', '-')} must not be negative")
        bundle.create(bundle.BundleOptions(
            o["source"], args[0], o["ref"], not o["unpack"], o["store"], o["uid_shift"],
            o["gid_shift"], o["max_layer_size"]))
    return 0


HANDLERS: dict[str, Callable[[dict[str, Any], dict[str, Any], list[str]], int]] = {
    "create": _cmd_create, "run": _cmd_run, "start": _cmd_start, "state": _cmd_state,
    "kill": _cmd_kill, "delete": _cmd_delete, "list": _cmd_list, "spec": _cmd_spec,
    "validate": _cmd_validate, "pause": _cmd_pause, "resume": _cmd_resume, "ps": _cmd_ps,
    "exec": _cmd_exec, "update": _cmd_update, "events": _cmd_events,
    "features": _cmd_features, "bundle": _cmd_bundle,
}


def main(argv: list[str] | None = None) -> int:
    own_command_line = argv is None
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("--version", "-v", "-version"):
        print(_version())
        return 0
    try:
        top, rest = parse_flags(argv, _GLOBAL_FLAGS, stop_at_arg=True)
        g = top.values
        if g["log_format"] not in ("text", "json"):
            raise UsageError(f"invalid --log-format {g['log_format']!r} (text or json)")
        log.configure(g["log"], g["log_format"], g["debug"])
        if g["version"]:  # engines probe `ocirun --root R --version`
            print(_version())
            return 0
        if not rest:
            print(_usage())
            return 0
        name, rest = rest[0], rest[1:]
        if name in ("--version", "-v"):
            print(_version())
            return 0
        command = COMMANDS.get(name)
        if command is None:
            raise UsageError(f"unknown command {name!r} (see ocirun --help)")
        try:
            parsed, tail = parse_flags(rest, command.flags, stop_at_arg=command.stop_at_arg)
            parsed.args += tail
        except _Help:
            print(f"usage: ocirun {command.usage}")
            return 0
        if not command.min_args <= len(parsed.args) <= command.max_args:
            want = (f"exactly {command.min_args}" if command.min_args == command.max_args
                    else f"{command.min_args} to {command.max_args}")
            raise UsageError(f'"{name}" requires {want} argument(s); usage: ocirun '
                             f"{command.usage}")
        if own_command_line and name in ("create", "run", "exec"):
            from ocirun import exeseal  # no child may run a writable interpreter
            exeseal.ensure_sealed()
        return HANDLERS[name](g, parsed.values, parsed.args)
    except _Help:
        print(_usage())
        return 0
    except OciError as e:
        log.error(e.message)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    except OSError as e:
        subject = f": {e.filename}" if e.filename else ""
        log.error(f"{(e.strerror or str(e)).lower()}{subject}")
        return 1
    except Exception as e:  # noqa: BLE001 - never a traceback for the user
        if os.environ.get("OCIRUN_TRACEBACK"):
            raise
        log.error(f"internal error: {type(e).__name__}: {e}")
        return 1


def main_and_exit() -> None:
    """main(), then leave without the interpreter's teardown (nothing is left to flush)."""
    code = main()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)
