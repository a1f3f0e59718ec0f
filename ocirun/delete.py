"""`delete`: stop what is left, remove the cgroup, poststop hooks, the state dir;
with --force also after a create that was killed or a record that is unusable."""

from __future__ import annotations

import errno
import os
import time
TYPE_CHECKING = False
if TYPE_CHECKING:
    from ocirun.spec import Hooks

from ocirun.compat import signal
from ocirun import container
from ocirun import log
from ocirun import process as proc
from ocirun import state as st
from ocirun.errors import OciError


def delete(root: str, container_id: str, force: bool = False,
           stored: tuple[Hooks | None, bool] | None = None) -> None:
    cdir = st.ContainerDir(root, container_id)
    if not cdir.exists():
        if force:
            return
        raise OciError(f"container {container_id!r} does not exist")
    try:
        with cdir:
            delete_locked(cdir, force, stored)
    except st.Gone:
        if not force:
            raise  # a concurrent delete won; with --force that is what we wanted


def _delete_unrecorded(cdir: st.ContainerDir, why: str) -> None:
    """`delete --force` without a usable record (create killed before its first write,
    a garbled or emptied state.json): end what is in the cgroup the stored config
    names and remove it, unless another container's record claims that cgroup."""
    log.warn(f"{why}: cleaning up by the cgroup of the stored config.json")
    cgroups_path = container.cgroups_path(cdir)
    from ocirun.cgroups import manager_for
    try:
        cgroup = manager_for(cgroups_path, cdir.id)
    except OciError:
        cgroup = None
    if cgroup is not None:
        from ocirun.cgroups import placement
        leaves = placement.leaves(cgroup.to_state())
        claimed = any(leaves & placement.leaves(other)
                      for other in st.cgroup_records(cdir.root, cdir.id))
        if not claimed and any(os.path.isdir(d) for d in leaves):
            try:
                cgroup.kill_all(signal.SIGKILL)
                cgroup.thaw()
                deadline = time.monotonic() + 5
                while cgroup.pids() and time.monotonic() < deadline:
                    time.sleep(0.01)
            except OciError as e:
                # A create killed between its mkdirs: the leaves come before the fork,
                # so a missing one means no process was ever placed in any of them.
                if e.errno != errno.ENOENT:
                    raise
            for leaf in leaves:
                try:
                    os.rmdir(leaf)
                except OSError:
                    pass
    cdir.remove()


def delete_locked(cdir: st.ContainerDir, force: bool,
                   stored: tuple[Hooks | None, bool] | None = None) -> None:
    container_id = cdir.id
    try:
        state = st.load(cdir)
    except st.Gone:
        raise
    except OciError as e:
        if not force:
            raise
        _delete_unrecorded(cdir, e.message)
        return
    if force:
        try:
            state.cgroup  # read on first use: a damaged cgroup record is a damaged record
        except OciError as e:
            _delete_unrecorded(cdir, f"container {container_id}: {e.message}")
            return
    if force and not state.pid and not state.creating:
        # No record at all, and we hold the lock: its create was killed early.
        _delete_unrecorded(cdir, f"container {container_id}: no state record")
        return
    if state.status in ("running", "paused") and not force:
        raise OciError(f"cannot delete container {container_id} that is not stopped "
                       f"(status {state.status}); use --force")
    if state.status == "creating" and not force:
        raise OciError(f"container {container_id} is being created; use --force")
    hooks, private_pidns = stored or container.stored(cdir) or (None, True)
    if state.status != "stopped" and state.pid or state.cgroup and not private_pidns:
        _stop_all(state, private_pidns)
    if state.cgroup:
        from ocirun.cgroups import manager_from_state
        # Left in place while another container sharing the cgroupsPath still uses it.
        manager_from_state(state.cgroup).destroy()
    if hooks is not None and hooks.poststop and not state.creating:
        from ocirun.hooks import run_hooks_warn
        state.status = "stopped"
        run_hooks_warn(hooks.poststop, state.hook_state(), "poststop", log.warn,
                       state.bundle)
    cdir.remove()


def _stop_all(state: st.State, private_pidns: bool = True) -> None:
    """SIGKILL the container's processes and wait until they are gone.

    With its own pid namespace, killing the init ends every process in it; anything
    else in the cgroup belongs to another container sharing the cgroupsPath and is
    left alone.  Without one, every process of the cgroup is taken (as runc does),
    frozen while signalled, also once the init has exited."""
    alive = bool(state.pid) and st.process_start_time(state.pid) == state.pid_start
    pids = [state.pid] if alive else []
    cgroup = None
    if state.cgroup:
        from ocirun.cgroups import manager_from_state
        cgroup = manager_from_state(state.cgroup)
        if not private_pidns:
            pids = sorted(set(pids) | set(cgroup.pids()))
            cgroup.kill_all(signal.SIGKILL)
    if alive:
        # kill_all took the rest; the pid of one it killed may already be reused.
        proc.signal_exact(state.pid, state.pid_start, signal.SIGKILL)
    if cgroup is not None:
        cgroup.thaw()  # a frozen process cannot act on SIGKILL
        cgroup.thaw_below()  # nor one the container froze itself (the init waits on it)
    for pid in pids:
        if pid == state.pid or st.process_start_time(pid) is not None:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            proc.wait_exit(pid, 10.0)

