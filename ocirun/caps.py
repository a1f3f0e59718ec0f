"""Process credentials: bounding set, uid/gid/groups, the other capability sets, and
no_new_privs — in the order the kernel requires."""

from __future__ import annotations


from ocirun import sys as ksys
from ocirun.errors import OciError
from ocirun.spec import CAPABILITIES, Capabilities, Process, Spec


_last: list[int] = []  # the kernel's, read once per process (and inherited by a fork)


def _last_cap() -> int:
    if not _last:
        try:
            with open("/proc/sys/kernel/cap_last_cap") as f:
                _last.append(min(int(f.read()), len(CAPABILITIES) - 1))
        except OSError:
            _last.append(len(CAPABILITIES) - 1)
    return _last[0]


def _numbers(names: tuple[str, ...], last: int) -> set[int]:
    return {n for n in (CAPABILITIES.index(name) for name in names) if n <= last}


_SETS = ("bounding", "effective", "permitted", "inheritable", "ambient")


def _held_mask(status_path: str = "/proc/self/status") -> int:
    """The capabilities this process can hand on: in its bounding set and permitted."""
    fields: dict[str, int] = {}
    with open(status_path) as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("CapBnd", "CapPrm"):
                fields[key] = int(value.strip(), 16)
    return fields.get("CapBnd", 0) & fields.get("CapPrm", 0)


def keep_grantable(process: Process, in_userns: bool) -> Process:
    """`process` without the capabilities that cannot be granted, each one logged as a
    warning (config.md: "MUST be logged as a warning"; "SHOULD NOT fail").

    Run this in the runtime (parent) before forking: there stderr and --log are the
    runtime's own, while the init's stderr is already the container's.  Without a user
    namespace the init can only keep what the runtime holds (CapBnd & CapPrm of
    /proc/self/status); in a new or joined user namespace the kernel grants the full set
    there, so only capabilities this kernel does not know are left out."""
    from ocirun import log

    caps = process.capabilities
    if caps is None:
        return process
    for json_path, name in caps.unknown:
        log.warn(f"{json_path}: unknown capability {name!r}: ignored")
    if caps.unknown:
        caps = caps.replace(unknown=())
        process = process.replace(capabilities=caps)  # type: ignore[assignment]
    last = _last_cap()
    every = (1 << (last + 1)) - 1
    held = every if in_userns else _held_mask() & every
    missing: dict[str, list[str]] = {}
    for key in _SETS:
        for name in getattr(caps, key):
            if not held >> CAPABILITIES.index(name) & 1:
                missing.setdefault(name, []).append(key)
    if not missing:
        return process
    for name, sets in missing.items():
        why = ("this kernel does not know it" if CAPABILITIES.index(name) > last
               else "the runtime does not hold it")
        log.warn(f"process.capabilities: {name} ({', '.join(sets)}) cannot be granted: "
                 f"{why}; the process runs without it")
    kept = caps.replace(**{key: tuple(n for n in getattr(caps, key) if n not in missing)
                           for key in _SETS})
    return process.replace(capabilities=kept)  # type: ignore[return-value]


def keep_grantable_spec(spec: Spec) -> Spec:
    """keep_grantable for the container's own process (create / run)."""
    if spec.process is None:
        return spec
    process = keep_grantable(spec.process, spec.linux.namespace("user") is not None)
    return spec if process is spec.process else \
        spec.replace(process=process)  # type: ignore[return-value]


def drop_bounding(caps: Capabilities) -> None:
    last = _last_cap()
    keep = _numbers(caps.bounding, last)
    for cap in range(last + 1):
        if cap not in keep:
            ksys.prctl(ksys.PR_CAPBSET_DROP, cap)


def set_user(process: Process, setgroups_allowed: bool) -> None:
    user = process.user
    if setgroups_allowed:
        ksys.setgroups(list(user.additional_gids))
    ksys.setresgid(user.gid)  # the group first: without uid 0 it could not change
    ksys.setresuid(user.uid)


def _check_sets(eff: set[int], perm: set[int], inh: set[int], bounding: set[int]) -> None:
    """What capset(2) would refuse with a bare EPERM, named instead."""
    for what, extra, within in (("effective", eff - perm, "permitted"),
                                ("inheritable", inh - bounding, "bounding")):
        if extra:
            names = ", ".join(CAPABILITIES[n] for n in sorted(extra))
            raise OciError(f"process.capabilities.{what}: {names} not in {within}: the "
                           "kernel cannot grant them")


def apply(process: Process, setgroups_allowed: bool = True) -> None:
    """Switch to the process user keeping exactly the configured capabilities.

    Nothing is granted by default: a process without `capabilities` gets five empty
    sets (as runc), so neither the runtime's own capabilities nor the caller's
    inheritable and ambient sets reach the container."""
    caps = process.capabilities if process.capabilities is not None else Capabilities()
    drop_bounding(caps)
    ksys.prctl(ksys.PR_SET_KEEPCAPS, 1)
    set_user(process, setgroups_allowed)
    last = _last_cap()
    every = set(range(last + 1))
    eff, perm, inh = (_numbers(s, last) for s in (caps.effective, caps.permitted,
                                                    caps.inheritable))
    _check_sets(eff, perm, inh, _numbers(caps.bounding, last))
    ksys.set_capabilities(eff, perm, inh, every)
    ksys.prctl(ksys.PR_CAP_AMBIENT, ksys.PR_CAP_AMBIENT_CLEAR_ALL)
    for cap in _numbers(caps.ambient, last) & perm & inh:
        # The kernel only raises ambient caps that are permitted and inheritable;
        # like runc, the others are left out rather than failing the container.
        ksys.prctl(ksys.PR_CAP_AMBIENT, ksys.PR_CAP_AMBIENT_RAISE, cap)
    ksys.prctl(ksys.PR_SET_KEEPCAPS, 0)
    if process.no_new_privileges:
        ksys.prctl(ksys.PR_SET_NO_NEW_PRIVS, 1)
