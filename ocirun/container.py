"""The container record: the config as `create` parsed and settled it (a typed Spec,
capabilities already cut to what can be granted), stored once in the state dir and
read back by every later command instead of config.json.

start and delete need only the hooks and whether the pid namespace is the
container's own: they decode just those parts (stored).  exec reads the whole record
(read_spec).  A container created by an ocirun before the record existed has its
config.json copy instead, which is parsed as before.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ocirun.spec import Hooks, Spec

from ocirun import jsonio
from ocirun import state as st
from ocirun.errors import OciError
from ocirun.record import dump, load

RECORD_FILE = "container.json"
LEGACY_CONFIG_FILE = "config.json"  # what older ocirun kept instead


def write(cdir: st.ContainerDir, spec: Spec) -> None:
    with open(cdir.file(RECORD_FILE), "wb") as f:
        f.write(jsonio.dumps(dump(spec), compact=True).encode())


def read_raw(cdir: st.ContainerDir) -> tuple[Any, bool]:
    """The stored data and whether it is a record (else a legacy config.json)."""
    try:
        with open(cdir.file(RECORD_FILE), "rb") as f:
            return jsonio.loads(f.read()), True
    except FileNotFoundError:
        with open(cdir.file(LEGACY_CONFIG_FILE), "rb") as f:
            return jsonio.loads(f.read()), False


def read_spec(cdir: st.ContainerDir, bundle: str) -> Spec:
    """The whole record (exec)."""
    from ocirun.spec import Spec, parse_spec
    data, is_record = read_raw(cdir)
    if not is_record:
        return parse_spec(data, bundle)
    try:
        return load(Spec, data)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ValueError(f"{RECORD_FILE}: {e}") from None


def stored(cdir: st.ContainerDir) -> tuple[Hooks | None, bool] | None:
    """The hooks (None: there are none) and whether the pid namespace is private.
    Without hooks the config model is not even imported (~1 ms of every start and
    delete).  None when the record cannot be read."""
    try:
        data, is_record = read_raw(cdir)
        if not is_record:
            return _from_legacy(data)
        if not data.get("hooks"):
            return None, _private_pidns(data)
        from ocirun.spec import Hooks
        return load(Hooks, data["hooks"]), _private_pidns(data)
    except (OSError, ValueError, TypeError, AttributeError, KeyError, OciError):
        return None


def _from_legacy(data: Any) -> tuple[Hooks | None, bool]:
    if isinstance(data, dict) and not data.get("hooks"):
        return None, _private_pidns(data)
    from ocirun.spec import parse_stored
    return parse_stored(data)


def _private_pidns(data: Any) -> bool:
    """A new pid namespace among linux.namespaces (the same keys in a record and in a
    config.json)."""
    linux = data.get("linux") if isinstance(data, dict) else None
    namespaces = linux.get("namespaces") if isinstance(linux, dict) else None
    return any(isinstance(ns, dict) and ns.get("type") == "pid" and not ns.get("path")
               for ns in namespaces or ())


def cgroups_path(cdir: st.ContainerDir) -> str | None:
    """linux.cgroupsPath as stored (delete --force without a state record)."""
    try:
        data, is_record = read_raw(cdir)
        linux = data.get("linux", {})
        value = linux.get("cgroups_path" if is_record else "cgroupsPath")
    except (OSError, ValueError, RecursionError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def known(spec: Spec) -> tuple[Hooks, bool]:
    """What `stored` reads back, from the spec in hand."""
    pid_ns = spec.linux.namespace("pid")
    return spec.hooks, pid_ns is not None and pid_ns.path is None
