"""`kill`: a signal to the init, or with --all to every process of the cgroup."""

from __future__ import annotations

from ocirun import process as proc
from ocirun import state as st
from ocirun.errors import OciError


def kill(root: str, container_id: str, sig: int, all_processes: bool = False) -> None:
    cdir = st.open_container(root, container_id)
    state = st.load(cdir)
    # As runc, --all still reaches what is left in the cgroup of a stopped container
    # (its processes outlive the init when it has no pid namespace of its own).
    if state.status == "creating" or state.status == "stopped" and not (
            all_processes and state.cgroup):
        # "container not running" is what containerd's shim matches to treat a kill of
        # an exited container as "process already finished".
        raise OciError(f"container not running: {container_id} is {state.status}")
    if all_processes and state.cgroup:
        from ocirun.cgroups import manager_from_state
        # Every process of the cgroup, frozen meanwhile so that none forks away.
        manager_from_state(state.cgroup).kill_all(sig)
        return
    # The init may exit, and its pid be taken, after its status was derived.
    proc.signal_exact(state.pid, state.pid_start, sig)

