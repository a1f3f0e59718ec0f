"""`pause` and `resume`: freeze and thaw the container's cgroup."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

from ocirun import state as st
from ocirun.errors import OciError


def cgroup_of(root: str, container_id: str, allowed: tuple[str, ...], verb: str) -> Any:
    """The cgroup manager of a container whose status is one of `allowed`."""
    from ocirun.cgroups import manager_from_state
    s = st.load(st.open_container(root, container_id))
    if s.status not in allowed:
        raise OciError(f"cannot {verb} container {container_id}: it is {s.status}")
    if not s.cgroup:
        raise OciError(f"container {container_id} has no cgroup")
    return manager_from_state(s.cgroup)


def pause(root: str, container_id: str) -> None:
    cgroup_of(root, container_id, ("running", "created"), "pause").freeze()


def resume(root: str, container_id: str) -> None:
    cgroup_of(root, container_id, ("paused",), "resume").thaw()
