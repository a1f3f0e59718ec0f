"""A v1/v2 file manager rebuilt from its placement (what to_state() stored)."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ocirun.cgroups.base import BaseManager
    from ocirun.cgroups.placement import FsPlacement


def file_manager(placement: FsPlacement) -> BaseManager:
    if placement.mode == "unified":
        from ocirun.cgroups.v2 import V2Manager
        return V2Manager(placement.path, placement.paths, list(placement.created),
                         adopted=list(placement.adopted), classified=placement.classified)
    from ocirun.cgroups.v1 import V1Manager
    return V1Manager(placement.path, placement.paths, list(placement.created),
                     hybrid=placement.mode == "hybrid", adopted=list(placement.adopted),
                     classified=placement.classified)
