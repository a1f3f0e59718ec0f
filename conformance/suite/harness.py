"""The machinery every case uses: the runtime under test (driven only through its CLI),
bundles, containers, waiting, host-side probes, cleanup and leak checks.

Nothing here knows about any particular runtime: the CLI used is the one runc, crun and
ocirun share (`--root DIR create --bundle B ID`, `start ID`, `state ID`, `kill ID SIG`,
`delete [--force] ID`, `--console-socket`, `--log`).
"""

from __future__ import annotations

import copy
import errno
import json
import os
import re
import select
import shutil
import signal
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD_BUSYBOX = os.path.join(REPO, "bundles", "build-busybox.sh")

MUST, SHOULD = "MUST", "SHOULD"
SPEC_VERSION = "1.1.0"  # what the suite's configs declare (crun 1.8 refuses 1.2.0)


# --------------------------------------------------------------------------- outcomes
class Fail(Exception):
    """The runtime did not do what the cited sentence asks."""


class Skip(Exception):
    """This host (kernel, mounts, capabilities) cannot express the case."""


def check(cond: Any, msg: str) -> None:
    if not cond:
        raise Fail(msg)


def expect_eq(what: str, expected: Any, got: Any) -> None:
    if expected != got:
        raise Fail(f"{what}: expected {expected!r}, got {got!r}")


# --------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class Case:
    section: str     # "runtime/create", "config/process", "linux/namespaces"...
    name: str
    level: str       # MUST or SHOULD
    ref: str         # "runtime.md#create"
    sentence: str    # the sentence of the spec the case tests
    fn: Callable[["Ctx"], Any]

    @property
    def id(self) -> str:
        return f"{self.section}/{self.name}"


REGISTRY: list[Case] = []


def case(section: str, name: str, level: str, ref: str, sentence: str) -> Callable:
    def register(fn: Callable[["Ctx"], Any]) -> Callable[["Ctx"], Any]:
        REGISTRY.append(Case(section, name, level, ref, " ".join(sentence.split()), fn))
        return fn
    return register


# --------------------------------------------------------------------------- host facts
@dataclass(frozen=True)
class Hierarchy:
    key: str          # "memory", "cpu,cpuacct", "name=systemd", "" for cgroup2
    mountpoint: str
    own: str          # the harness's cgroup in this hierarchy ("/process_api/x")


def cgroup_hierarchies() -> list[Hierarchy]:
    """Every cgroup hierarchy mounted in the harness's mount namespace, with the
    harness's own place in it."""
    own: dict[str, str] = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _n, ctrls, path = line.rstrip("\n").split(":", 2)
            own[ctrls] = path
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, right = line.split(" - ", 1)
            fstype, _src, opts = right.split()[:3]
            mp = left.split()[4]
            if fstype == "cgroup2":
                out.append(Hierarchy("", mp, own.get("", "/")))
            elif fstype == "cgroup":
                names = [o for o in opts.split(",") if o not in ("rw", "ro") and
                         not o.startswith(("release_agent", "clone_children", "xattr",
                                           "noprefix", "cpuset_v2_mode"))]
                key = next((k for k in own if k and set(k.split(",")) == set(names)), None)
                if key is not None:
                    out.append(Hierarchy(key, mp, own[key]))
    return out


def proc_cgroups(pid: int) -> dict[str, str]:
    """controller -> cgroup path of pid (v1 controllers one by one, '' for cgroup2)."""
    out: dict[str, str] = {}
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            _n, ctrls, path = line.rstrip("\n").split(":", 2)
            if not ctrls:
                out[""] = path
            for c in ctrls.split(","):
                if c:
                    out[c] = path
    return out


def cgroup_dir(pid: int, controller: str) -> str | None:
    """Host directory of pid's cgroup for a v1 controller (or '' for cgroup2)."""
    paths = proc_cgroups(pid)
    if controller not in paths:
        return None
    for h in cgroup_hierarchies():
        if (controller == "" and h.key == "") or (controller and controller in h.key.split(",")):
            return os.path.normpath(h.mountpoint + "/" + paths[controller])
    return None


def read(path: str) -> str:
    with open(path) as f:
        return f.read()


def ns_inode(pid: int | str, ns: str) -> str:
    return os.readlink(f"/proc/{pid}/ns/{ns}")


