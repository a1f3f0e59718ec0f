"""config.json -> frozen, typed records (ocirun.record.Record).

The parser is strict about the fields it knows (type, enum, required) and ignores the
ones it does not.  Every error names the JSON path of the offending value.  This is the
only model of the configuration: the rest of ocirun reads these records.
"""

from __future__ import annotations

import os
from ocirun import jsonio
from ocirun.record import Record

from ocirun.errors import ConfigError, OciError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, TypeVar

    T = TypeVar("T")

NAMESPACE_TYPES = ("pid", "network", "mount", "ipc", "uts", "user", "cgroup", "time")

CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
    "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
    "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)  # index == capability number

RLIMITS = (
    "RLIMIT_AS", "RLIMIT_CORE", "RLIMIT_CPU", "RLIMIT_DATA", "RLIMIT_FSIZE", "RLIMIT_LOCKS",
    "RLIMIT_MEMLOCK", "RLIMIT_MSGQUEUE", "RLIMIT_NICE", "RLIMIT_NOFILE", "RLIMIT_NPROC",
    "RLIMIT_RSS", "RLIMIT_RTPRIO", "RLIMIT_RTTIME", "RLIMIT_SIGPENDING", "RLIMIT_STACK",
)

ROOTFS_PROPAGATIONS = ("private", "rprivate", "shared", "rshared", "slave", "rslave",
                       "unbindable", "runbindable")

SECCOMP_ACTIONS = (
    "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_TRAP",
    "SCMP_ACT_ERRNO", "SCMP_ACT_TRACE", "SCMP_ACT_ALLOW", "SCMP_ACT_LOG", "SCMP_ACT_NOTIFY",
)
SECCOMP_ARCHES = (
    "SCMP_ARCH_X86", "SCMP_ARCH_X86_64", "SCMP_ARCH_X32", "SCMP_ARCH_ARM",
    "SCMP_ARCH_AARCH64", "SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64", "SCMP_ARCH_MIPS64N32",
    "SCMP_ARCH_MIPSEL", "SCMP_ARCH_MIPSEL64", "SCMP_ARCH_MIPSEL64N32", "SCMP_ARCH_PPC",
    "SCMP_ARCH_PPC64", "SCMP_ARCH_PPC64LE", "SCMP_ARCH_S390", "SCMP_ARCH_S390X",
    "SCMP_ARCH_PARISC", "SCMP_ARCH_PARISC64", "SCMP_ARCH_RISCV64", "SCMP_ARCH_LOONGARCH64",
    "SCMP_ARCH_M68K", "SCMP_ARCH_SH", "SCMP_ARCH_SHEB",
)
SECCOMP_OPS = ("SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_EQ", "SCMP_CMP_GE",
               "SCMP_CMP_GT", "SCMP_CMP_MASKED_EQ")
SECCOMP_FLAGS = ("SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG",
                 "SECCOMP_FILTER_FLAG_SPEC_ALLOW", "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV")

_UINT32 = 2**32 - 1
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_UINT64_MAX = 2**64 - 1  # as an rlimit: RLIM_INFINITY ("unlimited", podman's --ulimit host)
_SEMVER_TAG_CHARS = frozenset("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz.-")


# ---------------------------------------------------------------------------- model
class User(Record):
    uid: int = 0
    gid: int = 0
    umask: int | None = None
    additional_gids: tuple[int, ...] = ()


class Capabilities(Record):
    bounding: tuple[str, ...] = ()
    effective: tuple[str, ...] = ()
    inheritable: tuple[str, ...] = ()
    permitted: tuple[str, ...] = ()
    ambient: tuple[str, ...] = ()
    # (JSON path, name) of each name this kernel interface does not know: left out of
    # the sets, and logged as a warning at create (config.md: SHOULD NOT fail)
    unknown: tuple[tuple[str, str], ...] = ()


class Rlimit(Record):
    type: str
    soft: int
    hard: int


class ConsoleSize(Record):
    height: int
    width: int


class Process(Record):
    args: tuple[str, ...]
    cwd: str
    user: User = User()
    env: tuple[str, ...] = ()
    terminal: bool = False
    console_size: ConsoleSize | None = None
    capabilities: Capabilities | None = None
    rlimits: tuple[Rlimit, ...] = ()
    no_new_privileges: bool = False
    apparmor_profile: str | None = None
    selinux_label: str | None = None
    oom_score_adj: int | None = None


class Root(Record):
    path: str  # absolute: resolved against the bundle
    readonly: bool = False


class IdMapping(Record):
    container_id: int
    host_id: int
    size: int


class Mount(Record):
    destination: str
    type: str | None = None
    source: str | None = None
    options: tuple[str, ...] = ()
    uid_mappings: tuple[IdMapping, ...] = ()
    gid_mappings: tuple[IdMapping, ...] = ()


class Hook(Record):
    path: str
    args: tuple[str, ...] = ()
    env: tuple[str, ...] | None = None  # None: the runtime's own (runc and crun too)
    timeout: int | None = None


