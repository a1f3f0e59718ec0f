"""What a Python runtime that did nothing but the kernel work would take for bench/run's
`run /bin/true`, next to ocirun and runc: the yardstick for issue 14's `run` target.

    python3 bench/minimal_run.py [--rounds 15]

The minimal runtime (this file, started by bench/run's harness as a runtime is) does
what ocirun does to the kernel for that bundle: a cgroup under its own in every
hierarchy (v1 devices deny-all plus the defaults), clone3 into the cgroup2 one with
five new namespaces, the child writing 0 to each v1 `tasks`, the hostname, the
bundle's mounts, device nodes and /dev links, loopback up, pivot_root, masked and
read-only paths, the read-only root, the rlimit, capabilities, no_new_privs, execve;
the parent waits and removes the cgroups.  It does nothing else: no state, lock,
fifo, validation, messages or error handling, and it imports only what that work
needs (ocirun.sys's ctypes calls, ocirun.jsonio, _socket, _prctl).  Its time is the
interpreter floor plus the kernel work; what ocirun takes beyond it is ocirun's own
Python work.  Written for this machine's hybrid layout (on pure v2 it would skip the
device program ocirun loads).  MINIMAL_MARKS=FILE appends its phase times to FILE.
"""

import os
import sys
import time

_t0 = time.perf_counter()
_marks: list[tuple[str, float]] = []


def mark(what: str) -> None:
    _marks.append((what, time.perf_counter()))


def compare(rounds: int) -> int:
    import ctypes
    import importlib.machinery
    import importlib.util
    import shutil
    import statistics
    import tempfile
    here = os.path.dirname(os.path.abspath(__file__))
    loader = importlib.machinery.SourceFileLoader("bench_run", os.path.join(here, "run"))
    spec = importlib.util.spec_from_loader("bench_run", loader)
    br = importlib.util.module_from_spec(spec)
    loader.exec_module(br)
    import _prctl  # python-prctl, installed; ocirun itself comes from this checkout
    os.environ["MINIMAL_RUN_PATH"] = ":".join((br.REPO, os.path.dirname(_prctl.__file__)))
    ctypes.CDLL(None).prctl(br.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    work = tempfile.mkdtemp(prefix="ocirun-minimal-")
    os.chmod(work, 0o755)
    runtimes = [br.Runtime("ocirun", [br.installed_ocirun()], f"{work}/root-ocirun"),
                br.Runtime("minimal", [sys.executable, "-I", "-S", os.path.abspath(__file__)],
                           f"{work}/root-minimal")]
    if shutil.which("runc"):
        runtimes.append(br.Runtime("runc", [shutil.which("runc")], f"{work}/root-runc"))
    try:
        bench = br.Bench(runtimes, br.Bundles(work), rounds, 1)
        bench.alternate(rounds, bench.run)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"# {time.strftime('%Y-%m-%d %H:%M:%S %z')}, load {os.getloadavg()[0]:.1f}, "
          f"medians of {rounds} rounds, runtimes alternating")
    runs = bench.samples["run"]
    base = statistics.median(runs["runc"]) if "runc" in runs else None
    for name, samples in runs.items():
        ms = statistics.median(samples)
        print(f"run /bin/true {name:8} {ms:6.1f} ms" +
              (f"  {ms / base:.2f}x runc" if base else ""))
    print(f"interpreter floor (python3 -I -S -c pass) "
          f"{statistics.median(bench.samples['floor']['python']):.1f} ms")
    return 0


if "--bundle" not in sys.argv:
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=15)
    raise SystemExit(compare(ap.parse_args().rounds))

sys.path[:0] = os.environ["MINIMAL_RUN_PATH"].split(":")  # -I ignores PYTHONPATH
from ocirun import jsonio  # noqa: E402
from ocirun import sys as ksys  # noqa: E402
from ocirun.compat import socket as _socket  # noqa: E402

mark("imports")
bundle = sys.argv[sys.argv.index("--bundle") + 1]  # as bench/run calls a runtime
name = sys.argv[-1]
with open(os.path.join(bundle, "config.json"), "rb") as f:
    cfg = jsonio.loads(f.read())

mark("config")
# cgroups: mkdir under our own cgroup in every hierarchy, devices deny-all on v1
own = {}
with open("/proc/self/cgroup") as f:
    for line in f:
        _, ctrls, path = line.rstrip("\n").split(":", 2)
        own[ctrls] = path
