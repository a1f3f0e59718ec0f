"""Process credentials: bounding set, uid/gid/groups, the other capability sets, and
no_new_privs — in the order the kernel requires."""

from __future__ import annotations

import os

from ocirun import sys as ksys
from ocirun.spec import CAPABILITIES, Capabilities, Process

_PR_CAPBSET_DROP = 24
_PR_SET_KEEPCAPS = 8
_PR_SET_NO_NEW_PRIVS = 38


def _last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return min(int(f.read()), len(CAPABILITIES) - 1)
    except OSError:
        return len(CAPABILITIES) - 1


def _numbers(names: tuple[str, ...], last: int) -> set[int]:
    return {n for n in (CAPABILITIES.index(name) for name in names) if n <= last}


def drop_bounding(caps: Capabilities) -> None:
    last = _last_cap()
    keep = _numbers(caps.bounding, last)
    for cap in range(last + 1):
        if cap not in keep:
            ksys.prctl(_PR_CAPBSET_DROP, cap)


def set_user(process: Process, setgroups_allowed: bool) -> None:
    user = process.user
    if setgroups_allowed:
        os.setgroups(list(user.additional_gids))
    os.setresgid(user.gid, user.gid, user.gid)
    os.setresuid(user.uid, user.uid, user.uid)


def apply(process: Process, setgroups_allowed: bool = True) -> None:
    """Switch to the process user keeping exactly the configured capabilities."""
    import _prctl  # python-prctl's C module: the set-all-three capset in one call

    caps = process.capabilities
    if caps is not None:
        drop_bounding(caps)
        _prctl.prctl(_PR_SET_KEEPCAPS, 1)
    set_user(process, setgroups_allowed)
    if caps is not None:
        last = _last_cap()
        every = set(range(last + 1))
        eff, perm, inh = (_numbers(s, last) for s in (caps.effective, caps.permitted,
                                                        caps.inheritable))
        _prctl.set_caps(list(eff), list(perm), list(inh),
                        list(every - eff), list(every - perm), list(every - inh))
        ksys.prctl(ksys.PR_CAP_AMBIENT, ksys.PR_CAP_AMBIENT_CLEAR_ALL)
        for cap in _numbers(caps.ambient, last) & perm & inh:
            # The kernel only raises ambient caps that are permitted and inheritable;
            # like runc, the others are left out rather than failing the container.
            ksys.prctl(ksys.PR_CAP_AMBIENT, ksys.PR_CAP_AMBIENT_RAISE, cap)
        _prctl.prctl(_PR_SET_KEEPCAPS, 0)
    if process.no_new_privileges:
        _prctl.prctl(_PR_SET_NO_NEW_PRIVS, 1)