class Hooks(Record):
    prestart: tuple[Hook, ...] = ()
    create_runtime: tuple[Hook, ...] = ()
    create_container: tuple[Hook, ...] = ()
    start_container: tuple[Hook, ...] = ()
    poststart: tuple[Hook, ...] = ()
    poststop: tuple[Hook, ...] = ()

    def sync_after_mounts(self) -> bool:
        """Whether the init stops for the runtime once its mounts are made: the
        runtime runs prestart and createRuntime then, and sends the state that the
        container's own hooks (createContainer, startContainer) are given."""
        return bool(self.prestart or self.create_runtime or self.create_container or
                    self.start_container)


class Namespace(Record):
    type: str
    path: str | None = None


class Device(Record):
    type: str
    path: str
    major: int | None = None
    minor: int | None = None
    file_mode: int | None = None
    uid: int | None = None
    gid: int | None = None


class DeviceRule(Record):
    allow: bool
    type: str | None = None  # a, b, c; None means all
    major: int | None = None  # None means any (*)
    minor: int | None = None
    access: str | None = None  # subset of "rwm"; None means all


class Memory(Record):
    limit: int | None = None
    reservation: int | None = None
    swap: int | None = None
    kernel: int | None = None
    kernel_tcp: int | None = None
    swappiness: int | None = None
    disable_oom_killer: bool | None = None
    use_hierarchy: bool | None = None
    check_before_update: bool | None = None


class Cpu(Record):
    shares: int | None = None
    quota: int | None = None
    burst: int | None = None
    period: int | None = None
    realtime_runtime: int | None = None
    realtime_period: int | None = None
    cpus: str | None = None
    mems: str | None = None
    idle: int | None = None


class WeightDevice(Record):
    major: int
    minor: int
    weight: int | None = None
    leaf_weight: int | None = None


class ThrottleDevice(Record):
    major: int
    minor: int
    rate: int


class BlockIO(Record):
    weight: int | None = None
    leaf_weight: int | None = None
    weight_device: tuple[WeightDevice, ...] = ()
    throttle_read_bps_device: tuple[ThrottleDevice, ...] = ()
    throttle_write_bps_device: tuple[ThrottleDevice, ...] = ()
    throttle_read_iops_device: tuple[ThrottleDevice, ...] = ()
    throttle_write_iops_device: tuple[ThrottleDevice, ...] = ()


class HugepageLimit(Record):
    page_size: str
    limit: int


class NetworkPriority(Record):
    name: str
    priority: int


class Network(Record):
    class_id: int | None = None
    priorities: tuple[NetworkPriority, ...] = ()


class Rdma(Record):
    hca_handles: int | None = None
    hca_objects: int | None = None


class Resources(Record):
    devices: tuple[DeviceRule, ...] = ()
    memory: Memory | None = None
    cpu: Cpu | None = None
    pids_limit: int | None = None
    block_io: BlockIO | None = None
    hugepage_limits: tuple[HugepageLimit, ...] = ()
    network: Network | None = None
    rdma: dict[str, Rdma] = {}
    unified: dict[str, str] = {}


class SyscallArg(Record):
    index: int
    value: int
    op: str
    value_two: int = 0


class SyscallRule(Record):
    names: tuple[str, ...]
    action: str
    errno_ret: int | None = None
    args: tuple[SyscallArg, ...] = ()


class Seccomp(Record):
    default_action: str
    default_errno_ret: int | None = None
    architectures: tuple[str, ...] = ()
    flags: tuple[str, ...] = ()
    listener_path: str | None = None
    listener_metadata: str | None = None
    syscalls: tuple[SyscallRule, ...] = ()


class Personality(Record):
    domain: str
    flags: tuple[str, ...] = ()


class IntelRdt(Record):
    clos_id: str | None = None
    l3_cache_schema: str | None = None
    mem_bw_schema: str | None = None
    enable_cmt: bool = False
    enable_mbm: bool = False


class Linux(Record):
    namespaces: tuple[Namespace, ...] = ()
    uid_mappings: tuple[IdMapping, ...] = ()
    gid_mappings: tuple[IdMapping, ...] = ()
    time_offsets: dict[str, tuple[int, int]] = {}
    devices: tuple[Device, ...] = ()
    cgroups_path: str | None = None
    resources: Resources | None = None
    rootfs_propagation: str | None = None
    seccomp: Seccomp | None = None
    sysctl: dict[str, str] = {}
    masked_paths: tuple[str, ...] = ()
    readonly_paths: tuple[str, ...] = ()
    mount_label: str | None = None
    personality: Personality | None = None
    intel_rdt: IntelRdt | None = None

    def namespace(self, ns_type: str) -> Namespace | None:
        for ns in self.namespaces:
            if ns.type == ns_type:
                return ns
        return None


class Spec(Record):
    oci_version: str
    root: Root | None = None
    process: Process | None = None
    hostname: str | None = None
    domainname: str | None = None
    mounts: tuple[Mount, ...] = ()
    hooks: Hooks = Hooks()
    annotations: dict[str, str] = {}
    linux: Linux = Linux()


# --------------------------------------------------------------------- primitives
def _type_name(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean",
            type(None): "null"}.get(type(value), "number")


def _expect(value: Any, kind: type | tuple[type, ...], path: str, what: str) -> Any:
    if isinstance(value, bool) and kind is not bool and bool not in (
            kind if isinstance(kind, tuple) else (kind,)):
        raise ConfigError(path, f"must be {what}, not boolean")
    if not isinstance(value, kind):
        raise ConfigError(path, f"must be {what}, not {_type_name(value)}")
    return value


