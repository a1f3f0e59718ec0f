"""config.md#process and its POSIX / Linux parts: args, env, cwd, terminal, consoleSize,
rlimits, user, capabilities, noNewPrivileges, oomScoreAdj."""

from __future__ import annotations

import os
import socket
import threading
from typing import Any

from suite.cases.common import (APPLY, CAPS, RUN_PROCESS, VALID_VALUES, cap_mask, cap_names,
                                expect_create_error)
from suite.harness import (MUST, SHOULD, Ctx, Fail, Skip, case, check, expect_eq, kv_lines,
                           read)

STATUS = "grep -E '^(Cap|NoNewPrivs|Uid|Gid|Groups)' /proc/1/status"


def status_of(out: str) -> dict[str, str]:
    got = {}
    for line in out.splitlines():
        k, sep, v = line.partition(":")
        if sep:
            got[k.strip()] = " ".join(v.split())
    return got


# ----------------------------------------------------------------------------- args, env, cwd
@case("config/process", "args", MUST, "config.md#process",
      "args (array of strings, OPTIONAL) with similar semantics to IEEE Std 1003.1-2008 "
      "execvp's argv. This specification extends the IEEE standard in that at least one "
      "entry is REQUIRED (non-Windows), and that entry is used with the same semantics as "
      "execvp's file. " + RUN_PROCESS)
def process_args(t: Ctx) -> None:
    c = t.run(t.bundle(t.config(["printf", "[%s]", "a b", "", "c\td", "$HOME"])))
    expect_eq("argv as printed by printf", "[a b][][c\td][$HOME]", c.stdout())


@case("config/process", "args0-searched-in-container-path", MUST, "config.md#process",
      "that entry is used with the same semantics as execvp's file. " + RUN_PROCESS)
def process_args_path(t: Ctx) -> None:
    cfg = t.config(["conformance-hello", "x"])
    cfg["process"]["env"] = ["PATH=/conformance/bin:/bin", "TERM=xterm"]

    def prepare(rootfs: str) -> None:
        os.makedirs(f"{rootfs}/conformance/bin")
        with open(f"{rootfs}/conformance/bin/conformance-hello", "w") as f:
            f.write('#!/bin/sh\necho "found via PATH: $1"\n')
        os.chmod(f"{rootfs}/conformance/bin/conformance-hello", 0o755)
    c = t.run(t.bundle(cfg, prepare=prepare))
    expect_eq("output", "found via PATH: x", c.stdout().strip())


@case("config/process", "env", MUST, "config.md#process",
      "env (array of strings, OPTIONAL) with the same semantics as IEEE Std 1003.1-2008's "
      "environ. " + RUN_PROCESS)
def process_env(t: Ctx) -> None:
    cfg = t.config(["env"])
    cfg["process"]["env"] += ["CONF_A=1", "CONF_EMPTY=", "CONF_EQ=a=b", "CONF_SPACE=x y"]
    c = t.run(t.bundle(cfg))
    lines = set(c.stdout().splitlines())
    for want in ("CONF_A=1", "CONF_EMPTY=", "CONF_EQ=a=b", "CONF_SPACE=x y", "TERM=xterm"):
        check(want in lines, f"environment lacks {want!r} (got {sorted(lines)})")


@case("config/process", "cwd", MUST, "config.md#process",
      "cwd (string, REQUIRED) is the working directory that will be set for the executable. "
      "This value MUST be an absolute path. " + RUN_PROCESS)
def process_cwd(t: Ctx) -> None:
    cfg = t.config(["pwd"])
    cfg["process"]["cwd"] = "/var/tmp"
    c = t.run(t.bundle(cfg))
    expect_eq("working directory", "/var/tmp", c.stdout().strip())


@case("config/process", "cwd-relative-refused", MUST, "config.md#valid-values",
      "cwd (string, REQUIRED) ... This value MUST be an absolute path. " + VALID_VALUES)
def process_cwd_relative(t: Ctx) -> str:
    cfg = t.config(["pwd"])
    cfg["process"]["cwd"] = "var/tmp"
    return expect_create_error(t, cfg, "relative process.cwd")


