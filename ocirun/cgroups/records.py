"""A v1/v2 file manager rebuilt from its state.json record (to_state())."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ocirun.cgroups.base import BaseManager

from ocirun.errors import OciError


def file_manager_from_state(data: dict[str, Any]) -> BaseManager:
    try:
        mode, path = data["mode"], data["path"]
        paths = {str(k): str(v) for k, v in data["paths"].items()}
        created = [str(d) for d in data.get("created", [])]
        adopted = [str(d) for d in data.get("adopted", [])]
        classified = bool(data.get("classified", False))  # absent: an older record
    except (KeyError, TypeError, AttributeError) as e:
        raise OciError(f"cgroups: state.json has no usable cgroup record ({e})") from None
    if mode == "unified":
        from ocirun.cgroups.v2 import V2Manager
        return V2Manager(path, paths, created, adopted=adopted, classified=classified)
    if mode in ("v1", "hybrid"):
        from ocirun.cgroups.v1 import V1Manager
        return V1Manager(path, paths, created, hybrid=mode == "hybrid", adopted=adopted,
                         classified=classified)
    raise OciError(f"cgroups: state.json: unknown cgroup mode {mode!r}")
