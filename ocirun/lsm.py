"""AppArmor and SELinux: the process's profile or label on execve, and the mounts'
SELinux context.

The runtime checks at create and exec that the host has the security module a config
asks for (a profile asked for and silently not applied would leave the container
unconfined); the process writes its exec attribute just before no_new_privs and the
capability drop (init.prepare_process), so the kernel applies it at execve.
"""

from __future__ import annotations

import os

from ocirun.errors import OciError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ocirun.spec import Linux, Process

# Mount types that take no context= option: binds carry their source's labels; proc,
# sysfs and cgroup get the policy's own (runc's choice too).
_UNLABELLED = frozenset(("bind", "proc", "sysfs", "cgroup", "cgroup2", "mqueue"))


def apparmor_enabled() -> bool:
    try:
        with open("/sys/module/apparmor/parameters/enabled") as f:
            return f.read().strip() == "Y"
    except OSError:
        return False


def selinux_enabled() -> bool:
    return os.path.exists("/sys/fs/selinux/enforce")


def check_host(process: Process, linux: Linux | None = None) -> None:
    """Refuse a profile or label the host cannot apply, naming the field."""
    profile = process.apparmor_profile
    if profile and profile != "unconfined" and not apparmor_enabled():
        raise OciError(f"process.apparmorProfile: {profile!r} asked for, but AppArmor "
                       "is not enabled on this host")
    if process.selinux_label and not selinux_enabled():
        raise OciError("process.selinuxLabel: an SELinux label asked for, but SELinux "
                       "is not enabled on this host")
    if linux is not None and linux.mount_label and not selinux_enabled():
        raise OciError("linux.mountLabel: an SELinux label asked for, but SELinux is "
                       "not enabled on this host")


def exec_attributes(process: Process) -> list[tuple[str, str, str]]:
    """(file under /proc/self, value, JSON path) to write before execve."""
    writes = []
    profile = process.apparmor_profile
    if profile and apparmor_enabled():
        attr = "attr/apparmor/exec"  # Linux 5.1+, where several modules may stack
        if not os.path.exists(f"/proc/self/{attr}"):
            attr = "attr/exec"
        writes.append((attr, f"exec {profile}", "process.apparmorProfile"))
    if process.selinux_label:
        writes.append(("attr/exec", process.selinux_label, "process.selinuxLabel"))
    return writes


def mount_data(mount_type: str, is_bind: bool, data: str, mount_label: str | None) -> str:
    """The filesystem data of a mount, with the SELinux context of linux.mountLabel."""
    if not mount_label or is_bind or mount_type in _UNLABELLED:
        return data
    context = f'context="{mount_label}"'
    return f"{data},{context}" if data else context