def status_fields(pid: int) -> dict[str, str]:
    out = {}
    for line in read(f"/proc/{pid}/status").splitlines():
        k, _, v = line.partition(":")
        out[k] = v.strip()
    return out


def mountinfo(text: str) -> list[dict[str, Any]]:
    """Parse mountinfo text into dicts: mountpoint, root, opts, optional, fstype,
    source, super."""
    out = []
    for line in text.splitlines():
        if " - " not in line:
            continue
        left, right = line.split(" - ", 1)
        l, r = left.split(), right.split()
        out.append({"mountpoint": _unescape(l[4]), "root": _unescape(l[3]),
                    "opts": set(l[5].split(",")), "optional": l[6:],
                    "fstype": r[0], "source": r[1] if len(r) > 1 else "",
                    "super": set(r[2].split(",")) if len(r) > 2 else set()})
    return out


def _unescape(s: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), s)


def kv_lines(text: str) -> dict[str, str]:
    """'key=value' lines (what the in-container scripts print) into a dict."""
    out = {}
    for line in text.splitlines():
        k, sep, v = line.partition("=")
        if sep:
            out[k.strip()] = v.strip()
    return out


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


# --------------------------------------------------------------------------- runtime
@dataclass
class Result:
    argv: list[str]
    rc: int
    out: str
    err: str
    seconds: float

    def __str__(self) -> str:
        msg = (self.err.strip() or self.out.strip()).splitlines()
        return f"exit {self.rc}" + (f": {msg[-1][:300]}" if msg else "")


