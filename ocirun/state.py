"""Container state on disk, and the status derived from the live system.

Layout of <root>/<id>/:  state.json (written atomically), config.json (the bundle's config
as it was at create), exec.fifo (exists from create until start).  The status is never
read from a file: it is derived from the init's pid + start time, the fifo and the freezer.
"""

from __future__ import annotations

import fcntl
import os
import time
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Iterator

    from ocirun.cgroups.placement import Placement

from ocirun import jsonio
from ocirun.errors import OciError

DEFAULT_ROOT = "/run/ocirun"
STATE_FILE = "state.json"
EXEC_FIFO = "exec.fifo"

# What the init writes into the exec fifo once `start` opened it for reading:
#   "0"  released: startContainer hooks run next,
#   "1"  the hooks passed: execve follows,
#   "E" + JSON {"msg", "code"}  on a failure before execve,
# and the write end, close-on-exec, reaches EOF at execve (or at the init's death).
# So `start` returns only once the process runs, and reports what stopped it.
FIFO_RELEASED, FIFO_EXECUTING, FIFO_ERROR = b"0", b"1", b"E"

_ID_PUNCTUATION = frozenset("_+.-")
MAX_ID_LENGTH = 255  # the state directory's name (NAME_MAX)


def default_root() -> str:
    if os.geteuid() != 0 and os.environ.get("XDG_RUNTIME_DIR"):
        return os.path.join(os.environ["XDG_RUNTIME_DIR"], "ocirun")
    return DEFAULT_ROOT


def check_id(container_id: str) -> str:
    if not container_id:
        raise OciError("container id cannot be empty")
    if len(container_id) > MAX_ID_LENGTH:
        raise OciError(f"invalid container id: longer than {MAX_ID_LENGTH} characters")
    if container_id in (".", "..") or not all(
            c.isalnum() or c in _ID_PUNCTUATION for c in container_id):
        raise OciError(f"invalid container id {container_id!r}: only letters, digits, "
                       "'_', '+', '-' and '.' are allowed")
    return container_id


