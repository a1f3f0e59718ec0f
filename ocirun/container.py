"""What later commands read back of a container's stored config: its hooks and
whether its pid namespace is its own."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ocirun.spec import Hooks, Spec

from ocirun import jsonio
from ocirun import state as st
from ocirun.errors import OciError


def stored(cdir: st.ContainerDir) -> tuple[Hooks | None, bool] | None:
    """The hooks (None: there are none) and whether the pid namespace is private,
    from the stored config.  Without hooks the config model is not even imported
    (~1 ms of every start and delete): create checked the config in full."""
    try:
        with open(cdir.file(st.CONFIG_FILE), "rb") as f:
            data = jsonio.loads(f.read())
        if isinstance(data, dict) and not data.get("hooks"):
            linux = data.get("linux")
            namespaces = linux.get("namespaces") if isinstance(linux, dict) else None
            return None, any(isinstance(ns, dict) and ns.get("type") == "pid" and
                             not ns.get("path") for ns in namespaces or ())
        from ocirun.spec import parse_stored
        return parse_stored(data)
    except (OSError, ValueError, TypeError, AttributeError, OciError):
        return None


def known(spec: Spec) -> tuple[Hooks, bool]:
    """What `stored` reads back, from the spec in hand."""
    pid_ns = spec.linux.namespace("pid")
    return spec.hooks, pid_ns is not None and pid_ns.path is None