class Runtime:
    """The runtime under test, as an argv prefix (e.g. ['runc'] or
    ['python3', '-m', 'ocirun'])."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None,
                 name: str = "") -> None:
        self.argv = argv
        self.env = env
        self.name = name or os.path.basename(argv[0])

    def version(self) -> str:
        try:
            r = subprocess.run([*self.argv, "--version"], capture_output=True, text=True,
                               timeout=30, env=self.env, stdin=subprocess.DEVNULL)
            return " ".join(r.stdout.split("\n")[0].split())
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"unknown ({e})"


# --------------------------------------------------------------------------- bundles
class Template:
    """One busybox rootfs built by bundles/build-busybox.sh; cases get cheap copies
    (the busybox binary hard-linked, the rest copied)."""

    def __init__(self, workdir: str) -> None:
        self.dir = os.path.join(workdir, "template")
        os.makedirs(self.dir)
        # A config.json already in place keeps build-busybox.sh from generating one with
        # `ocirun spec`: the suite writes its own configs, independent of any runtime.
        with open(os.path.join(self.dir, "config.json"), "w") as f:
            f.write("{}\n")
        subprocess.run([BUILD_BUSYBOX, self.dir], check=True, stdout=subprocess.DEVNULL)
        self.rootfs = os.path.join(self.dir, "rootfs")

    def copy_rootfs(self, dest: str) -> None:
        shutil.copytree(self.rootfs, dest, symlinks=True, copy_function=_link_or_copy)


def _link_or_copy(src: str, dst: str) -> None:
    if os.path.basename(src) == "busybox":
        os.link(src, dst)
    else:
        shutil.copy2(src, dst)


DEFAULT_ENV = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
               "TERM=xterm"]
DEFAULT_CAPS = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
MASKED = ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
          "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
          "/proc/scsi"]
READONLY = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]


def default_config(args: list[str]) -> dict[str, Any]:
    """The suite's own baseline config, shaped like `runc spec`'s (no runtime's spec
    generator is used, so no runtime grades its own homework)."""
    return {
        "ociVersion": SPEC_VERSION,
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": list(DEFAULT_ENV),
            "cwd": "/",
            "capabilities": {k: list(DEFAULT_CAPS) for k in
                             ("bounding", "effective", "permitted")},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs", "readonly": False},
        "hostname": "conformance",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620",
                         "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
        ],
        "linux": {
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "namespaces": [{"type": t} for t in
                           ("pid", "network", "ipc", "uts", "mount", "cgroup")],
            "maskedPaths": list(MASKED),
            "readonlyPaths": list(READONLY),
        },
    }


@dataclass
class Bundle:
    path: str
    config: dict[str, Any]
    results: str      # host dir bind-mounted at /results (rw, mode 0777)

    @property
    def rootfs(self) -> str:
        root = self.config.get("root", {}).get("path", "rootfs")
        return root if os.path.isabs(root) else os.path.join(self.path, root)

    def write(self) -> None:
        with open(os.path.join(self.path, "config.json"), "w") as f:
            json.dump(self.config, f, indent=1)

    def result(self, name: str) -> str | None:
        try:
            return read(os.path.join(self.results, name))
        except FileNotFoundError:
            return None


@dataclass
class Container:
    id: str
    bundle: Bundle | None
    out: str          # file the container's stdout goes to (create's stdout)
    err: str
    create: Result | None = None
    pid: int = 0
    pidfd: int | None = None  # taken while the process is known alive: immune to pid reuse
    cgroup_name: str | None = None

    def track(self, pid: int) -> None:
        """Remember the container process by a pidfd (pid_max is small on some hosts)."""
        self.pid = pid
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None
        try:
            self.pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            pass

    def stdout(self) -> str:
        return read(self.out)

    def stderr(self) -> str:
        return read(self.err)


# --------------------------------------------------------------------------- context
class Ctx:
    """Everything one case needs; it cleans up after the case, pass or fail."""

    def __init__(self, suite: "Suite", c: Case) -> None:
        self.suite = suite
        self.case = c
        self.rt = suite.runtime
        slug = re.sub(r"[^A-Za-z0-9]+", "-", c.id).strip("-")
        self.dir = os.path.join(suite.workdir, slug)
        os.makedirs(self.dir)
        self.root = os.path.join(self.dir, "state")   # the runtime's --root
        self.slug = slug[-40:].strip("-")
        self._n = 0
        self.containers: list[Container] = []
        self.cgroup_names: list[str] = []
        self.own_cgroups: set[str] = set()  # made by the case itself: not a leak
        self.helpers: list[subprocess.Popen] = []
        self.notes: list[str] = []
        self.leaks: list[str] = []

    # ------------------------------------------------------------------ ids, files
    def _next(self) -> int:
        self._n += 1
        return self._n

    def new_id(self) -> str:
        return f"{self.slug[-24:]}-{uuid.uuid4().hex[:8]}".lstrip("-")

    def path(self, *parts: str) -> str:
        return os.path.join(self.dir, *parts)

    def note(self, msg: str) -> None:
        self.notes.append(msg)

    # ------------------------------------------------------------------ bundles
    def config(self, args: list[str] | None = None, script: str | None = None) -> dict[str, Any]:
        """The baseline config with a unique relative cgroupsPath and /results mounted.
        `script` is run with `sh -c`."""
        if script is not None:
            args = ["sh", "-c", script]
        cfg = default_config(args or ["true"])
        name = f"oci-conformance-{self.suite.run_id}-{self.slug[-30:]}-{self._next()}"
        self.cgroup_names.append(name)
        cfg["linux"]["cgroupsPath"] = name
        cfg["mounts"].append({"destination": "/results", "type": "bind", "source": "",
                              "options": ["rbind", "rw"]})
        return cfg

    def bundle(self, cfg: dict[str, Any], rootfs: bool = True,
               prepare: Callable[[str], None] | None = None) -> Bundle:
        """A bundle directory with its own rootfs copy and results dir; `prepare` gets
        the rootfs path to add files before the config is written."""
        n = self._next()
        path = self.path(f"bundle{n}")
        os.makedirs(path)
        results = self.path(f"results{n}")
        os.makedirs(results)
        os.chmod(results, 0o777)
        cfg = copy.deepcopy(cfg)
        for m in cfg.get("mounts", []):
            if m.get("destination") == "/results" and m.get("source") == "":
                m["source"] = results
        b = Bundle(path, cfg, results)
        if rootfs:
            self.suite.template.copy_rootfs(os.path.join(path, "rootfs"))
            if prepare is not None:
                prepare(os.path.join(path, "rootfs"))
        b.write()
        return b

    # ------------------------------------------------------------------ the CLI
    def run_rt(self, *args: str, timeout: float = 30, stdout: str | None = None,
               stderr: str | None = None, cwd: str | None = None,
               global_args: tuple[str, ...] = (), prefix: list[str] | None = None,
               root: str | None = None) -> Result:
        """One runtime command. Output goes to files, never pipes: a created container
        inherits the runtime's stdio and would keep a pipe open."""
        argv = [*(prefix or []), *self.rt.argv, "--root", root or self.root, *global_args,
                *args]
        n = self._next()
        out = stdout or self.path(f"cmd{n}.out")
        err = stderr or self.path(f"cmd{n}.err")
        t0 = time.monotonic()
        with open(out, "wb") as fo, open(err, "wb") as fe:
            try:
                p = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=fo, stderr=fe,
                                   timeout=timeout, env=self.rt.env, cwd=cwd)
                rc = p.returncode
            except subprocess.TimeoutExpired:
                rc = -999
        res = Result(argv, rc, read(out), read(err), time.monotonic() - t0)
        if rc == -999:
            res.err += f"\n(harness: timed out after {timeout}s)"
        with open(self.path("commands.log"), "a") as f:
            f.write(f"$ {' '.join(argv)}\n  -> {res} ({res.seconds:.3f}s)\n")
        return res

    def create(self, bundle: Bundle | None, cid: str | None = None, ok: bool = True,
               extra: tuple[str, ...] = (), **kw: Any) -> Container:
        """`create --bundle B ID`; with ok=True a failure fails the case."""
        cid = cid or self.new_id()
        n = self._next()
        c = Container(cid, bundle, self.path(f"c{n}.out"), self.path(f"c{n}.err"))
        if bundle is not None:
            c.cgroup_name = bundle.config.get("linux", {}).get("cgroupsPath")
        self.containers.append(c)
        args = ["create"] + (["--bundle", bundle.path] if bundle is not None else []) + \
            list(extra) + [cid]
        c.create = self.run_rt(*args, stdout=c.out, stderr=c.err, **kw)
        if ok and c.create.rc != 0:
            raise Fail(f"create failed: {c.create}")
        if c.create.rc == 0:
            st = self.state(cid, required=False)
            if st is not None and isinstance(st.get("pid"), int) and st["pid"] > 0:
                c.track(st["pid"])
        return c

    def state(self, cid: str, required: bool = True) -> dict[str, Any] | None:
        r = self.run_rt("state", cid)
        if r.rc != 0:
            if required:
                raise Fail(f"state {cid} failed: {r}")
            return None
        try:
            data = json.loads(r.out)
        except ValueError:
            raise Fail(f"state {cid} printed invalid JSON: {r.out[:200]!r}") from None
        if not isinstance(data, dict):
            raise Fail(f"state {cid} printed {type(data).__name__}, not an object")
        return data

    def status(self, cid: str) -> str | None:
        st = self.state(cid, required=False)
        return None if st is None else st.get("status")

    def start(self, c: Container | str, ok: bool = True) -> Result:
        cid = c if isinstance(c, str) else c.id
        r = self.run_rt("start", cid)
        if ok and r.rc != 0:
            raise Fail(f"start failed: {r}")
        return r

    def kill(self, c: Container | str, sig: int | str = 15, ok: bool = True) -> Result:
        cid = c if isinstance(c, str) else c.id
        r = self.run_rt("kill", cid, str(sig))
        if ok and r.rc != 0:
            raise Fail(f"kill failed: {r}")
        return r

    def delete(self, c: Container | str, force: bool = False, ok: bool = True) -> Result:
        cid = c if isinstance(c, str) else c.id
        r = self.run_rt("delete", *(["--force"] if force else []), cid)
        if ok and r.rc != 0:
            raise Fail(f"delete failed: {r}")
        return r

    def wait_exit(self, c: Container, timeout: float = 15) -> None:
        """Wait until the container's process has exited (pidfd), then reap it if the
        harness (a child subreaper) inherited it."""
        if c.pidfd is None:
            raise Fail("no pid known for the container")
        if not wait_pidfd(c.pidfd, timeout):
            raise Fail(f"container process {c.pid} still running after {timeout}s")

    def run(self, bundle: Bundle, timeout: float = 15) -> Container:
        """create + start + wait for the process to exit (no delete: cleanup does it)."""
        c = self.create(bundle)
        self.start(c)
        self.wait_exit(c, timeout)
        return c

    def run_script(self, script: str, mutate: Callable[[dict[str, Any]], Any] | None = None,
                   prepare: Callable[[str], None] | None = None) -> tuple[str, Bundle]:
        """Run `sh -c script` in a baseline container (mutated by `mutate`); returns its
        stdout and the bundle."""
        cfg = self.config(script=script)
        if mutate is not None:
            mutate(cfg)
        b = self.bundle(cfg, prepare=prepare)
        c = self.run(b)
        return c.stdout(), b

    def wait_status(self, cid: str, want: str, timeout: float = 10) -> str | None:
        deadline = time.monotonic() + timeout
        got = None
        while time.monotonic() < deadline:
            got = self.status(cid)
            if got == want:
                return got
            time.sleep(0.05)
        return got

    # ------------------------------------------------------------------ helpers
    def helper(self, argv: list[str]) -> subprocess.Popen:
        """A host process the case needs (e.g. a namespace holder); killed at cleanup."""
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
        self.helpers.append(p)
        return p

    def cgroup_candidates(self, name: str) -> list[str]:
        """Where a runtime may put relative cgroupsPath `name`, per hierarchy: under the
        caller's own cgroup (runc, ocirun) or under the hierarchy's root (crun)."""
        out: list[str] = []
        for h in self.suite.hierarchies:
            for base in (h.own, "/"):
                d = os.path.normpath(f"{h.mountpoint}/{base}/{name}")
                if d not in out:
                    out.append(d)
        return out

    def cgroup_exists(self, name: str) -> list[str]:
        """Host directories of relative cgroupsPath `name` that exist now."""
        return [d for d in self.cgroup_candidates(name) if os.path.isdir(d)]

    # ------------------------------------------------------------------ cleanup
    def cleanup(self) -> None:
        """delete --force every container, then check the runtime left nothing: no
        state entry, no cgroup directory, no process.  Leaks are removed here (by pid,
        by rmdir) and reported as a failure of the case."""
        for c in self.containers:
            if c.create is None:
                continue
            r = self.run_rt("delete", "--force", c.id, timeout=30)
            if c.pidfd is not None:
                if not wait_pidfd(c.pidfd, 5):
                    self.leaks.append(f"process {c.pid} of {c.id} alive after delete --force")
                    signal.pidfd_send_signal(c.pidfd, signal.SIGKILL)
                    wait_pidfd(c.pidfd, 5)
                os.close(c.pidfd)
                c.pidfd = None
            # runc, crun and ocirun all keep a container's state in <root>/<id>.
            if os.path.lexists(os.path.join(self.root, c.id)):
                self.leaks.append(f"{self.root}/{c.id} left behind by delete --force ({r})")
        for p in self.helpers:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            p.wait()
        for name in self.cgroup_names:
            for d in self.cgroup_exists(name):
                if name not in self.own_cgroups:
                    self.leaks.append(f"cgroup {d} left behind")
                _remove_cgroup(d)