def process_start_time(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat, or None if the process is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat[stat.rindex(b")") + 2:].split()
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


class State:
    """The stored record of one container; `status` is filled in from the live system."""

    FIELDS = ("id", "bundle", "rootfs", "pid", "pid_start", "created", "owner",
              "annotations", "oci_version", "cgroup", "systemd_cgroup", "creating")
    # The type each stored field must have: anything else is a corrupt record.
    TYPES = {"id": str, "bundle": str, "rootfs": str, "pid": int, "pid_start": int,
             "created": str, "owner": str, "annotations": dict, "oci_version": str,
             "cgroup": dict, "systemd_cgroup": bool, "creating": bool}

    def __init__(self, id: str, bundle: str, rootfs: str, pid: int = 0, pid_start: int = 0,
                 created: str = "", owner: str = "", annotations: dict[str, str] | None = None,
                 oci_version: str = "", cgroup: Placement | dict[str, Any] | None = None,
                 systemd_cgroup: bool = False, status: str = "creating",
                 creating: bool = False) -> None:
        self.id = id
        self.bundle = bundle
        self.rootfs = rootfs
        self.pid = pid
        self.pid_start = pid_start
        self.created = created
        self.owner = owner
        self.annotations = annotations if annotations is not None else {}
        self.oci_version = oci_version
        self._cgroup = cgroup  # as stored until first used: see the `cgroup` property
        self.systemd_cgroup = systemd_cgroup
        # True in the records create writes before each step (so that `delete --force`
        # finds what a create killed midway left: its cgroup, stage1 or the init).
        self.creating = creating
        self.status = status  # derived by derive_status, never trusted from disk

    @property
    def cgroup(self) -> Placement | None:
        """Where the container's cgroup is (None: it has none of ours).  Read from the
        stored JSON on first use: `state` and `kill` of a created container never look
        at it, and need not import the cgroup code."""
        if isinstance(self._cgroup, dict):
            from ocirun.cgroups.placement import from_json
            self._cgroup = from_json(self._cgroup)
        return self._cgroup

    @cgroup.setter
    def cgroup(self, placement: Placement | None) -> None:
        self._cgroup = placement

    def to_record(self) -> dict[str, Any]:
        cgroup = self._cgroup  # a dict if never looked at since read: stored as it was
        if not isinstance(cgroup, dict):
            from ocirun.cgroups.placement import to_json
            cgroup = to_json(cgroup)
        return {name: cgroup if name == "cgroup" else getattr(self, name)
                for name in self.FIELDS}

    def to_oci(self) -> dict[str, Any]:
        """The state JSON of the runtime spec, plus runc's rootfs/created/owner."""
        return {
            "ociVersion": self.oci_version, "id": self.id, "pid": self.pid if
            self.status != "stopped" else 0, "status": self.status, "bundle": self.bundle,
            "rootfs": self.rootfs, "created": self.created, "owner": self.owner,
            "annotations": self.annotations,
        }

    def hook_data(self) -> dict[str, Any]:
        """The state given to hooks on stdin (annotations always present)."""
        data = self.to_oci()
        data["pid"] = self.pid
        return data

    def hook_state(self) -> bytes:
        return jsonio.dumps(self.hook_data()).encode()


class ContainerDir:
    """One container's directory under the state root."""

    def __init__(self, root: str, container_id: str) -> None:
        self.root = root
        self.id = check_id(container_id)
        self.path = os.path.join(root, container_id)
        self._lock_fd: int | None = None
        self._progress_len = 0  # the longest record write_progress has written

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def exists(self) -> bool:
        return os.path.isdir(self.path)

    def make(self) -> None:
        """Create the directory, refusing an id that is already in use."""
        os.makedirs(self.root, mode=0o711, exist_ok=True)
        try:
            os.mkdir(self.path, 0o711)
        except FileExistsError:
            raise OciError(f"container {self.id!r} already exists") from None

    def __enter__(self) -> "ContainerDir":
        self.lock()
        return self

    def __exit__(self, *exc: object) -> None:
        self.unlock()

    def lock(self) -> None:
        """Take the container's lock (held by create until it is done, by start and
        delete).  A directory removed while we waited (a concurrent delete) means the
        container no longer exists."""
        if self._lock_fd is None:
            try:
                fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except FileNotFoundError:
                raise Gone(f"container {self.id!r} does not exist") from None
            fcntl.flock(fd, fcntl.LOCK_EX)
            if os.fstat(fd).st_nlink == 0:
                os.close(fd)
                raise Gone(f"container {self.id!r} does not exist")
            self._lock_fd = fd

    @property
    def lock_fd(self) -> int:
        return -1 if self._lock_fd is None else self._lock_fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def write_progress(self, state: State) -> None:
        """Record a create's progress in state.json, in place: overwritten without
        truncating (space-padded to the longest record so far, which JSON allows),
        so it costs a pwrite, not a new inode per step.  A create killed in the middle
        of it leaves a garbled record, which `delete --force` copes with."""
        data = jsonio.dumps(state.to_record()).encode()
        written = self._progress_len
        fd = os.open(self.file(STATE_FILE), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            os.pwrite(fd, data.ljust(written), 0)
        finally:
            os.close(fd)
        self._progress_len = max(written, len(data))

    def write(self, state: State) -> None:
        """state.json replaced atomically.  The old record is swapped out and unlinked
        rather than renamed over: on tmpfs (6.x) a file that replaced another by
        rename(2) costs ~5x as much to unlink later (~0.1 ms more for `delete`)."""
        from ocirun import sys as ksys
        data = state.to_record()
        tmp = self.file(f".{STATE_FILE}.{os.getpid()}")
        with open(tmp, "w") as f:
            f.write(jsonio.dumps(data))
        try:
            ksys.rename_exchange(tmp, self.file(STATE_FILE))
        except OSError as e:
            import errno
            if e.errno not in (errno.ENOENT, errno.EINVAL, errno.ENOSYS):
                raise
            os.rename(tmp, self.file(STATE_FILE))  # nothing to swap with, or no support
        else:
            os.unlink(tmp)

    def read(self) -> State | None:
        """The stored record, or None while the container is still being created."""
        try:
            with open(self.file(STATE_FILE)) as f:
                data = jsonio.loads(f.read())
        except FileNotFoundError:
            return None
        except (ValueError, RecursionError) as e:
            raise OciError(f"container {self.id}: corrupt state file: {e}") from None
        if not isinstance(data, dict):
            raise OciError(f"container {self.id}: corrupt state file: not an object")
        data.pop("status", None)
        for key, value in data.items():
            kind = State.TYPES.get(key)
            if kind is None or type(value) is not kind or (kind is int and value < 0):
                raise OciError(f"container {self.id}: corrupt state file: field {key!r}")
        if data.get("id", self.id) != self.id:
            raise OciError(f"container {self.id}: corrupt state file: it names "
                           f"{data['id']!r}")
        return State(**data)

    def remove(self) -> None:
        for name in os.listdir(self.path):
            try:
                os.unlink(self.file(name))
            except FileNotFoundError:
                pass
        os.rmdir(self.path)
        self.unlock()


class Gone(OciError):
    """The container's directory is not there (any more)."""


def open_container(root: str, container_id: str) -> ContainerDir:
    cdir = ContainerDir(root, container_id)
    if not cdir.exists():
        raise OciError(f"container {container_id!r} does not exist")
    return cdir


def derive_status(cdir: ContainerDir, state: State | None) -> str:
    if state is None or state.creating:
        return "creating"
    if not state.pid or process_start_time(state.pid) != state.pid_start:
        return "stopped"
    if os.path.exists(cdir.file(EXEC_FIFO)):
        return "created"
    if state.cgroup:
        from ocirun.cgroups import manager_from_state
        try:
            if manager_from_state(state.cgroup).is_frozen():
                return "paused"
        except (OSError, NotImplementedError):
            pass
    return "running"


def load(cdir: ContainerDir) -> State:
    """The container's state with a live status; a container still being created
    has no record yet and is reported with pid 0."""
    state = cdir.read()
    if state is None:
        state = State(id=cdir.id, bundle="", rootfs="")
    state.status = derive_status(cdir, state if state.pid or state.creating else None)
    return state


def list_containers(root: str) -> Iterator[State]:
    try:
        names = sorted(os.listdir(root))
    except FileNotFoundError:
        return
    for name in names:
        if name.startswith("."):
            continue
        try:
            yield load(ContainerDir(root, name))
        except (OciError, OSError):
            continue


def cgroup_records(root: str, skip_id: str) -> list[Placement]:
    """The "cgroup" records of every other container with a readable state file in
    `root` (for cgroups.manager_for's `others`)."""
    records = []
    try:
        names = os.listdir(root)
    except OSError:
        return records
    for name in names:
        if name.startswith(".") or name == skip_id:
            continue
        try:
            record = ContainerDir(root, name).read()
            placement = record.cgroup if record is not None else None
        except (OciError, OSError, TypeError, ValueError):
            continue  # not a container, being created or deleted, or unreadable
        if placement is not None:
            records.append(placement)
    return records


def rfc3339_now() -> str:
    now = time.time()
    frac = f"{now % 1:.9f}"[1:]
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + frac + "Z"
