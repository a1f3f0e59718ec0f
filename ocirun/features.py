"""`ocirun features` (the runtime-spec features document) and `ocirun --version`."""

from __future__ import annotations

import os
import sys
from typing import Any

from ocirun import OCI_VERSION, __version__
from ocirun.sys.seccomp import libseccomp_version

OCI_VERSION_MIN = "1.0.0"
HOOKS = ["prestart", "createRuntime", "createContainer", "startContainer", "poststart",
         "poststop"]


def version_text() -> str:
    lines = [f"ocirun version {__version__}", f"spec: {OCI_VERSION}",
             f"python: {sys.version.split()[0]}"]
    seccomp = libseccomp_version()
    if seccomp:
        lines.append(f"libseccomp: {seccomp}")
    return "\n".join(lines)


def _cgroup() -> dict[str, Any]:
    # --systemd-cgroup starts transient scopes on the system bus (cgroups/systemd.py);
    # the user's own systemd (rootless) is not spoken to.
    return {"v1": True, "v2": True, "systemd": True, "systemdUser": False, "rdma": True}


def _seccomp() -> dict[str, Any]:
    try:
        from ocirun.seccomp import features
        return features()
    except Exception:  # noqa: BLE001 - no libseccomp: report seccomp as unavailable
        return {"enabled": False}


def features() -> dict[str, Any]:
    from ocirun.mountopts import known_options
    from ocirun.sys import NAMESPACE_FILES
    from ocirun.spec import CAPABILITIES, NAMESPACE_TYPES

    annotations = {"org.opencontainers.ocirun.version": __version__}
    seccomp_version = libseccomp_version()
    if seccomp_version:
        annotations["io.github.seccomp.libseccomp.version"] = seccomp_version
    return {
        "ociVersionMin": OCI_VERSION_MIN,
        "ociVersionMax": OCI_VERSION,
        "hooks": list(HOOKS),
        "mountOptions": sorted(known_options()),
        "linux": {
            "namespaces": [t for t in NAMESPACE_TYPES if os.path.exists(
                f"/proc/self/ns/{NAMESPACE_FILES[t]}")],
            "capabilities": list(CAPABILITIES),
            "cgroup": _cgroup(),
            "seccomp": _seccomp(),
            # What the runtime supports, whatever the host has (features.md).
            "apparmor": {"enabled": True},
            "selinux": {"enabled": True},
            "intelRdt": {"enabled": False},
            "mountExtensions": {"idmap": {"enabled": False}},
        },
        "annotations": annotations,
    }