dirs = []
try:  # the cgroups go even when a step fails
    unified_fd = -1
    v1_tasks = []
    for ctrls, path in own.items():
        if ctrls == "":  # the hybrid layout's cgroup2 mount, or pure v2
            base = "/sys/fs/cgroup/unified" if own.keys() != {""} else "/sys/fs/cgroup"
        elif ctrls.startswith("name="):
            base = "/sys/fs/cgroup/" + ctrls[5:]
        else:
            base = "/sys/fs/cgroup/" + ctrls
        if not os.path.isdir(base):
            continue
        d = base + path.rstrip("/") + "/" + name
        os.mkdir(d)
        dirs.append(d)
        if ctrls == "":
            unified_fd = os.open(d, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        else:
            v1_tasks.append(os.open(d + "/tasks", os.O_WRONLY | os.O_CLOEXEC))
        if "cpuset" in ctrls.split(","):
            for knob in ("cpuset.cpus", "cpuset.mems"):
                with open(os.path.dirname(d) + "/" + knob) as f:
                    value = f.read()
                with open(d + "/" + knob, "w") as f:
                    f.write(value)
        if "devices" in ctrls.split(","):
            with open(d + "/devices.deny", "w") as f:
                f.write("a")
            for rule in ("c 1:3 rwm", "c 1:5 rwm", "c 1:7 rwm", "c 1:8 rwm", "c 1:9 rwm",
                         "c 5:0 rwm", "c 5:2 rwm", "c 136:* rwm"):
                with open(d + "/devices.allow", "w") as f:
                    f.write(rule)

    mark("cgroups")
    with open("/proc/sys/kernel/cap_last_cap") as f:
        cap_last = int(f.read())
    flags = (ksys.CLONE_NEWNS | ksys.CLONE_NEWPID | ksys.CLONE_NEWNET | ksys.CLONE_NEWIPC |
             ksys.CLONE_NEWUTS)
    pid = ksys.clone3(flags, unified_fd)
    if pid == 0:
        try:
            import _prctl  # before pivot_root: the host's files are gone after it
            for fd in v1_tasks:
                os.write(fd, b"0")
            _socket.sethostname(cfg["hostname"])
            root = cfg["root"]["path"]
            ksys.mount(None, "/", None, ksys.MS_SLAVE | ksys.MS_REC)
            ksys.mount(root, root, None, ksys.MS_BIND | ksys.MS_REC)
            for m in cfg["mounts"]:
                target = root + m["destination"]
                if not os.path.isdir(target):
                    os.mkdir(target)
                opts = [o for o in m.get("options", ()) if "=" in o or o == "newinstance"]
                mflags = ksys.MS_NOSUID if "nosuid" in m.get("options", ()) else 0
                mflags |= ksys.MS_RDONLY if "ro" in m.get("options", ()) else 0
                ksys.mount(m["source"], target, m["type"], mflags, ",".join(opts) or None)
            for dev, minor in (("null", 3), ("zero", 5), ("full", 7), ("random", 8),
                               ("urandom", 9)):
                os.mknod(f"{root}/dev/{dev}", 0o666 | 0o020000, os.makedev(1, minor))
            os.mknod(f"{root}/dev/tty", 0o666 | 0o020000, os.makedev(5, 0))
            for target, link in (("/proc/self/fd", "fd"), ("/proc/self/fd/0", "stdin"),
                                 ("/proc/self/fd/1", "stdout"), ("/proc/self/fd/2", "stderr"),
                                 ("pts/ptmx", "ptmx")):
                os.symlink(target, f"{root}/dev/{link}")
            ksys.loopback_up()
            os.chdir(root)
            ksys.pivot_root(".", ".")
            ksys.umount2(".", ksys.MNT_DETACH)
            os.chdir("/")
            for p in cfg["linux"]["maskedPaths"]:
                if os.path.isdir(p):
                    ksys.mount("tmpfs", p, "tmpfs", ksys.MS_RDONLY)
                elif os.path.exists(p):
                    ksys.mount("/dev/null", p, None, ksys.MS_BIND)
            for p in cfg["linux"]["readonlyPaths"]:
                if os.path.exists(p):
                    ksys.mount(p, p, None, ksys.MS_BIND | ksys.MS_REC)
                    ksys.mount(p, p, None, ksys.MS_BIND | ksys.MS_REMOUNT | ksys.MS_RDONLY |
                               ksys.MS_REC)
            ksys.mount("/", "/", None, ksys.MS_BIND | ksys.MS_REMOUNT | ksys.MS_RDONLY)
            ksys.setrlimit("RLIMIT_NOFILE", 1024, 1024)
            keep = {5, 10, 29}  # CAP_KILL, CAP_NET_BIND_SERVICE, CAP_AUDIT_WRITE
            every = set(range(cap_last + 1))
            for cap in every - keep:
                _prctl.prctl(ksys.PR_CAPBSET_DROP, cap)
            ksys.set_capabilities(keep, keep, set(), every)
            _prctl.prctl(ksys.PR_SET_NO_NEW_PRIVS, 1)
            p = cfg["process"]
            os.execve(p["args"][0], p["args"], dict(e.split("=", 1) for e in p["env"]))
        except BaseException as e:
            print(f"minimal_run: {e!r}", file=sys.stderr)
            os._exit(127)
    mark("clone3")
    for fd in v1_tasks:
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    mark("wait (the child's work, its exit)")
finally:
    for d in reversed(dirs):
        os.rmdir(d)
mark("rmdir")
if os.environ.get("MINIMAL_MARKS"):
    with open(os.environ["MINIMAL_MARKS"], "a") as f:
        prev = _t0
        for what, t in _marks:
            f.write(f"{what}\t{(t - prev) * 1000:.3f}\n")
            prev = t
os._exit(os.waitstatus_to_exitcode(status))