def _obj(value: Any, path: str) -> dict[str, Any]:
    return _expect(value, dict, path, "an object")


def _string(value: Any, path: str) -> str:
    _expect(value, str, path, "a string")
    _check_text(value, path)
    return value


MAX_STRING = 1 << 20  # 1 MiB: no path, argument or label of a config comes near it


def _check_text(value: str, path: str) -> None:
    """What the kernel and libc could not take: a NUL ends a C string early, a lone
    surrogate (JSON's \\ud800) has no UTF-8 form."""
    if len(value) > MAX_STRING:
        raise ConfigError(path, f"is longer than {MAX_STRING} characters")
    if "\x00" in value:
        raise ConfigError(path, "contains a NUL character")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise ConfigError(path, "is not valid Unicode text (a lone surrogate)") from None


def _bool(value: Any, path: str) -> bool:
    return _expect(value, bool, path, "a boolean")


def _int(value: Any, path: str, lo: int = _INT64_MIN, hi: int = _INT64_MAX) -> int:
    _expect(value, int, path, "an integer")
    if not lo <= value <= hi:
        raise ConfigError(path, f"{value} is out of range [{lo}, {hi}]")
    return value


def _uint32(value: Any, path: str) -> int:
    return _int(value, path, 0, _UINT32)


def _list(value: Any, path: str, item: Callable[[Any, str], T]) -> tuple[T, ...]:
    _expect(value, list, path, "an array")
    return tuple(item(v, f"{path}[{i}]") for i, v in enumerate(value))


def _strings(value: Any, path: str) -> tuple[str, ...]:
    return _list(value, path, _string)


def _str_map(value: Any, path: str) -> dict[str, str]:
    out = {}
    for k, v in _obj(value, path).items():
        _check_text(k, f"{path}.{k!r}")
        out[k] = _string(v, f"{path}.{k}")
    return out


def _enum(value: Any, path: str, allowed: tuple[str, ...]) -> str:
    _string(value, path)
    if value not in allowed:
        raise ConfigError(path, f"unknown value {value!r} (expected one of "
                                f"{', '.join(allowed)})")
    return value


def _abs_path(value: Any, path: str) -> str:
    _string(value, path)
    if not value.startswith("/"):
        raise ConfigError(path, f"{value!r} must be an absolute path")
    return value


