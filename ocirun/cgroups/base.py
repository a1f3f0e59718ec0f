"""What the v1 and v2 cgroupfs managers share: directories, placement, removal, writes.

A manager knows one directory per mounted hierarchy (`paths`, keyed like
detect.Hierarchy.key) and which of them (and of the levels above) it owns, all kept in
state.json via to_state():

- `created`: the directories it made itself;
- `adopted`: directories another ocirun container of the same state root made (or
  adopted in turn) and this one joined: it inherits the duty to remove them, should
  it be the last container out;
- any other leaf was joined: it existed before any ocirun container made it (an
  engine, a harness, an admin made it) and is never removed.

Ownership of an existing leaf is decided at create, and only there (`_claim`):
fsutil.makedirs says whether the leaf was made, and only a leaf that already existed
costs a look at the other containers' records, so the common fresh create does no
extra work.  This needs the other containers' cgroup records, which the caller
passes as a function (`manager_for(..., others=)`: the managers never read state
files); such a manager is `classified`.  A manager made without one (the systemd driver's file
manager, whose leaves are the unit's cgroup that systemd made for this very
container; records written before this rule) is not: its leaves it did not make are
removed with a plain rmdir once empty, by the last one out.
"""

from __future__ import annotations

import os
import time

from ocirun.cgroups import fsutil
from ocirun.cgroups.common import SIGKILL
from ocirun.errors import OciError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Iterable

    from ocirun.cgroups.devices import DeviceState
    from ocirun.cgroups.placement import FsPlacement, Placement
    from ocirun.cgroups.resources import Write
    from ocirun.spec import Resources

DESTROY_TIMEOUT = 1.0  # seconds to wait for killed processes to leave the cgroup
FREEZE_TIMEOUT = 5.0


