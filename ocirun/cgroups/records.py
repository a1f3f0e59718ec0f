"""A v1/v2 file manager rebuilt from its placement (what to_state() stored)."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ocirun.cgroups.base import BaseManager
    from ocirun.cgroups.placement import FsPlacement


def file_manager(placement: FsPlacement) -> BaseManager:
    args = (placement.path, placement.paths, list(placement.created))
    owned = {"adopted": list(placement.adopted), "classified": placement.classified}
    if placement.mode == "unified":
        from ocirun.cgroups.v2 import V2Manager
        return V2Manager(*args, **owned)
    from ocirun.cgroups.v1 import V1Manager
    return V1Manager(*args, hybrid=placement.mode == "hybrid", **owned)
