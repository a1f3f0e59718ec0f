"""What the v1 (hybrid) and v2 managers share about cgroup2 directories.

Kept apart from v2.py so that a v1/hybrid manager (which also writes the cgroup2 mount
on a hybrid host) does not import the v2 driver just for these helpers.
"""

from __future__ import annotations

import os

from ocirun.cgroups import fsutil
from ocirun.errors import OciError

UNIFIED = ""  # key of the cgroup2 hierarchy in path maps, as in /proc/self/cgroup ("0::/x")
SIGKILL = 9  # the same number on every Linux architecture (no `signal` import needed)


def controllers(directory: str, name: str = "cgroup.controllers") -> set[str]:
    return set((fsutil.read_or_none(os.path.join(directory, name)) or "").split())


def top_created(leaf: str, created: list[str]) -> str | None:
    ours = [d for d in created if leaf == d or leaf.startswith(d.rstrip("/") + "/")]
    return min(ours, key=len) if ours else None


def controllers_of(writes: list) -> set[str]:  # type: ignore[type-arg]  # list[Write]
    return {w.controller for w in writes if w.controller}


def enable_controllers(leaf: str, wanted: set[str], created: list[str],
                       strict: bool = True) -> None:
    """Enable `wanted` on the path down to `leaf`, from the parent of our top new dir.

    Only levels above directories this manager created are touched; for a cgroup we
    merely joined nothing is written (its owner decides what it gets).
    """
    top = top_created(leaf, created)
    if top is None or not wanted:
        return
    chain = [os.path.dirname(top)]
    rel = os.path.relpath(os.path.dirname(leaf), os.path.dirname(top))
    if rel != ".":
        cur = os.path.dirname(top)
        for part in rel.split("/"):
            cur = os.path.join(cur, part)
            chain.append(cur)
    for d in chain:
        need = (wanted & controllers(d)) - controllers(d, "cgroup.subtree_control")
        if not need:
            continue
        path = os.path.join(d, "cgroup.subtree_control")
        try:
            fsutil.write(path, " ".join(f"+{c}" for c in sorted(need)))
        except OciError:
            # One refusal (e.g. a threaded or busy parent) must not cost the others.
            for c in sorted(need):
                try:
                    fsutil.write(path, f"+{c}")
                except OciError as e:
                    if strict:
                        raise OciError(f"cgroups: cannot enable the {c} controller for "
                                       f"{leaf}: {e.message.split(': ')[-1]}") from None