def wait_pidfd(pidfd: int, timeout: float) -> bool:
    """True once the process has exited; reaps it when the harness (a child subreaper)
    inherited it."""
    if not select.select([pidfd], [], [], timeout)[0]:
        return False
    try:
        os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOHANG)
    except ChildProcessError:
        pass  # not our child: its parent reaps it
    return True


def _remove_cgroup(d: str) -> None:
    """Kill whatever is in the cgroup (by pid) and remove it, children first."""
    for sub, dirs, _files in os.walk(d, topdown=False):
        for _ in range(50):
            try:
                pids = [int(p) for p in read(os.path.join(sub, "cgroup.procs")).split()]
            except OSError:
                pids = []
            for p in pids:
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                os.rmdir(sub)
                break
            except OSError as e:
                if e.errno == errno.ENOENT:
                    break
                time.sleep(0.05)


# --------------------------------------------------------------------------- suite
@dataclass
class Suite:
    runtime: Runtime
    workdir: str
    template: Template
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    hierarchies: list[Hierarchy] = field(default_factory=cgroup_hierarchies)
    lock: threading.Lock = field(default_factory=threading.Lock)


def iter_cases(filters: list[str]) -> Iterator[Case]:
    for c in REGISTRY:
        if not filters or any(f in c.id for f in filters):
            yield c