class _Fields:
    """Reads the known fields of one JSON object, tracking the JSON path."""

    def __init__(self, value: Any, path: str) -> None:
        self.data = _obj(value, path)
        self.path = path

    def at(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def req(self, key: str, conv: Callable[[Any, str], T]) -> T:
        if key not in self.data:
            raise ConfigError(self.at(key), "is required")
        return conv(self.data[key], self.at(key))

    def opt(self, key: str, conv: Callable[[Any, str], T], default: Any = None) -> Any:
        if self.data.get(key) is None:
            return default
        return conv(self.data[key], self.at(key))


# ------------------------------------------------------------------------ sections
def _user(v: Any, p: str) -> User:
    f = _Fields(v, p)
    return User(uid=f.req("uid", _uint32), gid=f.req("gid", _uint32),
                umask=f.opt("umask", _uint32),
                additional_gids=f.opt("additionalGids", lambda x, q: _list(x, q, _uint32), ()))


def _capabilities(v: Any, p: str) -> Capabilities:
    f = _Fields(v, p)
    unknown: list[tuple[str, str]] = []
    caps: dict[str, tuple[str, ...]] = {}
    for key in ("bounding", "effective", "inheritable", "permitted", "ambient"):
        names = f.opt(key, _strings, ())
        for i, name in enumerate(names):
            if name not in CAPABILITIES:
                unknown.append((f"{f.at(key)}[{i}]", name))
        caps[key] = tuple(n for n in names if n in CAPABILITIES)
    return Capabilities(**caps, unknown=tuple(unknown))


def _rlimit(v: Any, p: str) -> Rlimit:
    f = _Fields(v, p)
    return Rlimit(type=f.req("type", lambda x, q: _enum(x, q, RLIMITS)),
                  soft=f.req("soft", lambda x, q: _int(x, q, 0, _UINT64_MAX)),
                  hard=f.req("hard", lambda x, q: _int(x, q, 0, _UINT64_MAX)))


def _console_size(v: Any, p: str) -> ConsoleSize:
    f = _Fields(v, p)
    return ConsoleSize(height=f.req("height", _uint32), width=f.req("width", _uint32))


def _process(v: Any, p: str) -> Process:
    f = _Fields(v, p)
    rlimits = f.opt("rlimits", lambda x, q: _list(x, q, _rlimit), ())
    seen: set[str] = set()
    for i, rl in enumerate(rlimits):
        if rl.type in seen:
            raise ConfigError(f"{p}.rlimits[{i}].type", f"duplicate rlimit {rl.type}")
        seen.add(rl.type)
    args = f.req("args", _strings)
    if not args:
        raise ConfigError(f.at("args"), "must contain at least one element")
    for i, e in enumerate(f.opt("env", _strings, ())):
        if "=" not in e:
            raise ConfigError(f"{p}.env[{i}]", f"{e!r} is not of the form KEY=value")
    return Process(
        args=args,
        cwd=f.req("cwd", _abs_path),
        user=f.req("user", _user),
        env=f.opt("env", _strings, ()),
        terminal=f.opt("terminal", _bool, False),
        console_size=f.opt("consoleSize", _console_size),
        capabilities=f.opt("capabilities", _capabilities),
        rlimits=rlimits,
        no_new_privileges=f.opt("noNewPrivileges", _bool, False),
        apparmor_profile=f.opt("apparmorProfile", _string),
        selinux_label=f.opt("selinuxLabel", _string),
        oom_score_adj=f.opt("oomScoreAdj", lambda x, q: _int(x, q, -1000, 1000)),
    )


def _id_mapping(v: Any, p: str) -> IdMapping:
    f = _Fields(v, p)
    return IdMapping(container_id=f.req("containerID", _uint32),
                     host_id=f.req("hostID", _uint32), size=f.req("size", _uint32))


def _id_mappings(v: Any, p: str) -> tuple[IdMapping, ...]:
    return _list(v, p, _id_mapping)


def _mount(v: Any, p: str) -> Mount:
    f = _Fields(v, p)
    dest = f.req("destination", _string)
    if not dest:
        raise ConfigError(f.at("destination"), "must not be empty")
    return Mount(destination=dest, type=f.opt("type", _string),
                 source=f.opt("source", _string), options=f.opt("options", _strings, ()),
                 uid_mappings=f.opt("uidMappings", _id_mappings, ()),
                 gid_mappings=f.opt("gidMappings", _id_mappings, ()))


def _hook(v: Any, p: str) -> Hook:
    f = _Fields(v, p)
    return Hook(path=f.req("path", _abs_path), args=f.opt("args", _strings, ()),
                env=f.opt("env", _strings),
                timeout=f.opt("timeout", lambda x, q: _int(x, q, 1)))


def _hooks(v: Any, p: str) -> Hooks:
    f = _Fields(v, p)

    def hooks(key: str) -> tuple[Hook, ...]:
        return f.opt(key, lambda x, q: _list(x, q, _hook), ())

    return Hooks(prestart=hooks("prestart"), create_runtime=hooks("createRuntime"),
                 create_container=hooks("createContainer"),
                 start_container=hooks("startContainer"), poststart=hooks("poststart"),
                 poststop=hooks("poststop"))


def _namespace(v: Any, p: str) -> Namespace:
    f = _Fields(v, p)
    return Namespace(type=f.req("type", lambda x, q: _enum(x, q, NAMESPACE_TYPES)),
                     path=f.opt("path", _abs_path))


def _namespaces(v: Any, p: str) -> tuple[Namespace, ...]:
    namespaces = _list(v, p, _namespace)
    seen: set[str] = set()
    for i, ns in enumerate(namespaces):
        if ns.type in seen:
            raise ConfigError(f"{p}[{i}].type", f"duplicate namespace type {ns.type!r}")
        seen.add(ns.type)
    return namespaces


def _device(v: Any, p: str) -> Device:
    f = _Fields(v, p)
    dev_type = f.req("type", lambda x, q: _enum(x, q, ("c", "b", "u", "p")))
    if dev_type != "p":
        for key in ("major", "minor"):
            if not f.has(key):
                raise ConfigError(f.at(key), f"is required for device type {dev_type!r}")
    return Device(type=dev_type, path=f.req("path", _abs_path),
                  major=f.opt("major", _uint32),
                  minor=f.opt("minor", _uint32),
                  file_mode=f.opt("fileMode", lambda x, q: _int(x, q, 0, 0o777)),
                  uid=f.opt("uid", _uint32), gid=f.opt("gid", _uint32))


def _device_rule(v: Any, p: str) -> DeviceRule:
    f = _Fields(v, p)
    dev_type = f.opt("type", lambda x, q: _enum(x, q, ("a", "b", "c")))
    access = f.opt("access", _string)
    if access is not None and (not access or set(access) - set("rwm")):
        raise ConfigError(f.at("access"), f"{access!r} must be a combination of r, w, m")
    return DeviceRule(allow=f.req("allow", _bool), type=dev_type,
                      major=f.opt("major", _int), minor=f.opt("minor", _int), access=access)


def _memory(v: Any, p: str) -> Memory:
    f = _Fields(v, p)
    return Memory(limit=f.opt("limit", _int), reservation=f.opt("reservation", _int),
                  swap=f.opt("swap", _int), kernel=f.opt("kernel", _int),
                  kernel_tcp=f.opt("kernelTCP", _int),
                  swappiness=f.opt("swappiness", lambda x, q: _int(x, q, 0, 100)),
                  disable_oom_killer=f.opt("disableOOMKiller", _bool),
                  use_hierarchy=f.opt("useHierarchy", _bool),
                  check_before_update=f.opt("checkBeforeUpdate", _bool))


def _cpu(v: Any, p: str) -> Cpu:
    f = _Fields(v, p)
    u64 = lambda x, q: _int(x, q, 0)  # noqa: E731
    return Cpu(shares=f.opt("shares", u64), quota=f.opt("quota", _int),
               burst=f.opt("burst", u64), period=f.opt("period", u64),
               realtime_runtime=f.opt("realtimeRuntime", _int),
               realtime_period=f.opt("realtimePeriod", u64), cpus=f.opt("cpus", _string),
               mems=f.opt("mems", _string), idle=f.opt("idle", _int))


def _weight(v: Any, p: str) -> int | None:
    """A blkio weight; 0 means unset, as runc reads it (docker sends weight 0)."""
    return _int(v, p, 0, 65535) or None


def _weight_device(v: Any, p: str) -> WeightDevice:
    f = _Fields(v, p)
    return WeightDevice(major=f.req("major", _int), minor=f.req("minor", _int),
                        weight=f.opt("weight", _weight),
                        leaf_weight=f.opt("leafWeight", _weight))


def _throttle_device(v: Any, p: str) -> ThrottleDevice:
    f = _Fields(v, p)
    return ThrottleDevice(major=f.req("major", _int), minor=f.req("minor", _int),
                          rate=f.req("rate", lambda x, q: _int(x, q, 0)))


def _block_io(v: Any, p: str) -> BlockIO:
    f = _Fields(v, p)

    def throttles(key: str) -> tuple[ThrottleDevice, ...]:
        return f.opt(key, lambda x, q: _list(x, q, _throttle_device), ())

    return BlockIO(weight=f.opt("weight", _weight),
                   leaf_weight=f.opt("leafWeight", _weight),
                   weight_device=f.opt("weightDevice",
                                       lambda x, q: _list(x, q, _weight_device), ()),
                   throttle_read_bps_device=throttles("throttleReadBpsDevice"),
                   throttle_write_bps_device=throttles("throttleWriteBpsDevice"),
                   throttle_read_iops_device=throttles("throttleReadIOPSDevice"),
                   throttle_write_iops_device=throttles("throttleWriteIOPSDevice"))


def _hugepage_limit(v: Any, p: str) -> HugepageLimit:
    f = _Fields(v, p)
    page_size = f.req("pageSize", _string)
    number = page_size[:-2]
    if page_size[-2:] not in ("KB", "MB", "GB") or not _is_ascii_number(number) or \
            number.startswith("0"):
        raise ConfigError(f.at("pageSize"), f"{page_size!r} is not a page size like 2MB")
    return HugepageLimit(page_size=page_size,
                         limit=f.req("limit", lambda x, q: _int(x, q, 0)))


def _network(v: Any, p: str) -> Network:
    f = _Fields(v, p)

    def prio(x: Any, q: str) -> NetworkPriority:
        g = _Fields(x, q)
        return NetworkPriority(name=g.req("name", _string), priority=g.req("priority", _uint32))

    return Network(class_id=f.opt("classID", _uint32),
                   priorities=f.opt("priorities", lambda x, q: _list(x, q, prio), ()))


def _rdma(v: Any, p: str) -> dict[str, Rdma]:
    out = {}
    for name, entry in _obj(v, p).items():
        f = _Fields(entry, f"{p}.{name}")
        out[name] = Rdma(hca_handles=f.opt("hcaHandles", _uint32),
                         hca_objects=f.opt("hcaObjects", _uint32))
    return out


def _resources(v: Any, p: str) -> Resources:
    f = _Fields(v, p)
    pids = f.opt("pids", lambda x, q: _Fields(x, q).req("limit", _int))
    return Resources(devices=f.opt("devices", lambda x, q: _list(x, q, _device_rule), ()),
                     memory=f.opt("memory", _memory), cpu=f.opt("cpu", _cpu),
                     pids_limit=pids, block_io=f.opt("blockIO", _block_io),
                     hugepage_limits=f.opt("hugepageLimits",
                                           lambda x, q: _list(x, q, _hugepage_limit), ()),
                     network=f.opt("network", _network), rdma=f.opt("rdma", _rdma, {}),
                     unified=f.opt("unified", _str_map, {}))


def _syscall_arg(v: Any, p: str) -> SyscallArg:
    f = _Fields(v, p)
    return SyscallArg(index=f.req("index", lambda x, q: _int(x, q, 0, 5)),
                      value=f.req("value", lambda x, q: _int(x, q, 0)),
                      value_two=f.opt("valueTwo", lambda x, q: _int(x, q, 0), 0),
                      op=f.req("op", lambda x, q: _enum(x, q, SECCOMP_OPS)))


def _syscall_names(v: Any, p: str) -> tuple[str, ...]:
    # Engine profiles list ~400 names: check them in one pass, and build the per-item
    # JSON path (`_strings`) only to report the bad one.
    if isinstance(v, list) and all(isinstance(x, str) for x in v):
        return tuple(v)
    return _strings(v, p)


def _syscall_rule(v: Any, p: str) -> SyscallRule:
    f = _Fields(v, p)
    names = f.req("names", _syscall_names)
    if not names:
        raise ConfigError(f.at("names"), "must contain at least one syscall name")
    action = f.req("action", lambda x, q: _enum(x, q, SECCOMP_ACTIONS))
    return SyscallRule(names=names, action=action,
                       errno_ret=_errno_ret(f, "errnoRet", action),
                       args=f.opt("args", lambda x, q: _list(x, q, _syscall_arg), ()))


def _errno_ret(f: _Fields, key: str, action: str) -> int | None:
    """config-linux.md#seccomp: an errno for an action that returns none is an error."""
    errno_ret = f.opt(key, _uint32)
    if errno_ret is not None and action not in ("SCMP_ACT_ERRNO", "SCMP_ACT_TRACE"):
        raise ConfigError(f.at(key), f"{action} returns no errno (only SCMP_ACT_ERRNO and "
                          "SCMP_ACT_TRACE take one)")
    return errno_ret


def _seccomp(v: Any, p: str) -> Seccomp:
    f = _Fields(v, p)
    enum_list = lambda allowed: lambda x, q: _list(x, q, lambda y, r: _enum(y, r, allowed))  # noqa: E731
    default_action = f.req("defaultAction", lambda x, q: _enum(x, q, SECCOMP_ACTIONS))
    seccomp = Seccomp(
        default_action=default_action,
        default_errno_ret=_errno_ret(f, "defaultErrnoRet", default_action),
        architectures=f.opt("architectures", enum_list(SECCOMP_ARCHES), ()),
        flags=f.opt("flags", enum_list(SECCOMP_FLAGS), ()),
        listener_path=f.opt("listenerPath", _abs_path),
        listener_metadata=f.opt("listenerMetadata", _string),
        syscalls=f.opt("syscalls", lambda x, q: _list(x, q, _syscall_rule), ()))
    uses_notify = seccomp.default_action == "SCMP_ACT_NOTIFY" or any(
        r.action == "SCMP_ACT_NOTIFY" for r in seccomp.syscalls)
    if uses_notify and not seccomp.listener_path:
        raise ConfigError(f.at("listenerPath"), "is required when SCMP_ACT_NOTIFY is used")
    return seccomp


def _time_offsets(v: Any, p: str) -> dict[str, tuple[int, int]]:
    out = {}
    for clock, entry in _obj(v, p).items():
        if clock not in ("monotonic", "boottime"):
            raise ConfigError(f"{p}.{clock}", "unknown clock (expected monotonic or boottime)")
        f = _Fields(entry, f"{p}.{clock}")
        out[clock] = (f.opt("secs", _int, 0), f.opt("nanosecs", _uint32, 0))
    return out


def _personality(v: Any, p: str) -> Personality:
    f = _Fields(v, p)
    return Personality(domain=f.req("domain", lambda x, q: _enum(x, q, ("LINUX", "LINUX32"))),
                       flags=f.opt("flags", _strings, ()))


def _linux(v: Any, p: str) -> Linux:
    f = _Fields(v, p)
    abs_paths = lambda x, q: _list(x, q, _abs_path)  # noqa: E731
    sysctl = f.opt("sysctl", _str_map, {})
    return Linux(
        namespaces=f.opt("namespaces", _namespaces, ()),
        uid_mappings=f.opt("uidMappings", _id_mappings, ()),
        gid_mappings=f.opt("gidMappings", _id_mappings, ()),
        time_offsets=f.opt("timeOffsets", _time_offsets, {}),
        devices=f.opt("devices", lambda x, q: _list(x, q, _device), ()),
        cgroups_path=f.opt("cgroupsPath", _string),
        resources=f.opt("resources", _resources),
        rootfs_propagation=f.opt("rootfsPropagation",
                                 lambda x, q: _enum(x, q, ROOTFS_PROPAGATIONS)),
        seccomp=f.opt("seccomp", _seccomp),
        sysctl=sysctl,
        masked_paths=f.opt("maskedPaths", abs_paths, ()),
        readonly_paths=f.opt("readonlyPaths", abs_paths, ()),
        mount_label=f.opt("mountLabel", _string),
        personality=f.opt("personality", _personality),
        intel_rdt=f.opt("intelRdt", _intel_rdt),
    )


def _intel_rdt(v: Any, p: str) -> IntelRdt:
    f = _Fields(v, p)
    return IntelRdt(clos_id=f.opt("closID", _string),
                    l3_cache_schema=f.opt("l3CacheSchema", _string),
                    mem_bw_schema=f.opt("memBwSchema", _string),
                    enable_cmt=f.opt("enableCMT", _bool, False),
                    enable_mbm=f.opt("enableMBM", _bool, False))


def _oci_version(v: Any, p: str) -> str:
    _string(v, p)
    if not _is_oci_version(v):
        raise ConfigError(p, f"{v!r} is not a supported version (expected 1.x.y)")
    return v


def _is_ascii_number(s: str) -> bool:
    return s.isascii() and s.isdigit()


def _is_oci_version(v: str) -> bool:
    """1.MINOR.PATCH with semver's optional -prerelease and +build (no `re` here: the
    create path does not otherwise need it)."""
    rest, plus, build = v.partition("+")
    core, dash, pre = rest.partition("-")
    for tag, present in ((pre, dash), (build, plus)):
        if present and not (tag and _SEMVER_TAG_CHARS.issuperset(tag)):
            return False
    major, minor, patch = (core.split(".") + ["", "", ""])[:3]
    return core.count(".") == 2 and major == "1" and _is_ascii_number(minor) and \
        _is_ascii_number(patch)


def _annotations(v: Any, p: str) -> dict[str, str]:
    annotations = _str_map(v, p)
    if "" in annotations:
        raise ConfigError(p, "annotation keys must not be empty")
    return annotations


# --------------------------------------------------------------------------- entry
def parse_spec(data: Any, bundle: str = ".") -> Spec:
    """Parse a decoded config.json; relative root.path is resolved against `bundle`."""
    f = _Fields(data, "")

    def root(v: Any, p: str) -> Root:
        g = _Fields(v, p)
        path = g.req("path", _string)
        if not path:
            raise ConfigError(g.at("path"), "must not be empty")
        return Root(path=os.path.normpath(os.path.join(os.path.abspath(bundle), path)),
                    readonly=g.opt("readonly", _bool, False))

    spec = Spec(
        oci_version=f.req("ociVersion", _oci_version),
        root=f.opt("root", root),
        process=f.opt("process", _process),
        hostname=f.opt("hostname", _string),
        domainname=f.opt("domainname", _string),
        mounts=f.opt("mounts", lambda x, q: _list(x, q, _mount), ()),
        hooks=f.opt("hooks", _hooks, Hooks()),
        annotations=f.opt("annotations", _annotations, {}),
        linux=f.opt("linux", _linux, Linux()),
    )
    _check_semantics(spec)
    return spec


def parse_stored(data: Any) -> tuple[Hooks, bool]:
    """What `start` and `delete` use of a config that `create` checked in full: the
    hooks, and whether the container has a pid namespace of its own.  Parsing all of
    it again (an engine's seccomp profile alone is hundreds of rules) would be paid by
    every start and delete."""
    f = _Fields(data, "")
    hooks = f.opt("hooks", _hooks, Hooks())
    linux = _Fields(f.opt("linux", _obj, {}), "linux")
    namespaces = linux.opt("namespaces", _namespaces, ())
    return hooks, any(ns.type == "pid" and ns.path is None for ns in namespaces)


def _check_semantics(spec: Spec) -> None:
    """Rules spanning several fields, which a per-field check cannot see."""
    linux = spec.linux
    # Settings of a namespace the container shares with the runtime would change the
    # host: they need that namespace in the config (a joined one is checked against
    # the runtime's own at create, see host_namespace_conflicts).
    if linux.namespace("uts") is None:
        for key in ("hostname", "domainname"):
            if getattr(spec, key) is not None:
                raise ConfigError(key, f"setting the {key} needs a uts namespace of the "
                                  "container's own (add it to linux.namespaces)")
    user_ns = linux.namespace("user")
    if (linux.uid_mappings or linux.gid_mappings) and (user_ns is None or user_ns.path):
        raise ConfigError("linux.uidMappings", "id mappings need a new user namespace")
    if user_ns is not None and not user_ns.path:
        if not linux.uid_mappings:
            raise ConfigError("linux.uidMappings", "a new user namespace needs uid mappings")
        if not linux.gid_mappings:
            raise ConfigError("linux.gidMappings", "a new user namespace needs gid mappings")
    if linux.time_offsets and (linux.namespace("time") is None or linux.namespace("time").path):
        raise ConfigError("linux.timeOffsets", "time offsets need a new time namespace")
    for key in linux.sysctl:
        if not key or "/" in key or any(not part for part in key.split(".")):
            raise ConfigError(f"linux.sysctl.{key}", "is not a valid sysctl name")
        if key == "kernel.hostname":  # as runc and crun
            raise ConfigError(f"linux.sysctl.{key}", "conflicts with the hostname field: "
                              "set the hostname there")
        if key == "kernel.domainname" and spec.domainname is not None and \
                spec.domainname != linux.sysctl[key]:
            raise ConfigError(f"linux.sysctl.{key}", "conflicts with the domainname field")
        ns_type = sysctl_namespace(key)
        if ns_type is None:
            raise ConfigError(f"linux.sysctl.{key}", "is not namespaced: setting it would "
                              "change the host")
        if linux.namespace(ns_type) is None:
            raise ConfigError(f"linux.sysctl.{key}", f"belongs to the {ns_type} namespace, "
                              f"which the container shares with the host (add a {ns_type} "
                              "namespace to linux.namespaces)")


def mountless_conflicts(spec: Spec) -> None:
    """Without a mount namespace the container shares the runtime's mounts: the init
    enters root.path by chroot, and ocirun mounts nothing there (runc does, and leaves
    those mounts behind in its caller's namespace).  A valid config, refused at create."""
    linux = spec.linux
    if linux.namespace("mount") is not None:
        return
    asked = [("mounts", bool(spec.mounts)),
             ("root.readonly", spec.root is not None and spec.root.readonly),
             ("linux.maskedPaths", bool(linux.masked_paths)),
             ("linux.readonlyPaths", bool(linux.readonly_paths)),
             ("linux.rootfsPropagation", linux.rootfs_propagation is not None),
             ("linux.devices", bool(linux.devices))]
    for json_path, given in asked:
        if given:
            raise ConfigError(json_path, "needs a mount namespace of the container's own "
                              "(add \"mount\" to linux.namespaces): without one ocirun "
                              "mounts nothing and only enters root.path")


_IPC_SYSCTLS = frozenset(("kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem",
                          "kernel.shmall", "kernel.shmmax", "kernel.shmmni",
                          "kernel.shm_rmid_forced"))


def sysctl_namespace(key: str) -> str | None:
    """The namespace type a sysctl belongs to, or None for one of the whole host (the
    list runc and crun accept)."""
    if key in _IPC_SYSCTLS or key.startswith("fs.mqueue."):
        return "ipc"
    if key.startswith("net."):
        return "network"
    if key in ("kernel.hostname", "kernel.domainname"):
        return "uts"
    return None


def host_namespace_conflicts(spec: Spec) -> None:
    """Refuse a setting aimed at a namespace given by path that is the runtime's own:
    a path can name the host's namespace as well as another container's."""
    wanted: dict[str, str] = {}
    for key in ("hostname", "domainname"):
        if getattr(spec, key) is not None:
            wanted.setdefault("uts", key)
    for key in spec.linux.sysctl:
        ns_type = sysctl_namespace(key)
        if ns_type is not None:
            wanted.setdefault(ns_type, f"linux.sysctl.{key}")
    mount_ns = spec.linux.namespace("mount")
    if mount_ns is not None and mount_ns.path is not None:
        wanted["mount"] = "linux.namespaces"  # pivot_root there would move the host's /
    from ocirun.sys import NAMESPACE_FILES
    for ns_type, json_path in wanted.items():
        ns = spec.linux.namespace(ns_type)
        if ns is None or ns.path is None:
            continue
        try:
            given = os.stat(ns.path)
            own = os.stat(f"/proc/self/ns/{NAMESPACE_FILES[ns_type]}")
        except OSError:
            continue  # joining reports a path that cannot be opened
        if (given.st_dev, given.st_ino) == (own.st_dev, own.st_ino):
            what = ("building the rootfs there" if ns_type == "mount"
                    else "setting it")
            raise ConfigError(json_path, f"the {ns_type} namespace {ns.path} is the "
                              f"runtime's own: {what} would change the host")


def parse_process(data: Any) -> Process:
    """A decoded process object on its own (`exec --process FILE`).  Without `user`,
    root (runc takes such a file too: its zero value is uid 0, gid 0)."""
    if isinstance(data, dict) and "user" not in data:
        data = {**data, "user": {"uid": 0, "gid": 0}}
    return _process(data, "process")


def parse_resources(data: Any) -> Resources:
    """A decoded linux.resources object on its own (`update --resources FILE`)."""
    return _resources(data, "resources")


MAX_CONFIG_BYTES = 16 << 20  # an engine's config with a seccomp profile is ~100 KiB


def read_config_bytes(path: str, what: str, pipe_ok: bool = False) -> bytes:
    """The bytes of a config file: a regular file (a FIFO or a device would hang or
    never end) of at most MAX_CONFIG_BYTES.  `pipe_ok`: a pipe or FIFO too, read to
    its end (the caller's own `exec -p <(...)`, as runc takes it)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY |
                     (0 if pipe_ok else os.O_NONBLOCK))
    except OSError as e:
        raise OciError(f"{what}: {(e.strerror or str(e)).lower()}") from None
    try:
        import stat
        st = os.fstat(fd)
        if not (stat.S_ISREG(st.st_mode) or pipe_ok and stat.S_ISFIFO(st.st_mode)):
            raise OciError(f"{what}: not a regular file" + (" or a pipe" if pipe_ok else ""))
        if st.st_size > MAX_CONFIG_BYTES:
            raise OciError(f"{what}: {st.st_size} bytes, more than the "
                           f"{MAX_CONFIG_BYTES >> 20} MiB a config may have")
        chunks = []
        size = 0
        while chunk := os.read(fd, 1 << 20):
            size += len(chunk)
            if size > MAX_CONFIG_BYTES:  # grew while we read
                raise OciError(f"{what}: more than {MAX_CONFIG_BYTES >> 20} MiB")
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as e:
        raise OciError(f"{what}: {(e.strerror or str(e)).lower()}") from None
    finally:
        os.close(fd)


def decode_config(raw: bytes) -> Any:
    """config.json decoded; nesting is bounded by the interpreter's recursion limit
    (the C scanner checks it at every level), and too deep is a config error."""
    try:
        return jsonio.loads(raw)
    except RecursionError:
        raise OciError("config.json: invalid JSON: nested too deep") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise OciError(f"config.json: invalid JSON: {e}") from None


def load_spec(bundle: str, require_process: bool = True) -> Spec:
    """Read and parse <bundle>/config.json."""
    return read_spec(bundle, require_process)[0]


def read_spec(bundle: str, require_process: bool = True) -> tuple[Spec, bytes]:
    """The parsed <bundle>/config.json and the bytes it was parsed from."""
    path = os.path.join(bundle, "config.json")
    raw = read_config_bytes(path, f"bundle {bundle}: config.json")
    data = decode_config(raw)
    spec = parse_spec(data, bundle)
    if require_process and spec.process is None:
        raise ConfigError("process", "is required to create a container")
    if spec.root is None:
        raise ConfigError("root", "is required on Linux")
    return spec, raw
