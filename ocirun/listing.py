"""`list`: the containers of the state root, as a table, JSON (compact, as runc) or
their ids."""

from __future__ import annotations

from ocirun import jsonio
from ocirun.state import list_containers


def list_(root: str, fmt: str, quiet: bool) -> None:
    """Print the containers; ValueError for an unknown format."""
    states = list(list_containers(root))
    if quiet:  # as runc: -q wins over --format
        for s in states:
            print(s.id)
    elif fmt not in ("table", "json"):
        raise ValueError(f"invalid --format {fmt!r} (table or json)")
    elif fmt == "json":
        print(jsonio.dumps([s.to_oci() for s in states], compact=True))
    else:
        rows = [("ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER")]
        rows += [(s.id, str(s.to_oci()["pid"]), s.status, s.bundle, s.created,
                  s.owner or "root") for s in states]
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for r in rows:
            print("   ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