# ----------------------------------------------------------------------------- terminal
class ConsoleSocket:
    """The --console-socket end: receives the pty master and reads everything from it."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(1)
        self.sock.settimeout(30)
        self.output = b""
        self.error: str | None = None
        self.got_master = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
            with conn:
                _msg, fds, _flags, _addr = socket.recv_fds(conn, 4096, 4)
            if not fds:
                self.error = "the runtime sent no file descriptor over the console socket"
                return
            master = fds[0]
            for extra in fds[1:]:
                os.close(extra)
            self.got_master = True
            try:
                while True:
                    chunk = os.read(master, 4096)
                    if not chunk:
                        break
                    self.output += chunk
            except OSError:
                pass  # EIO once the last slave fd is closed
            finally:
                os.close(master)
        except OSError as e:
            self.error = f"console socket: {e}"
        finally:
            self.sock.close()

    def text(self) -> str:
        self.thread.join(10)
        return self.output.decode(errors="replace").replace("\r\n", "\n")


def _terminal_run(t: Ctx, script: str, size: dict[str, int] | None) -> str:
    cfg = t.config(script=script)
    cfg["process"]["terminal"] = True
    if size:
        cfg["process"]["consoleSize"] = size
    b = t.bundle(cfg)
    console = ConsoleSocket(t.path("console.sock"))
    c = t.create(b, extra=("--console-socket", console.path))
    t.start(c)
    t.wait_exit(c)
    out = console.text()
    if console.error:
        raise Fail(console.error)
    check(console.got_master, "no pty master received over the console socket")
    return out


@case("config/process", "terminal", MUST, "config-linux.md#default-devices",
      "terminal (bool, OPTIONAL) specifies whether a terminal is attached to the process, "
      "defaults to false. [config-linux.md] In addition to any devices configured with this "
      "setting, the runtime MUST also supply: ... /dev/console is set up if terminal is "
      "enabled in the config by bind mounting the pseudoterminal pty to /dev/console.")
def process_terminal(t: Ctx) -> None:
    out = _terminal_run(t, "test -t 0 && test -t 1 && echo tty=yes || echo tty=no; "
                           "echo console=$(stat -c %F /dev/console)", None)
    got = kv_lines(out)
    expect_eq("stdin and stdout are a terminal", "yes", got.get("tty"))
    expect_eq("/dev/console", "character special file", got.get("console"))


@case("config/process", "console-size", MUST, "config.md#process",
      "consoleSize (object, OPTIONAL) specifies the console size in characters of the "
      "terminal. " + APPLY)
def process_console_size(t: Ctx) -> None:
    out = _terminal_run(t, "echo size=$(stty size)", {"height": 41, "width": 103})
    expect_eq("stty size", "41 103", kv_lines(out).get("size"))


@case("config/process", "console-size-ignored-without-terminal", MUST, "config.md#process",
      "Runtimes MUST ignore consoleSize if terminal is false or unset.")
def process_console_size_ignored(t: Ctx) -> None:
    def mutate(cfg: dict) -> None:
        cfg["process"]["consoleSize"] = {"height": 41, "width": 103}
    out, _ = t.run_script("test -t 1 && echo tty=yes || echo tty=no", mutate)
    expect_eq("stdout is a terminal", "no", kv_lines(out).get("tty"))


# ----------------------------------------------------------------------------- rlimits
RLIMITS = [{"type": "RLIMIT_NOFILE", "soft": 512, "hard": 1000},
           {"type": "RLIMIT_NPROC", "soft": 50000, "hard": 60000},
           {"type": "RLIMIT_MSGQUEUE", "soft": 1000, "hard": 2000},
           {"type": "RLIMIT_CORE", "soft": 0, "hard": 4096}]
LIMIT_NAMES = {"RLIMIT_NOFILE": "Max open files", "RLIMIT_NPROC": "Max processes",
               "RLIMIT_MSGQUEUE": "Max msgqueue size", "RLIMIT_CORE": "Max core file size"}


@case("config/process", "rlimits", MUST, "config.md#posix-process",
      "For each entry in rlimits, a getrlimit(3) on type MUST succeed. For the following "
      "properties, rlim refers to the status returned by the getrlimit(3) call. soft "
      "(uint64, REQUIRED) ... rlim.rlim_cur MUST match the configured value. hard (uint64, "
      "REQUIRED) ... rlim.rlim_max MUST match the configured value.")
def process_rlimits(t: Ctx) -> None:
    def mutate(cfg: dict) -> None:
        cfg["process"]["rlimits"] = RLIMITS
    out, _ = t.run_script("cat /proc/1/limits", mutate)
    rows = {}
    for line in out.splitlines():
        for rl, name in LIMIT_NAMES.items():
            if line.startswith(name):
                rows[rl] = line[len(name):].split()[:2]
    for rl in RLIMITS:
        expect_eq(f"{rl['type']} soft/hard", [str(rl["soft"]), str(rl["hard"])],
                  rows.get(rl["type"]))


@case("config/process", "rlimits-uint64-max", MUST, "config.md#posix-process",
      "soft (uint64, REQUIRED) ... rlim.rlim_cur MUST match the configured value. hard "
      "(uint64, REQUIRED) ... rlim.rlim_max MUST match the configured value.")
def process_rlimits_uint64_max(t: Ctx) -> None:
    # 2^64-1 is a uint64, and RLIM_INFINITY: what engines write for an unlimited
    # limit.  Only for a limit this process has unlimited (raising a hard limit needs
    # CAP_SYS_RESOURCE, which the runtime's caller may lack).
    with open("/proc/self/limits") as f:
        own = {line[:26].strip(): line[26:].split()[:2] for line in f}
    name = next((rl for rl, shown in sorted(LIMIT_NAMES.items())
                 if own.get(shown, ["", ""])[1] == "unlimited"), None)
    if name is None:
        raise Skip("no limit of " + ", ".join(LIMIT_NAMES) + " is unlimited here")

    def mutate(cfg: dict) -> None:
        cfg["process"]["rlimits"] = [{"type": name, "soft": 2**64 - 1, "hard": 2**64 - 1}]
    out, _ = t.run_script("cat /proc/1/limits", mutate)
    row = next((line[26:].split()[:2] for line in out.splitlines()
                if line.startswith(LIMIT_NAMES[name])), None)
    expect_eq(f"{name} soft/hard", ["unlimited", "unlimited"], row)


@case("config/process", "rlimits-unknown-type", MUST, "config.md#posix-process",
      "The runtime MUST generate an error for any values which cannot be mapped to a "
      "relevant kernel interface.")
def process_rlimits_unknown(t: Ctx) -> str:
    cfg = t.config(["true"])
    cfg["process"]["rlimits"].append({"type": "RLIMIT_CONFORMANCE", "soft": 1, "hard": 1})
    return expect_create_error(t, cfg, "rlimit type RLIMIT_CONFORMANCE")


@case("config/process", "rlimits-duplicate", MUST, "config.md#posix-process",
      "If rlimits contains duplicated entries with same type, the runtime MUST generate an "
      "error.")
def process_rlimits_dup(t: Ctx) -> str:
    cfg = t.config(["true"])
    cfg["process"]["rlimits"] = [{"type": "RLIMIT_NOFILE", "soft": 512, "hard": 1000},
                                 {"type": "RLIMIT_NOFILE", "soft": 256, "hard": 900}]
    return expect_create_error(t, cfg, "two RLIMIT_NOFILE entries")


# ----------------------------------------------------------------------------- user
@case("config/user", "uid-gid-additional-gids", MUST, "config.md#user",
      "uid (int, REQUIRED) specifies the user ID in the container namespace. gid (int, "
      "REQUIRED) specifies the group ID in the container namespace. additionalGids (array "
      "of ints, OPTIONAL) specifies additional group IDs in the container namespace to be "
      "added to the process. " + RUN_PROCESS)
def user_ids(t: Ctx) -> None:
    def mutate(cfg: dict) -> None:
        cfg["process"]["user"] = {"uid": 1000, "gid": 1001, "additionalGids": [2001, 2002]}
    out, _ = t.run_script(STATUS, mutate)
    got = status_of(out)
    expect_eq("Uid (real, effective, saved, fs)", "1000 1000 1000 1000", got.get("Uid"))
    expect_eq("Gid (real, effective, saved, fs)", "1001 1001 1001 1001", got.get("Gid"))
    groups = set(got.get("Groups", "").split())
    check({"2001", "2002"} <= groups, f"supplementary groups: expected 2001 and 2002, "
                                      f"got {sorted(groups)}")


@case("config/user", "umask", MUST, "config.md#user",
      "umask (int, OPTIONAL) specifies the umask of the user. " + RUN_PROCESS)
def user_umask(t: Ctx) -> None:
    def mutate(cfg: dict) -> None:
        cfg["process"]["user"]["umask"] = 0o027
    out, _ = t.run_script("umask", mutate)
    expect_eq("umask", "0027", out.strip())


# ----------------------------------------------------------------------------- capabilities
CAP_B = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_SETUID",
         "CAP_SETGID", "CAP_AUDIT_WRITE"]
CAP_I = ["CAP_KILL", "CAP_NET_BIND_SERVICE"]
CAP_A = ["CAP_NET_BIND_SERVICE"]
CAP_SENTENCE = ("capabilities (object, OPTIONAL) is an object containing arrays that specifies "
                "the sets of capabilities for the process. Valid values are defined in the "
                "capabilities(7) man page ... effective, bounding, inheritable, permitted, "
                "ambient. " + RUN_PROCESS)


def _caps_config(cfg: dict[str, Any]) -> None:
    cfg["process"]["capabilities"] = {"bounding": CAP_B, "effective": CAP_B,
                                      "permitted": CAP_B, "inheritable": CAP_I,
                                      "ambient": CAP_A}


def _expect_caps(got: dict[str, str], want: dict[str, list[str]]) -> None:
    for key, names in want.items():
        have = int(got.get(key, "-1"), 16) if got.get(key) else -1
        if have != cap_mask(names):
            raise Fail(f"{key}: expected {sorted(names)}, got "
                       f"{sorted(cap_names(have)) if have >= 0 else 'nothing'}")


@case("config/process", "capabilities-root", MUST, "config.md#linux-process", CAP_SENTENCE)
def caps_root(t: Ctx) -> None:
    out, _ = t.run_script(STATUS, _caps_config)
    # For uid 0, execve(2) refills permitted and effective from bounding | inheritable.
    _expect_caps(status_of(out), {"CapBnd": CAP_B, "CapInh": CAP_I, "CapPrm": CAP_B,
                                  "CapEff": CAP_B, "CapAmb": CAP_A})


@case("config/process", "capabilities-non-root-ambient", MUST, "config.md#linux-process",
      CAP_SENTENCE)
def caps_user(t: Ctx) -> None:
    def mutate(cfg: dict) -> None:
        _caps_config(cfg)
        cfg["process"]["user"] = {"uid": 1000, "gid": 1000}
    out, _ = t.run_script(STATUS, mutate)
    # For a non-root user without file capabilities, execve(2) keeps only the ambient set
    # in permitted and effective: they show the ambient set was raised before execve.
    _expect_caps(status_of(out), {"CapBnd": CAP_B, "CapInh": CAP_I, "CapPrm": CAP_A,
                                  "CapEff": CAP_A, "CapAmb": CAP_A})


def _caps_with(t: Ctx, extra: str) -> tuple[Any, str]:
    cfg = t.config(script=STATUS)
    for key in ("bounding", "effective", "permitted"):
        cfg["process"]["capabilities"][key].append(extra)
    b = t.bundle(cfg)
    log = t.path("runtime.log")
    c = t.create(b, ok=False, global_args=("--log", log))
    said = c.stderr() + (read(log) if os.path.exists(log) else "")
    return c, said


def _unavailable_cap() -> str:
    bnd = int(next(line.split()[1] for line in read("/proc/self/status").splitlines()
                   if line.startswith("CapBnd:")), 16)
    last = int(read("/proc/sys/kernel/cap_last_cap"))
    for i, name in enumerate(CAPS[:last + 1]):
        if not bnd >> i & 1:
            return name
    raise Skip("the runtime is started with every capability: none is unavailable")


LOG_SENTENCE = ("Any value which cannot be mapped to a relevant kernel interface, or cannot be "
                "granted otherwise MUST be logged as a warning by the runtime.")
NOFAIL_SENTENCE = ("Runtimes SHOULD NOT fail if the container configuration requests "
                   "capabilities that cannot be granted, for example, if the runtime operates "
                   "in a restricted environment with a limited set of capabilities.")


@case("config/process", "capabilities-unknown-logged", MUST, "config.md#linux-process",
      LOG_SENTENCE)
def caps_unknown_logged(t: Ctx) -> None:
    _c, said = _caps_with(t, "CAP_CONFORMANCE_UNKNOWN")
    check("conformance_unknown" in said.lower(),
          "nothing logged about CAP_CONFORMANCE_UNKNOWN (stderr and --log file)")


@case("config/process", "capabilities-unknown-no-failure", SHOULD, "config.md#linux-process",
      NOFAIL_SENTENCE)
def caps_unknown_nofail(t: Ctx) -> None:
    c, _said = _caps_with(t, "CAP_CONFORMANCE_UNKNOWN")
    check(c.create is not None and c.create.rc == 0,
          f"create failed on an unknown capability: {c.create}")


@case("config/process", "capabilities-unavailable-logged", MUST, "config.md#linux-process",
      LOG_SENTENCE)
def caps_unavailable_logged(t: Ctx) -> None:
    cap = _unavailable_cap()
    _c, said = _caps_with(t, cap)
    check(cap.lower() in said.lower() or cap[4:].lower() in said.lower(),
          f"nothing logged about {cap}, which the runtime itself lacks (stderr and --log)")


@case("config/process", "capabilities-unavailable-no-failure", SHOULD,
      "config.md#linux-process", NOFAIL_SENTENCE)
def caps_unavailable_nofail(t: Ctx) -> str:
    cap = _unavailable_cap()
    c, _said = _caps_with(t, cap)
    check(c.create is not None and c.create.rc == 0,
          f"create failed on {cap}, which the runtime itself lacks: {c.create}")
    t.start(c)
    t.wait_exit(c)
    got = status_of(c.stdout())
    check(got.get("CapBnd"), "the container printed no capability sets")
    return f"requested {cap}"


# ----------------------------------------------------------------------------- nnp, oom
@case("config/process", "no-new-privileges", MUST, "config.md#linux-process",
      "noNewPrivileges (bool, OPTIONAL) setting noNewPrivileges to true prevents the process "
      "from gaining additional privileges. " + RUN_PROCESS)
def nnp(t: Ctx) -> None:
    for value, want in ((True, "1"), (False, "0")):
        def mutate(cfg: dict, value: bool = value) -> None:
            cfg["process"]["noNewPrivileges"] = value
        out, _ = t.run_script(STATUS, mutate)
        expect_eq(f"NoNewPrivs with noNewPrivileges={value}", want, status_of(out).get("NoNewPrivs"))


def _apparmor_enabled() -> bool:
    try:
        return read("/sys/module/apparmor/parameters/enabled").strip() == "Y"
    except OSError:
        return False


@case("config/process", "apparmor-profile-not-applicable", MUST, "runtime.md#create",
      "apparmorProfile (string, OPTIONAL) specifies the name of the AppArmor profile for "
      "the process. [runtime.md#create] " + APPLY)
def apparmor_unavailable(t: Ctx) -> str:
    if _apparmor_enabled():
        raise Skip("AppArmor is enabled here: a profile can be applied")
    cfg = t.config(["true"])
    cfg["process"]["apparmorProfile"] = "conformance-profile"
    return expect_create_error(t, cfg, "an AppArmor profile on a host without AppArmor")


@case("config/process", "selinux-label-not-applicable", MUST, "runtime.md#create",
      "selinuxLabel (string, OPTIONAL) specifies the SELinux label for the process. "
      "[runtime.md#create] " + APPLY)
def selinux_unavailable(t: Ctx) -> str:
    if os.path.exists("/sys/fs/selinux/enforce"):
        raise Skip("SELinux is enabled here: a label can be applied")
    cfg = t.config(["true"])
    cfg["process"]["selinuxLabel"] = "system_u:system_r:container_t:s0:c1,c2"
    return expect_create_error(t, cfg, "an SELinux label on a host without SELinux")


@case("config/process", "oom-score-adj", MUST, "config.md#linux-process",
      "If oomScoreAdj is set, the runtime MUST set oom_score_adj to the given value.")
def oom_set(t: Ctx) -> None:
    def mutate(cfg: dict) -> None:
        cfg["process"]["oomScoreAdj"] = 517
    out, _ = t.run_script("cat /proc/1/oom_score_adj", mutate)
    expect_eq("oom_score_adj", "517", out.strip())


@case("config/process", "oom-score-adj-unset", MUST, "config.md#linux-process",
      "If oomScoreAdj is not set, the runtime MUST NOT change the value of oom_score_adj.")
def oom_unset(t: Ctx) -> None:
    b = t.bundle(t.config(script="cat /proc/1/oom_score_adj"))
    # The runtime is started with oom_score_adj 123; the container must keep it.
    prefix = ["sh", "-c", 'echo 123 > /proc/self/oom_score_adj && exec "$@"', "sh"]
    c = t.create(b, prefix=prefix)
    t.start(c)
    t.wait_exit(c)
    expect_eq("oom_score_adj (the runtime's was 123)", "123", c.stdout().strip())

