"""features(): the "linux.seccomp" object of the runtime-spec features document."""

from __future__ import annotations

from ocirun.spec import SECCOMP_ACTIONS, SECCOMP_ARCHES, SECCOMP_FLAGS, SECCOMP_OPS
from ocirun.sys import seccomp as ksys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def features() -> dict[str, Any]:
    """enabled, actions, operators, archs, knownFlags, supportedFlags.

    actions: those the kernel implements (SECCOMP_GET_ACTION_AVAIL); archs: those this
    libseccomp can build filters for; supportedFlags: the known flags the kernel accepts.
    """
    from ocirun.seccomp.cache import FLAG_BITS
    from ocirun.seccomp.compiler import action_value

    actions = [a for a in SECCOMP_ACTIONS if ksys.action_available(action_value(a, None, ""))]
    return {
        "enabled": True,
        "actions": sorted(actions),
        "operators": sorted(SECCOMP_OPS),
        "archs": sorted(_libseccomp_archs()),
        "knownFlags": list(SECCOMP_FLAGS),
        "supportedFlags": [f for f in SECCOMP_FLAGS if ksys.filter_flag_supported(FLAG_BITS[f])],
    }


def _libseccomp_archs() -> list[str]:
    try:
        import pyseccomp as sc
    except (ImportError, RuntimeError):  # no libseccomp: nothing can be compiled
        return []
    from ocirun.seccomp.compiler import ARCH_TOKENS

    out = []
    for name in SECCOMP_ARCHES:
        # A filter holds one endianness, so probe each arch in a filter of its own.
        filt = sc.SyscallFilter(sc.ALLOW)
        filt.remove_arch(sc.system_arch())
        try:
            filt.add_arch(ARCH_TOKENS[name])
        except OSError:
            continue  # unknown to this libseccomp
        out.append(name)
    return out
