"""Device access rules: runc's defaults, and the rule list reduced to a final state.

The spec's rules apply in order, later ones winning; runc appends its default allow
list after them.  Rather than replaying every rule into the kernel (which leaves
moments where everything is denied, and differs from the ordered semantics when rules
overlap), the list is first reduced to (default policy, exceptions): a wildcard rule
resets the policy, any other rule adds an exception or cancels part of one.  v1 writes
that state to devices.deny/devices.allow; v2 compiles it into a BPF program.
"""

from __future__ import annotations

from ocirun.record import Record

from ocirun.errors import OciError
from ocirun.spec import DeviceRule


def _allow(type_: str, major: int | None, minor: int | None, access: str) -> DeviceRule:
    return DeviceRule(allow=True, type=type_, major=major, minor=minor, access=access)


# runc's specconv.AllowedDevices, appended after the spec's rules (engines rely on them).
DEFAULT_RULES: tuple[DeviceRule, ...] = (
    _allow("c", None, None, "m"),  # mknod of any char device
    _allow("b", None, None, "m"),  # mknod of any block device
    _allow("c", 1, 3, "rwm"),  # /dev/null
    _allow("c", 1, 8, "rwm"),  # /dev/random
    _allow("c", 1, 7, "rwm"),  # /dev/full
    _allow("c", 5, 0, "rwm"),  # /dev/tty
    _allow("c", 1, 5, "rwm"),  # /dev/zero
    _allow("c", 1, 9, "rwm"),  # /dev/urandom
    _allow("c", 136, None, "rwm"),  # /dev/pts/*
    _allow("c", 5, 2, "rwm"),  # /dev/ptmx
    _allow("c", 10, 200, "rwm"),  # /dev/net/tun (kept by runc for compatibility)
)

_ORDER = "rwm"


class Exception_(Record):
    type: str  # "b" or "c"
    major: int | None  # None: any
    minor: int | None
    access: str  # non-empty subset of "rwm", canonical order

    def v1_line(self) -> str:
        def num(n: int | None) -> str:
            return "*" if n is None else str(n)
        return f"{self.type} {num(self.major)}:{num(self.minor)} {self.access}"


class DeviceState(Record):
    default_allow: bool
    exceptions: tuple[Exception_, ...]  # each grants the opposite of the default


def _canon(access: str) -> str:
    return "".join(c for c in _ORDER if c in access)


def reduce_rules(rules: tuple[DeviceRule, ...] | list[DeviceRule]) -> DeviceState:
    """Replay `rules` in order (starting from allow-all, as the kernel does)."""
    default_allow = True
    exc: dict[tuple[str, int | None, int | None], str] = {}
    for i, r in enumerate(rules):
        access = _canon(r.access or "rwm")
        if not access:
            raise OciError(f"cgroups: linux.resources.devices[{i}]: empty access")
        types = ("b", "c") if r.type in (None, "a") else (r.type,)
        wildcard = r.type in (None, "a") and r.major is None and r.minor is None
        if wildcard and access == "rwm":
            default_allow, exc = r.allow, {}
            continue
        for t in types:
            key = (t, r.major, r.minor)
            if r.allow == default_allow:
                # Same polarity as the default: cancel those bits of the exception.
                left = _canon(set(exc.get(key, "")) - set(access))
                if left:
                    exc[key] = left
                else:
                    exc.pop(key, None)
            else:
                exc[key] = _canon(set(exc.get(key, "")) | set(access))
    return DeviceState(default_allow, tuple(Exception_(t, ma, mi, a)
                                            for (t, ma, mi), a in exc.items()))


def with_defaults(rules: tuple[DeviceRule, ...]) -> tuple[DeviceRule, ...]:
    return tuple(rules) + DEFAULT_RULES


def v1_writes(state: DeviceState) -> list[tuple[str, str]]:
    """(file, line) pairs for a v1 devices cgroup: reset the policy, then exceptions."""
    if state.default_allow:
        out = [("devices.allow", "a")]
        out += [("devices.deny", e.v1_line()) for e in state.exceptions]
    else:
        out = [("devices.deny", "a")]
        out += [("devices.allow", e.v1_line()) for e in state.exceptions]
    return out


def allows(state: DeviceState, type_: str, major: int, minor: int, access: str) -> bool:
    """What the reduced state decides for one access (the BPF program's semantics)."""
    for e in state.exceptions:
        if e.type != type_ or e.major not in (None, major) or e.minor not in (None, minor):
            continue
        # Like the kernel: a grant must cover the whole request; a denial hits any overlap.
        if state.default_allow and set(access) & set(e.access):
            return False
        if not state.default_allow and set(access) <= set(e.access):
            return True
    return state.default_allow