class BaseManager:
    mode = ""  # "v1", "hybrid" or "unified"
    self_placing = True  # see placement(); systemd moves the pid itself

    def __init__(self, cgroups_path: str, paths: dict[str, str],
                 created: list[str] | None = None, *, adopted: list[str] | None = None,
                 classified: bool = False,
                 others: Callable[[], Iterable[Placement]] | None = None) -> None:
        self.cgroups_path = cgroups_path  # as resolved from the spec, for humans
        self.paths = dict(paths)
        self.created: list[str] = list(created or [])
        self.adopted: list[str] = list(adopted or [])
        # True: a leaf neither created nor adopted was joined, and is never removed.
        self.classified = classified or others is not None
        # Only create() calls it (to classify existing leaves); not in state.json.
        self.others = others

    # ------------------------------------------------------------ to override
    def version_of(self, controller: str) -> int | None:
        raise NotImplementedError

    def dir_for(self, controller: str) -> str | None:
        """The directory holding `controller`'s files ("" is cgroup2's core files)."""
        raise NotImplementedError

    def _after_mkdir(self, key: str, made: list[str]) -> None:
        """Per-hierarchy fix-ups of freshly made directories (cpuset, controllers)."""

    def _prepare(self, writes: list[Write]) -> None:
        """Make the controllers `writes` need usable (v2: enable them)."""

    def _apply_devices(self, state: DeviceState) -> None:
        raise NotImplementedError

    def freeze(self) -> None:
        raise NotImplementedError

    def thaw(self) -> None:
        raise NotImplementedError

    def is_frozen(self) -> bool:
        raise NotImplementedError

    def frozen_from_above(self) -> bool:
        """v1's freezer.state already reports a freezing parent (is_frozen)."""
        return False

    def stats(self) -> dict[str, Any]:
        raise NotImplementedError

    def oom_kill_count(self) -> int:
        raise NotImplementedError

    @property
    def primary(self) -> str:
        """The directory whose cgroup.procs lists the container's processes."""
        raise NotImplementedError

    # ------------------------------------------------------------------ shared
    def create(self) -> None:
        """Make (or join) the leaf in every hierarchy; on failure nothing made stays.

        With a state root, a leaf that already existed is adopted if another ocirun
        container of the root owns it, else joined (see _claim)."""
        owned_elsewhere: set[str] | None = None
        try:
            for key, directory in self.paths.items():
                made = fsutil.makedirs(directory)
                # Record before fixing up, so a failure below still lets destroy() clean up.
                self.created += made
                if self.others is not None and os.path.normpath(directory) not in made:
                    if owned_elsewhere is None:  # at most one scan per create
                        from ocirun.cgroups.placement import owned_dirs
                        owned_elsewhere = {d for record in self.others()
                                           for d in owned_dirs(record)}
                    self._claim(directory, owned_elsewhere)
                self._after_mkdir(key, made)
        except BaseException:
            try:
                self.destroy()
            except OciError:
                pass
            raise

    def apply(self, resources: Resources | None) -> None:
        """Write the device rules (with runc's defaults) and every limit in `resources`."""
        self.apply_devices(resources)
        self.apply_limits(resources)

    def apply_devices(self, resources: Resources | None) -> None:
        # Imported here: only create and update write limits (not kill, ps, delete...).
        from ocirun.cgroups import devices
        if self.version_of("devices") is not None:
            rules = resources.devices if resources is not None else ()
            self._apply_devices(devices.reduce_rules(devices.with_defaults(rules)))
        elif resources is not None and resources.devices and self.mode != "unified":
            raise OciError("cgroups: linux.resources.devices: the devices cgroup controller "
                           "is not available on this host")

    def apply_limits(self, resources: Resources | None) -> None:
        """apply() but the device rules."""
        from ocirun.cgroups.resources import plan
        self._write(plan(resources, self.version_of))

    def update(self, resources: Resources) -> None:
        """Change live limits: only the fields set in `resources`; devices stay as they are.

        memory.checkBeforeUpdate refuses a limit below the current usage (as runc).
        """
        m = resources.memory
        if m is not None and m.check_before_update and m.limit is not None and m.limit > 0:
            usage = self._memory_usage()
            if usage is not None and m.limit < usage:
                raise OciError(f"cgroups: memory limit {m.limit} is below the current usage "
                               f"{usage}")
        from ocirun.cgroups.resources import plan
        self._write(plan(resources, self.version_of))

    def _memory_usage(self) -> int | None:
        d = self.dir_for("memory")
        if d is None:
            return None
        name = "memory.current" if self.version_of("memory") == 2 else "memory.usage_in_bytes"
        return fsutil.read_int(os.path.join(d, name))

    def placement(self, paths: dict[str, str] | None = None) -> tuple[str | None, tuple[str, ...]]:
        """How a new process can join without anyone writing its pid to cgroup.procs
        (which takes the cgroup threadgroup lock for writing: an RCU grace period):
        the cgroup2 directory to be born in (clone3 CLONE_INTO_CGROUP), and the v1
        `tasks` files a single-threaded process writes "0" to itself."""
        born_in = None
        tasks = []
        for key, directory in (paths or self.paths).items():
            if key == "":
                born_in = directory
            else:
                tasks.append(os.path.join(directory, "tasks"))
        return born_in, tuple(tasks)

    def placed(self, pid: int, paths: dict[str, str] | None = None) -> bool:
        """Whether /proc/<pid>/cgroup shows pid in every directory of ours."""
        from ocirun.cgroups import detect
        try:
            seen = detect.proc_cgroups(pid)
        except (OSError, OciError):  # the process is gone
            return False
        for key, directory in (paths or self.paths).items():
            path = seen.get(key)
            directory = os.path.normpath(directory)
            if path is None:
                return False
            if path == "/":  # the hierarchy's root: the directory must be its mount
                if not os.path.ismount(directory):
                    return False
            elif not directory.endswith(os.path.normpath(path)):
                return False
        return True

    def add_process(self, pid: int, paths: dict[str, str] | None = None) -> None:
        """Move `pid` into the container's cgroup (or into `paths`, see sub_paths)."""
        for directory in (paths or self.paths).values():
            fsutil.write_pid(directory, pid)

    def sub_paths(self, wanted: tuple[str, ...]) -> dict[str, str]:
        """The directories for `exec --cgroup`: each of `wanted` is runc's
        "[controller[,controller]:]path", an existing cgroup beneath the container's,
        in the hierarchies of those controllers (all of them without a controller;
        controllers can be named on cgroup v1 only)."""
        paths = dict(self.paths)
        for item in wanted:
            controllers, _, sub = item.partition(":") if ":" in item else ("", "", item)
            if ":" in sub:
                raise OciError(f"exec --cgroup {item!r}: one \"controller:\" prefix at most")
            if not controllers and len(wanted) > 1:
                raise OciError(f"exec --cgroup {item!r}: with several --cgroup, each "
                               "needs its controller: prefix")
            clean = os.path.normpath("/" + sub).lstrip("/")
            if not clean:
                raise OciError(f"exec --cgroup {item!r}: no sub-cgroup named")
            keys = list(self.paths)
            if controllers:
                if self.mode == "unified":
                    raise OciError(f"exec --cgroup {item!r}: controllers can be named on "
                                   "cgroup v1 only")
                names = set(controllers.split(","))
                keys = [k for k in self.paths if names & set(k.split(","))]
                if not keys:
                    raise OciError(f"exec --cgroup {item!r}: the container has no cgroup "
                                   f"of controller {controllers}")
            for key in keys:
                directory = os.path.join(self.paths[key], clean)
                if not os.path.isdir(directory):
                    raise OciError(f"exec --cgroup {item!r}: {directory} does not exist "
                                   "(a sub-cgroup must be made first)")
                paths[key] = directory
        return paths

    def pids(self) -> list[int]:
        return fsutil.procs(self.primary)

    def kill_all(self, signum: int = SIGKILL) -> None:
        """Signal every process in the cgroup, frozen meanwhile so none can fork away."""
        can_freeze = self.mode == "unified" or self.dir_for("freezer") is not None
        was_frozen = can_freeze and self.is_frozen()
        if can_freeze and not was_frozen:
            try:
                self.freeze()
            except OciError:
                can_freeze = False
        try:
            for pid in self.pids():
                try:
                    os.kill(pid, signum)
                except ProcessLookupError:
                    pass
        finally:
            if can_freeze and not was_frozen:
                self.thaw()
            if signum == SIGKILL:
                self.thaw_below()

    def thaw_below(self) -> None:
        """Thaw what the container froze below its own cgroup (v1 only: there a frozen
        task cannot act on SIGKILL, and thawing ours leaves a child frozen by itself
        frozen, so delete would wait on it forever)."""

    def _claim(self, leaf: str, owned_elsewhere: set[str]) -> None:
        """Adopt an existing leaf (and levels above it) another container owns.

        Another container of the same state root that lists the leaf, or a level
        above it, as created or adopted made it for ocirun: this container takes over
        the duty to remove them should it be the last one out, so a cgroup shared by
        containers goes whichever of them is deleted last.  A leaf no record claims
        existed before any ocirun container made it: joined, never removed.  A
        container still being created has no record yet, so a joiner racing its
        creator's create takes the leaf as joined (a leak at worst, never the removal
        of a cgroup that is not ocirun's).
        """
        ours = set(self.created) | set(self.adopted)
        if leaf in ours:
            return  # create() again (idempotent): still ours
        claimed = [d for d in owned_elsewhere
                   if d == leaf or leaf.startswith(d.rstrip("/") + "/")]
        for d in sorted(claimed, key=len):
            if d not in ours:
                ours.add(d)
                self.adopted.append(d)

    def destroy(self) -> None:
        """Remove what the container owns of its cgroup, unless another container
        still uses it.

        Processes still in the cgroup that are not dying (zombie, exiting or with a
        SIGKILL pending) belong to another container sharing this cgroupsPath: then
        nothing is removed, and the last container out removes it.  Otherwise the
        created and adopted leaves go with anything below them (retrying while
        killed processes leave), created and adopted directories above them only if
        empty (another container may have its own leaf there).  A joined leaf (one
        that existed before any ocirun container made it) stays.  An unclassified
        manager (no state root at create) removes its other leaves with a plain
        rmdir if empty, never recursively.  Leaves that are all ours and empty, the
        usual end of a stopped container, go by rmdir alone (_rmdir_empty_leaves).
        """
        leaves = set(self.paths.values())
        owned = list(dict.fromkeys(self.created + self.adopted))
        errors: list[str] = []
        if not (leaves <= set(owned) and self._rmdir_empty_leaves()):
            deadline = time.monotonic() + DESTROY_TIMEOUT
            if owned:
                try:
                    if self.is_frozen():
                        self.thaw()  # frozen processes cannot exit
                    self.thaw_below()
                except OciError:
                    pass
            users = self._live_users(deadline)
            if users:
                from ocirun import log
                log.debug(f"cgroups: {self.primary} is still used by pids "
                          f"{', '.join(map(str, users[:10]))}: left for them to remove")
                return
            if not self.classified:
                for directory in sorted(leaves - set(owned), key=len, reverse=True):
                    try:
                        os.rmdir(directory)  # now empty: the last one out removes it
                    except OSError:
                        pass
            for leaf in leaves.intersection(owned):
                try:
                    fsutil.rmdir_tree(leaf, deadline)
                except OciError as e:
                    errors.append(e.message)
        # The levels above the leaves (they are all below their leaves' parents).
        above = [d for d in owned if d not in leaves]
        for directory in sorted(above, key=lambda d: d.count("/"), reverse=True):
            try:
                os.rmdir(directory)
            except OSError:
                pass  # gone, or it holds someone else's cgroup: not ours to remove
        self.created = [d for d in self.created if os.path.isdir(d)]
        self.adopted = [d for d in self.adopted if os.path.isdir(d)]
        if errors:
            raise OciError(errors[0])

    def _rmdir_empty_leaves(self) -> bool:
        """rmdir of every leaf, which the kernel refuses while a process or a child
        cgroup is inside: no listing, thawing or walking for an empty cgroup.  The
        primary leaf (the one that lists the container's processes) first: once it
        is gone no container has a process there.  False at the first leaf that
        stays, for destroy() to go on from there."""
        primary = self.primary
        for leaf in sorted(set(self.paths.values()), key=lambda d: d != primary):
            try:
                os.rmdir(leaf)
            except FileNotFoundError:
                pass
            except OSError:
                return False
        return True

    def _live_users(self, deadline: float) -> list[int]:
        """Pids in the cgroup that are not on their way out; waits for dying ones.

        A process seen live twice, a moment apart, is taken as live: a SIGKILL
        dequeued just before the exit is flagged leaves only a tiny window.
        """
        delay = 0.005
        seen_live: set[int] = set()
        while True:
            pids = self._all_pids()
            live = [p for p in pids if not fsutil.dying(p)]
            if not live:
                seen_live.clear()
                if not pids or time.monotonic() >= deadline:
                    return []  # rmdir_tree reports what is still there
            elif set(live) <= seen_live or time.monotonic() >= deadline:
                return live
            else:
                seen_live = set(live)
                delay = 0.02
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    def _all_pids(self) -> list[int]:
        pids: list[int] = []
        for directory in self.paths.values():
            try:
                pids += [p for p in fsutil.procs(directory) if p not in pids]
            except OciError:
                pass  # already gone
        return pids

    def to_state(self) -> FsPlacement:
        from ocirun.cgroups.placement import FsPlacement
        return FsPlacement(mode=self.mode, path=self.cgroups_path, paths=dict(self.paths),
                           created=tuple(self.created), adopted=tuple(self.adopted),
                           classified=self.classified)

    # ------------------------------------------------------------------ writes
    def _write(self, writes: list[Write]) -> None:
        self._prepare(writes)
        i = 0
        while i < len(writes):
            w = writes[i]
            if w.swap_next and i + 1 < len(writes):
                # Pairs such as limit/memsw must be written in the order the kernel
                # accepts, which depends on the current values: try one, then the other.
                try:
                    self._do(w)
                    self._do(writes[i + 1])
                except OciError:
                    self._do(writes[i + 1])
                    self._do(w)
                i += 2
                continue
            self._do(w)
            i += 1

    def _do(self, w: Write) -> None:
        directory = self.dir_for(w.controller)
        if directory is None:
            raise OciError(f"cgroups: {w.what}: the {w.controller} cgroup controller is not "
                           "available on this host")
        for name in w.files:
            path = os.path.join(directory, name)
            if os.path.exists(path):
                break
        else:
            if w.optional:
                return
            raise OciError(f"cgroups: {w.what}: not supported on this host "
                           f"(no {w.file} in {directory})")
        if isinstance(w.value, dict):
            value = w.value[name]
        elif callable(w.value):
            value = w.value(fsutil.read_or_none(path))
        else:
            value = w.value
        fsutil.write(path, value, w.what)
