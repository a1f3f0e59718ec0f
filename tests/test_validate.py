"""The strict parser (ocirun.spec) and the OCI JSON schema (ocirun.validate) must agree.

Corpora:
  VALID          both accept.
  INVALID        both reject, and the parser's error path matches one of the schema's
                 (equal, or one a prefix of the other).
  PARSER_ONLY    the parser rejects what the schema accepts: semantics the schema cannot
                 express (absolute paths, duplicates, cross-field rules, names the spec
                 says must map to a kernel interface...).  Asserted explicitly.
  UNMODELLED     the schema rejects, the parser accepts because it does not model the
                 field at all (it ignores fields it does not use); `ocirun validate`
                 still reports them through the schema.
  PARSER_GAPS    the schema rejects, the parser accepts a field it *does* model: parser
                 discrepancies, expected to fail until spec.py is fixed (strict xfail:
                 when it is fixed, move the case to INVALID).
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ocirun.errors import ConfigError
from ocirun.spec import parse_spec
from ocirun.validate import (ROOT_PATH, format_path, schema_dir, validate_bundle,
                             validate_config, validate_state)

REPO = Path(__file__).resolve().parent.parent
_DEL = object()


def cfg(base: dict[str, Any] | None = None, **changes: Any) -> dict[str, Any]:
    """A copy of `base` (default BASE) with "a__b__c=value" changes (_DEL removes)."""
    data = copy.deepcopy(BASE if base is None else base)
    for key, value in changes.items():
        *parents, last = key.split("__")
        node = data
        for part in parents:
            node = node.setdefault(part, {}) if isinstance(node, dict) else node[int(part)]
        if value is _DEL:
            del node[last]
        elif isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return data


BASE: dict[str, Any] = {
    "ociVersion": "1.2.0",
    "root": {"path": "rootfs"},
    "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
}

MINIMAL = {"ociVersion": "1.0.0", "root": {"path": "rootfs"}}

RUNC_SPEC: dict[str, Any] = {  # what `runc spec` writes
    "ociVersion": "1.2.0",
    "process": {
        "terminal": True,
        "user": {"uid": 0, "gid": 0},
        "args": ["sh"],
        "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "TERM=xterm"],
        "cwd": "/",
        "capabilities": {k: ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
                         for k in ("bounding", "effective", "permitted")},
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
        "noNewPrivileges": True,
    },
    "root": {"path": "rootfs", "readonly": True},
    "hostname": "runc",
    "mounts": [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620",
                     "gid=5"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs",
         "options": ["nosuid", "noexec", "nodev", "ro"]},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
         "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
    ],
    "linux": {
        "resources": {"devices": [{"allow": False, "access": "rwm"}]},
        "namespaces": [{"type": t} for t in
                       ("pid", "network", "ipc", "uts", "mount", "cgroup")],
        "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
                        "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                        "/proc/sched_debug", "/sys/firmware", "/proc/scsi"],
        "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys",
                          "/proc/sysrq-trigger"],
    },
}

ALL_RESOURCES: dict[str, Any] = {
    "devices": [{"allow": False, "access": "rwm"},
                {"allow": True, "type": "c", "major": 10, "minor": 229, "access": "rw"},
                {"allow": True, "type": "b", "major": 8, "minor": 0, "access": "r"},
                {"allow": True, "type": "a", "major": -1, "minor": -1}],
    "memory": {"limit": 536870912, "reservation": 536870912, "swap": 1073741824,
               "kernel": -1, "kernelTCP": -1, "swappiness": 0, "disableOOMKiller": False,
               "useHierarchy": True, "checkBeforeUpdate": True},
    "cpu": {"shares": 1024, "quota": 1000000, "burst": 100000, "period": 500000,
            "realtimeRuntime": 950000, "realtimePeriod": 1000000, "cpus": "2-3",
            "mems": "0-7", "idle": 0},
    "pids": {"limit": 32771},
    "blockIO": {"weight": 10, "leafWeight": 10,
                "weightDevice": [{"major": 8, "minor": 0, "weight": 500, "leafWeight": 300},
                                 {"major": 8, "minor": 16, "weight": 500}],
                "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 600}],
                "throttleWriteBpsDevice": [{"major": 8, "minor": 0, "rate": 600}],
                "throttleReadIOPSDevice": [{"major": 8, "minor": 0, "rate": 300}],
                "throttleWriteIOPSDevice": [{"major": 8, "minor": 16, "rate": 300}]},
    "hugepageLimits": [{"pageSize": "2MB", "limit": 9223372036854772000},
                       {"pageSize": "64KB", "limit": 1000000}],
    "network": {"classID": 1048577,
                "priorities": [{"name": "eth0", "priority": 500},
                               {"name": "eth1", "priority": 1000}]},
    "rdma": {"mlx5_1": {"hcaHandles": 3, "hcaObjects": 10000},
             "mlx4_0": {"hcaObjects": 1000}},
    "unified": {"io.weight": "default 100", "memory.high": "max"},
}

SECCOMP: dict[str, Any] = {
    "defaultAction": "SCMP_ACT_ERRNO",
    "defaultErrnoRet": 1,
    "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32",
                      "SCMP_ARCH_AARCH64", "SCMP_ARCH_RISCV64"],
    "flags": ["SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
              "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"],
    "listenerPath": "/run/seccomp-agent.sock",
    "listenerMetadata": "agent-data",
    "syscalls": [
        {"names": ["read", "write", "exit_group"], "action": "SCMP_ACT_ALLOW"},
        {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
         "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"},
                  {"index": 0, "value": 8, "valueTwo": 0, "op": "SCMP_CMP_EQ"}]},
        {"names": ["socket"], "action": "SCMP_ACT_ERRNO", "errnoRet": 97,
         "args": [{"index": 0, "value": 16, "op": "SCMP_CMP_NE"},
                  {"index": 1, "value": 2, "valueTwo": 2, "op": "SCMP_CMP_MASKED_EQ"}]},
        {"names": ["mount"], "action": "SCMP_ACT_NOTIFY"},
        {"names": ["kexec_load"], "action": "SCMP_ACT_KILL_PROCESS"},
    ],
}

HOOK = {"path": "/usr/bin/hook", "args": ["hook", "arg1"], "env": ["K=V"], "timeout": 5}
HOOKS = {k: [HOOK, {"path": "/bin/true"}] for k in
         ("prestart", "createRuntime", "createContainer", "startContainer", "poststart",
          "poststop")}

IDMAP = [{"containerID": 0, "hostID": 100000, "size": 65536}]
USERNS: dict[str, Any] = cfg(
    linux={"namespaces": [{"type": "user"}, {"type": "mount"}, {"type": "pid"}],
           "uidMappings": IDMAP, "gidMappings": IDMAP},
    mounts=[{"destination": "/data", "type": "bind", "source": "/srv/data",
             "options": ["rbind", "idmap"], "uidMappings": IDMAP, "gidMappings": IDMAP}])

EVERYTHING_ELSE: dict[str, Any] = cfg(
    hostname="box", domainname="example.test",
    annotations={"org.opencontainers.image.ref.name": "x", "com.example.k": "v"},
    process={"args": ["sh", "-c", "true"], "cwd": "/work", "terminal": True,
             "consoleSize": {"height": 24, "width": 80},
             "user": {"uid": 1000, "gid": 1000, "umask": 18, "additionalGids": [5, 6],
                      "username": "app"},
             "env": ["A=1", "EMPTY="], "apparmorProfile": "p", "selinuxLabel": "l",
             "oomScoreAdj": -500, "noNewPrivileges": False,
             "capabilities": {"bounding": ["CAP_CHOWN"], "ambient": ["CAP_KILL"],
                              "inheritable": [], "effective": ["CAP_BPF"],
                              "permitted": ["CAP_CHECKPOINT_RESTORE"]},
             "rlimits": [{"type": "RLIMIT_CORE", "soft": 0, "hard": 0},
                         {"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 4096}],
             "ioPriority": {"class": "IOPRIO_CLASS_BE", "priority": 4},
             "scheduler": {"policy": "SCHED_FIFO", "priority": 10,
                           "flags": ["SCHED_FLAG_RESET_ON_FORK"]},
             "execCPUAffinity": {"initial": "0-1", "final": "0, 2"}},
    linux={"namespaces": [{"type": "uts"}, {"type": "time"}, {"type": "mount"},
                          {"type": "ipc"}, {"type": "network", "path": "/var/run/netns/a"}],
           "timeOffsets": {"monotonic": {"secs": 172800, "nanosecs": 0},
                           "boottime": {"secs": -1}},
           "devices": [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229,
                        "fileMode": 438, "uid": 0, "gid": 0},
                       {"path": "/dev/pipe", "type": "p"}],
           "cgroupsPath": "/myRuntime/myContainer", "rootfsPropagation": "slave",
           "sysctl": {"net.ipv4.ip_forward": "1", "kernel.shmmax": "4096"},
           "mountLabel": "system_u:object_r:container_file_t:s0",
           "personality": {"domain": "LINUX32", "flags": []},
           "intelRdt": {"closID": "guaranteed", "l3CacheSchema": "L3:0=7f"},
           "netDevices": {"eth0": {"name": "ceth0"}, "ens4": {}}})

VALID: dict[str, dict[str, Any]] = {
    "minimal": MINIMAL,
    "minimal-for-start": BASE,
    "runc-spec": RUNC_SPEC,
    "all-resources": cfg(RUNC_SPEC, linux__resources=ALL_RESOURCES),
    "seccomp-with-args": cfg(linux={"seccomp": SECCOMP}),
    "hooks": cfg(hooks=HOOKS),
    "idmappings": USERNS,
    "everything-else": EVERYTHING_ELSE,
    "relative-mount-destination": cfg(mounts=[{"destination": "tmp", "type": "tmpfs"}]),
    "unknown-capability": cfg(process__capabilities={"bounding": ["CAP_FOO"]}),  # warned
    "upstream-good-linux-rdma": cfg(MINIMAL, linux={"resources": {"rdma": {
        "mlx5_1": {"hcaHandles": 3, "hcaObjects": 10000},
        "mlx4_0": {"hcaObjects": 1000}, "rxe3": {"hcaObjects": 10000}}}}),
    "upstream-good-linux-netdevice": cfg(MINIMAL, linux={"netDevices": {
        "eth0": {"name": "container_eth0"}, "ens4": {}, "ens5": {}}}),
}

# (name, config, path of the offending value)
INVALID: list[tuple[str, Any, str]] = [
    ("intelRdt-closID", cfg(linux={"intelRdt": {"closID": 5}}), "linux.intelRdt.closID"),
    ("not-an-object", [], ""),
    ("missing-ociVersion", cfg(ociVersion=_DEL), "ociVersion"),
    ("ociVersion-not-string", cfg(ociVersion=1), "ociVersion"),
    ("missing-process.cwd", cfg(process__cwd=_DEL), "process.cwd"),
    ("process.cwd-not-string", cfg(process__cwd=7), "process.cwd"),
    ("process-not-object", cfg(process=["sh"]), "process"),
    ("process.args-not-array", cfg(process__args="sh"), "process.args"),
    ("process.args-item-not-string", cfg(process__args=["sh", 1]), "process.args[1]"),
    ("process.env-not-array", cfg(process__env="A=1"), "process.env"),
    ("process.terminal-not-bool", cfg(process__terminal="yes"), "process.terminal"),
    ("uid-negative", cfg(process__user__uid=-1), "process.user.uid"),
    ("uid-too-big", cfg(process__user__uid=2**32), "process.user.uid"),
    ("uid-float", cfg(process__user__uid=1.0), "process.user.uid"),
    ("uid-bool", cfg(process__user__uid=True), "process.user.uid"),
    ("gid-string", cfg(process__user__gid="0"), "process.user.gid"),
    ("umask-negative", cfg(process__user__umask=-1), "process.user.umask"),
    ("additionalGids-negative", cfg(process__user__additionalGids=[1, -5]),
     "process.user.additionalGids[1]"),
    ("consoleSize-missing-width", cfg(process__consoleSize={"height": 1}),
     "process.consoleSize.width"),
    ("capabilities-not-array", cfg(process__capabilities={"bounding": "CAP_KILL"}),
     "process.capabilities.bounding"),
    ("capability-not-string", cfg(process__capabilities={"ambient": [3]}),
     "process.capabilities.ambient[0]"),
    ("rlimit-missing-hard", cfg(process__rlimits=[{"type": "RLIMIT_CORE", "soft": 1}]),
     "process.rlimits[0].hard"),
    ("rlimit-type-pattern", cfg(process__rlimits=[
        {"type": "NOFILE", "soft": 1, "hard": 1}]), "process.rlimits[0].type"),
    ("rlimit-soft-negative", cfg(process__rlimits=[
        {"type": "RLIMIT_CORE", "soft": -1, "hard": 1}]), "process.rlimits[0].soft"),
    ("rlimit-over-uint64", cfg(process__rlimits=[
        {"type": "RLIMIT_CORE", "soft": 1, "hard": 2**64}]), "process.rlimits[0].hard"),
    ("noNewPrivileges-not-bool", cfg(process__noNewPrivileges="true"),
     "process.noNewPrivileges"),
    ("oomScoreAdj-not-int", cfg(process__oomScoreAdj="1"), "process.oomScoreAdj"),
    ("apparmorProfile-not-string", cfg(process__apparmorProfile=1),
     "process.apparmorProfile"),
    ("root-missing-path", cfg(root={"readonly": True}), "root.path"),
    ("root.path-not-string", cfg(root__path=1), "root.path"),
    ("root.readonly-not-bool", cfg(root__readonly="no"), "root.readonly"),
    ("hostname-not-string", cfg(hostname=1), "hostname"),
    ("mounts-not-array", cfg(mounts={"destination": "/x"}), "mounts"),
    ("mount-without-destination", cfg(mounts=[{"type": "tmpfs", "source": "tmpfs"}]),
     "mounts[0].destination"),
    ("mount-options-not-array", cfg(mounts=[{"destination": "/x", "options": "ro"}]),
     "mounts[0].options"),
    ("mount-type-not-string", cfg(mounts=[{"destination": "/x", "type": 1}]),
     "mounts[0].type"),
    ("mount-idmapping-without-size", cfg(mounts=[{
        "destination": "/x", "uidMappings": [{"containerID": 0, "hostID": 1}]}]),
     "mounts[0].uidMappings[0].size"),
    ("hook-without-path", cfg(hooks={"prestart": [{"args": ["x"]}]}),
     "hooks.prestart[0].path"),
    ("hook-timeout-zero", cfg(hooks={"poststop": [{"path": "/x", "timeout": 0}]}),
     "hooks.poststop[0].timeout"),
    ("hook-args-not-array", cfg(hooks={"createRuntime": [{"path": "/x", "args": "a"}]}),
     "hooks.createRuntime[0].args"),
    ("hooks-not-array", cfg(hooks={"poststart": {"path": "/x"}}), "hooks.poststart"),
    ("annotation-not-string", cfg(annotations={"a": 1}), "annotations.a"),
    ("namespace-type-foo", cfg(linux={"namespaces": [
        {"type": "pid"}, {"type": "mount"}, {"type": "foo"}]}), "linux.namespaces[2].type"),
    ("namespace-without-type", cfg(linux={"namespaces": [{"path": "/proc/1/ns/pid"}]}),
     "linux.namespaces[0].type"),
    ("namespace-path-not-string", cfg(linux={"namespaces": [{"type": "pid", "path": 1}]}),
     "linux.namespaces[0].path"),
    ("uidMapping-without-hostID", cfg(linux={"namespaces": [{"type": "user"}],
                                            "uidMappings": [{"containerID": 0, "size": 1}],
                                            "gidMappings": IDMAP}),
     "linux.uidMappings[0].hostID"),
    ("gidMapping-negative", cfg(linux={"namespaces": [{"type": "user"}],
                                      "uidMappings": IDMAP,
                                      "gidMappings": [{"containerID": -1, "hostID": 0,
                                                       "size": 1}]}),
     "linux.gidMappings[0].containerID"),
    ("device-type-x", cfg(linux={"devices": [{"type": "x", "path": "/dev/x"}]}),
     "linux.devices[0].type"),
    ("device-without-path", cfg(linux={"devices": [
        {"type": "c", "major": 1, "minor": 3}]}), "linux.devices[0].path"),
    ("device-major-string", cfg(linux={"devices": [
        {"type": "c", "path": "/dev/x", "major": "1", "minor": 3}]}),
     "linux.devices[0].major"),
    ("device-uid-negative", cfg(linux={"devices": [
        {"type": "c", "path": "/dev/x", "major": 1, "minor": 3, "uid": -1}]}),
     "linux.devices[0].uid"),
    ("memory.limit-string", cfg(linux={"resources": {"memory": {"limit": "1G"}}}),
     "linux.resources.memory.limit"),
    ("memory.disableOOMKiller-int", cfg(linux={"resources": {
        "memory": {"disableOOMKiller": 1}}}), "linux.resources.memory.disableOOMKiller"),
    ("cpu.shares-negative", cfg(linux={"resources": {"cpu": {"shares": -1}}}),
     "linux.resources.cpu.shares"),
    ("cpu.cpus-int", cfg(linux={"resources": {"cpu": {"cpus": 3}}}),
     "linux.resources.cpu.cpus"),
    ("pids-without-limit", cfg(linux={"resources": {"pids": {}}}),
     "linux.resources.pids.limit"),
    ("device-rule-without-allow", cfg(linux={"resources": {"devices": [{"access": "r"}]}}),
     "linux.resources.devices[0].allow"),
    ("blkio-weight-too-big", cfg(linux={"resources": {"blockIO": {"weight": 70000}}}),
     "linux.resources.blockIO.weight"),
    ("blkio-weightDevice-without-major", cfg(linux={"resources": {"blockIO": {
        "weightDevice": [{"minor": 0, "weight": 10}]}}}),
     "linux.resources.blockIO.weightDevice[0].major"),
    ("blkio-throttle-rate-negative", cfg(linux={"resources": {"blockIO": {
        "throttleWriteIOPSDevice": [{"major": 8, "minor": 0, "rate": -1}]}}}),
     "linux.resources.blockIO.throttleWriteIOPSDevice[0].rate"),
    ("hugepage-without-limit", cfg(linux={"resources": {"hugepageLimits": [
        {"pageSize": "2MB"}]}}), "linux.resources.hugepageLimits[0].limit"),
    ("network-priority-without-priority", cfg(linux={"resources": {"network": {
        "priorities": [{"name": "eth0"}]}}}),
     "linux.resources.network.priorities[0].priority"),
    ("network-classID-negative", cfg(linux={"resources": {"network": {"classID": -1}}}),
     "linux.resources.network.classID"),
    ("upstream-bad-linux-rdma", cfg(MINIMAL, linux={"resources": {"rdma": {
        "mlx5_1": {"hcaHandles": "not a uint32"}}}}),
     "linux.resources.rdma.mlx5_1.hcaHandles"),
    ("unified-value-not-string", cfg(linux={"resources": {"unified": {"a": 1}}}),
     "linux.resources.unified.a"),
    ("seccomp-without-defaultAction", cfg(linux={"seccomp": {"syscalls": []}}),
     "linux.seccomp.defaultAction"),
    ("seccomp-bad-defaultAction", cfg(linux={"seccomp": {"defaultAction": "SCMP_ACT_FOO"}}),
     "linux.seccomp.defaultAction"),
    ("seccomp-bad-arch", cfg(linux={"seccomp": {"defaultAction": "SCMP_ACT_ALLOW",
                                                "architectures": ["SCMP_ARCH_FOO"]}}),
     "linux.seccomp.architectures[0]"),
    ("seccomp-bad-flag", cfg(linux={"seccomp": {"defaultAction": "SCMP_ACT_ALLOW",
                                                "flags": ["SECCOMP_FILTER_FLAG_FOO"]}}),
     "linux.seccomp.flags[0]"),
    ("seccomp-bad-action", cfg(linux={"seccomp": {"defaultAction": "SCMP_ACT_ALLOW",
                                                  "syscalls": [{"names": ["read"],
                                                                "action": "ALLOW"}]}}),
     "linux.seccomp.syscalls[0].action"),
    ("seccomp-empty-names", cfg(linux={"seccomp": {"defaultAction": "SCMP_ACT_ALLOW",
                                                   "syscalls": [{"names": [],
                                                                 "action": "SCMP_ACT_LOG"}]}}),
     "linux.seccomp.syscalls[0].names"),
    ("seccomp-without-names", cfg(linux={"seccomp": {"defaultAction": "SCMP_ACT_ALLOW",
                                                     "syscalls": [{"action": "SCMP_ACT_LOG"}]}}),
     "linux.seccomp.syscalls[0].names"),
    ("seccomp-bad-op", cfg(linux={"seccomp": {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["read"], "action": "SCMP_ACT_ERRNO",
         "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_FOO"}]}]}}),
     "linux.seccomp.syscalls[0].args[0].op"),
    ("seccomp-arg-without-value", cfg(linux={"seccomp": {"defaultAction": "SCMP_ACT_ALLOW",
                                                         "syscalls": [
        {"names": ["read"], "action": "SCMP_ACT_ERRNO",
         "args": [{"index": 0, "op": "SCMP_CMP_EQ"}]}]}}),
     "linux.seccomp.syscalls[0].args[0].value"),
    ("seccomp-errnoRet-negative", cfg(linux={"seccomp": {"defaultAction": "SCMP_ACT_ALLOW",
                                                         "syscalls": [
        {"names": ["read"], "action": "SCMP_ACT_ERRNO", "errnoRet": -1}]}}),
     "linux.seccomp.syscalls[0].errnoRet"),
    ("rootfsPropagation-bogus", cfg(linux={"rootfsPropagation": "bogus"}),
     "linux.rootfsPropagation"),
    ("sysctl-value-not-string", cfg(linux={"sysctl": {"net.ipv4.ip_forward": 1}}),
     "linux.sysctl.net.ipv4.ip_forward"),
    ("maskedPaths-not-array", cfg(linux={"maskedPaths": "/proc/kcore"}),
     "linux.maskedPaths"),
    ("personality-bad-domain", cfg(linux={"personality": {"domain": "LINUX64"}}),
     "linux.personality.domain"),
    ("timeOffsets-nanosecs-negative", cfg(linux={
        "namespaces": [{"type": "time"}],
        "timeOffsets": {"monotonic": {"secs": 1, "nanosecs": -1}}}),
     "linux.timeOffsets.monotonic.nanosecs"),
    ("linux-not-object", cfg(linux=[]), "linux"),
    ("upstream-bad-linux-hugepage", cfg(MINIMAL, linux={"resources": {"hugepageLimits": [
        {"limit": 1234123, "pageSize": "64kB"}]}}),
     "linux.resources.hugepageLimits[0].pageSize"),
    ("device-fileMode-over-0777", cfg(linux={"devices": [
        {"type": "c", "path": "/dev/x", "major": 1, "minor": 3, "fileMode": 0o4755}]}),
     "linux.devices[0].fileMode"),
    ("memory.limit-over-int64", cfg(linux={"resources": {"memory": {"limit": 2**63}}}),
     "linux.resources.memory.limit"),
]

# Parser rejects, schema accepts: semantics the schema cannot (or does not) express.
# (name, config, parser's error path, why)
PARSER_ONLY: list[tuple[str, Any, str, str]] = [
    ("seccomp-errnoRet-on-log", cfg(linux={"seccomp": {"defaultAction": "SCMP_ACT_ALLOW",
                                                       "syscalls": [
        {"names": ["mkdir"], "action": "SCMP_ACT_LOG", "errnoRet": 1}]}}),
     "linux.seccomp.syscalls[0].errnoRet",
     "config-linux.md#seccomp: an errno for an action without one MUST fail"),
    ("seccomp-defaultErrnoRet-on-allow", cfg(linux={"seccomp": {
        "defaultAction": "SCMP_ACT_ALLOW", "defaultErrnoRet": 1}}),
     "linux.seccomp.defaultErrnoRet",
     "config-linux.md#seccomp: an errno for an action without one MUST fail"),
    ("relative-cwd", cfg(process__cwd="tmp"), "process.cwd",
     "config.md: cwd MUST be an absolute path"),
    ("duplicate-namespace", cfg(linux={"namespaces": [{"type": "pid"}, {"type": "pid"}]}),
     "linux.namespaces[1].type", "config-linux.md: duplicated namespace types MUST error"),
    ("relative-namespace-path", cfg(linux={"namespaces": [{"type": "pid", "path": "ns"}]}),
     "linux.namespaces[0].path", "config-linux.md: path MUST be absolute"),
    ("relative-hook-path", cfg(hooks={"prestart": [{"path": "hook"}]}),
     "hooks.prestart[0].path", "config.md: hook path MUST be absolute"),
    ("relative-device-path", cfg(linux={"devices": [
        {"type": "c", "path": "dev/x", "major": 1, "minor": 3}]}),
     "linux.devices[0].path", "device path is a full path in the container"),
    ("char-device-without-major", cfg(linux={"devices": [{"type": "c", "path": "/dev/x"}]}),
     "linux.devices[0].major", "config-linux.md: major/minor REQUIRED unless type is p"),
    ("relative-maskedPath", cfg(linux={"maskedPaths": ["proc/kcore"]}),
     "linux.maskedPaths[0]", "paths are absolute in the container"),
    ("missing-process.user", cfg(process__user=_DEL), "process.user",
     "config.md: user is REQUIRED on POSIX platforms"),
    ("missing-process.user.uid", cfg(process__user={"gid": 0}), "process.user.uid",
     "config.md: uid is REQUIRED"),
    ("missing-process.args", cfg(process__args=_DEL), "process.args",
     "config.md: at least one args entry is REQUIRED (non-Windows)"),
    ("empty-process.args", cfg(process__args=[]), "process.args",
     "config.md: at least one args entry is REQUIRED (non-Windows)"),
    ("env-without-equals", cfg(process__env=["FOO"]), "process.env[0]",
     "environ(7) entries are KEY=value"),
    ("duplicate-rlimit", cfg(process__rlimits=[{"type": "RLIMIT_CORE", "soft": 0, "hard": 0},
                                               {"type": "RLIMIT_CORE", "soft": 1, "hard": 1}]),
     "process.rlimits[1].type", "config.md: rlimit types MUST be unique"),
    ("unknown-rlimit", cfg(process__rlimits=[{"type": "RLIMIT_FOO", "soft": 1, "hard": 1}]),
     "process.rlimits[0].type", "config.md: unmappable rlimit MUST error"),
    ("oomScoreAdj-out-of-kernel-range", cfg(process__oomScoreAdj=5000),
     "process.oomScoreAdj", "kernel range is -1000..1000"),
    ("consoleSize-over-uint32", cfg(process__consoleSize={"height": 2**32, "width": 1}),
     "process.consoleSize.height", "schema says uint64; parser caps at uint32"),
    ("ociVersion-not-1.x", cfg(ociVersion="0.5.0-dev"), "ociVersion",
     "schema: any string; parser: only 1.x.y (upstream spec-example.json uses 0.5.0-dev)"),
    ("ociVersion-not-semver", cfg(ociVersion="1.0"), "ociVersion",
     "config.md: MUST be SemVer v2.0.0"),
    ("syscall-arg-index-6", cfg(linux={"seccomp": {"defaultAction": "SCMP_ACT_ALLOW",
                                                   "syscalls": [
        {"names": ["read"], "action": "SCMP_ACT_ERRNO",
         "args": [{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]}]}}),
     "linux.seccomp.syscalls[0].args[0].index", "syscalls take at most 6 arguments"),
    ("notify-without-listenerPath", cfg(linux={"seccomp": {"defaultAction": "SCMP_ACT_NOTIFY"}}),
     "linux.seccomp.listenerPath", "config-linux.md: listenerPath needed for SCMP_ACT_NOTIFY"),
    ("relative-listenerPath", cfg(linux={"seccomp": {"defaultAction": "SCMP_ACT_NOTIFY",
                                                     "listenerPath": "agent.sock"}}),
     "linux.seccomp.listenerPath", "a socket path on the host"),
    ("throttle-without-rate", cfg(linux={"resources": {"blockIO": {
        "throttleReadBpsDevice": [{"major": 8, "minor": 0}]}}}),
     "linux.resources.blockIO.throttleReadBpsDevice[0].rate", "config-linux.md: rate REQUIRED"),
    ("device-rule-type-x", cfg(linux={"resources": {"devices": [{"allow": True, "type": "x"}]}}),
     "linux.resources.devices[0].type", "config-linux.md: a, b or c"),
    ("device-rule-access-rwx", cfg(linux={"resources": {"devices": [
        {"allow": True, "access": "rwx"}]}}),
     "linux.resources.devices[0].access", "config-linux.md: combination of r, w, m"),
    ("personality-without-domain", cfg(linux={"personality": {"flags": []}}),
     "linux.personality.domain", "config-linux.md: domain REQUIRED"),
    ("timeOffsets-unknown-clock", cfg(linux={"namespaces": [{"type": "time"}],
                                             "timeOffsets": {"realtime": {"secs": 1}}}),
     "linux.timeOffsets.realtime", "only monotonic and boottime exist"),
    ("hostname-without-uts", cfg(hostname="box"), "hostname",
     "needs a private UTS namespace (runc errors too)"),
    ("empty-hostname-without-uts", cfg(hostname=""), "hostname",
     "an empty hostname would still be set on the host"),
    ("domainname-without-uts", cfg(domainname=""), "domainname",
     "the domainname is the uts namespace's too"),
    ("sysctl-not-namespaced", cfg(linux={"sysctl": {"kernel.pid_max": "4096"}}),
     "linux.sysctl.kernel.pid_max", "a sysctl of the whole host (runc, crun refuse)"),
    ("sysctl-kernel-hostname", cfg(linux={"namespaces": [{"type": "uts"}],
                                          "sysctl": {"kernel.hostname": "x"}}),
     "linux.sysctl.kernel.hostname", "the hostname field's job (runc, crun refuse)"),
    ("sysctl-domainname-conflict", cfg(domainname="a", linux={
        "namespaces": [{"type": "uts"}], "sysctl": {"kernel.domainname": "b"}}),
     "linux.sysctl.kernel.domainname", "two values for one setting"),
    ("ipc-sysctl-without-ipcns", cfg(linux={"sysctl": {"fs.mqueue.queues_max": "1"}}),
     "linux.sysctl.fs.mqueue.queues_max", "it would be the host's ipc namespace"),
    ("net-sysctl-without-netns", cfg(linux={"sysctl": {"net.ipv4.ping_group_range": "0 0"}}),
     "linux.sysctl.net.ipv4.ping_group_range", "it would be the host's network namespace"),
    ("mappings-without-userns", cfg(linux={"uidMappings": IDMAP, "gidMappings": IDMAP}),
     "linux.uidMappings", "id mappings need a new user namespace"),
    ("userns-without-mappings", cfg(linux={"namespaces": [{"type": "user"}]}),
     "linux.uidMappings", "a new user namespace needs mappings"),
    ("timeOffsets-without-timens", cfg(linux={"timeOffsets": {"monotonic": {"secs": 1}}}),
     "linux.timeOffsets", "time offsets need a new time namespace"),
    ("sysctl-name-with-slash", cfg(linux={"namespaces": [{"type": "network"}],
                                          "sysctl": {"net/ipv4/ip_forward": "1"}}),
     "linux.sysctl.net/ipv4/ip_forward", "sysctl names are dotted, not paths"),
    ("empty-mount-destination", cfg(mounts=[{"destination": ""}]), "mounts[0].destination",
     "an empty destination names nothing"),
    ("empty-root-path", cfg(root__path=""), "root.path", "an empty root names nothing"),
    ("annotation-empty-key", cfg(annotations={"": "v"}), "annotations",
     "config.md: annotation keys MUST NOT be empty"),
    ("sysctl-empty-component", cfg(linux={"namespaces": [{"type": "network"}],
                                          "sysctl": {"net..x": "1"}}), "linux.sysctl.net..x",
     "a sysctl name has no empty components"),
    ("swappiness-over-100", cfg(linux={"resources": {"memory": {"swappiness": 200}}}),
     "linux.resources.memory.swappiness", "config-linux.md: swappiness is 0 to 100"),
]

# Schema rejects, parser accepts: fields the parser does not model at all.
UNMODELLED: list[tuple[str, Any, str]] = [
    ("scheduler-policy", cfg(process__scheduler={"policy": "SCHED_FOO"}),
     "process.scheduler.policy"),
    ("ioPriority-class", cfg(process__ioPriority={"class": "IOPRIO_CLASS_FOO"}),
     "process.ioPriority.class"),
    ("execCPUAffinity", cfg(process__execCPUAffinity={"initial": "abc"}),
     "process.execCPUAffinity.initial"),
    ("username-not-string", cfg(process__user__username=5), "process.user.username"),
    ("upstream-bad-linux-netdevice", cfg(MINIMAL, linux={"netDevices": {"eth0": {"name": 23}}}),
     "linux.netDevices.eth0.name"),
    ("memoryPolicy-mode", cfg(linux={"memoryPolicy": {"mode": "MPOL_FOO"}}),
     "linux.memoryPolicy.mode"),
    ("windows-layerFolders-empty", cfg(windows={"layerFolders": []}), "windows.layerFolders"),
]

# Schema rejects, parser accepts a field it models: discrepancies to fix in spec.py.
PARSER_GAPS: list[tuple[str, Any, str]] = [
    ("explicit-null-hostname", cfg(hostname=None), "hostname"),
    ("explicit-null-mount-options", cfg(mounts=[{"destination": "/x", "options": None}]),
     "mounts[0].options"),
    ("rootfsPropagation-rprivate", cfg(linux={"rootfsPropagation": "rprivate"}),
     "linux.rootfsPropagation"),
]


# The spec forbids these but neither the schema nor the parser rejects them yet.
SPEC_GAPS: list[tuple[str, Any, str]] = []


def parser_error(data: Any) -> ConfigError | None:
    try:
        parse_spec(data, "/bundle")
    except ConfigError as e:
        return e
    return None


def paths_of(errors: list[str]) -> list[str]:
    return [e.split(": ", 1)[0] for e in errors]


def related(a: str, b: str) -> bool:
    a = "" if a == ROOT_PATH else a
    b = "" if b == ROOT_PATH else b
    short, long_ = sorted((a, b), key=len)
    return short == "" or long_ == short or long_.startswith((short + ".", short + "["))


# ------------------------------------------------------------------------ corpora
@pytest.mark.parametrize("name", VALID)
def test_valid_config_is_accepted_by_parser_and_schema(name: str) -> None:
    data = VALID[name]
    assert validate_config(data) == []
    assert parser_error(data) is None


@pytest.mark.parametrize("name,data,path", INVALID, ids=[c[0] for c in INVALID])
def test_invalid_config_is_rejected_by_both_at_the_same_path(name: str, data: Any,
                                                             path: str) -> None:
    errors = validate_config(data)
    assert errors, "schema accepted it"
    assert path in [("" if p == ROOT_PATH else p) for p in paths_of(errors)], errors
    err = parser_error(data)
    assert err is not None, "parser accepted it"
    assert any(related(err.path, p) for p in paths_of(errors)), (err.path, errors)
    assert related(err.path, path), (err.path, path)


@pytest.mark.parametrize("name,data,path,why", PARSER_ONLY, ids=[c[0] for c in PARSER_ONLY])
def test_parser_rejects_what_the_schema_cannot_express(name: str, data: Any, path: str,
                                                       why: str) -> None:
    assert validate_config(data) == []
    err = parser_error(data)
    assert err is not None and err.path == path, (err and err.path, why)


@pytest.mark.parametrize("name,data,path", UNMODELLED, ids=[c[0] for c in UNMODELLED])
def test_schema_catches_fields_the_parser_ignores(name: str, data: Any, path: str) -> None:
    assert path in paths_of(validate_config(data))
    assert parser_error(data) is None


@pytest.mark.parametrize("name,data,path", PARSER_GAPS, ids=[c[0] for c in PARSER_GAPS])
def test_schema_rejection_the_parser_misses(name: str, data: Any, path: str) -> None:
    assert path in paths_of(validate_config(data))


@pytest.mark.xfail(strict=True, reason="parser discrepancy, see PARSER_GAPS")
@pytest.mark.parametrize("name,data,path", PARSER_GAPS, ids=[c[0] for c in PARSER_GAPS])
def test_parser_also_rejects_parser_gaps(name: str, data: Any, path: str) -> None:
    err = parser_error(data)
    assert err is not None and related(err.path, path)


@pytest.mark.parametrize("name,data,path", SPEC_GAPS, ids=[c[0] for c in SPEC_GAPS])
def test_spec_gap_is_accepted_by_the_schema(name: str, data: Any, path: str) -> None:
    assert validate_config(data) == []


@pytest.mark.xfail(strict=True, reason="parser should enforce the spec here, see SPEC_GAPS")
@pytest.mark.parametrize("name,data,path", SPEC_GAPS, ids=[c[0] for c in SPEC_GAPS])
def test_parser_rejects_spec_gap(name: str, data: Any, path: str) -> None:
    err = parser_error(data)
    assert err is not None and related(err.path, path)


# ----------------------------------------------------------------- error reporting
def test_every_error_starts_with_a_dotted_json_path() -> None:
    data = cfg(process__user__uid=-1, process__cwd=_DEL,
               linux={"namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "foo"}]},
               mounts=[{"source": "x"}], hooks={"prestart": [{}]})
    errors = validate_config(data)
    assert paths_of(errors) == sorted([
        "hooks.prestart[0].path", "linux.namespaces[2].type", "mounts[0].destination",
        "process.cwd", "process.user.uid"])
    assert "process.cwd: is required" in errors
    assert any(e.startswith("linux.namespaces[2].type: 'foo' is not one of") for e in errors)


def test_format_path_matches_the_parser_style() -> None:
    assert format_path(["linux", "namespaces", 2, "type"]) == "linux.namespaces[2].type"
    assert format_path([3]) == "[3]"
    assert format_path([]) == ""


def test_state_document_is_checked_against_the_state_schema() -> None:
    good = {"ociVersion": "1.2.0", "id": "c1", "status": "created", "pid": 42,
            "bundle": "/b"}
    assert validate_state(good) == []
    errors = validate_state({**good, "status": "paused", "pid": -1})
    assert paths_of(errors) == ["pid", "status"]


# ------------------------------------------------------------------ validate_bundle
def write_bundle(tmp_path: Path, data: Any) -> str:
    (tmp_path / "config.json").write_text(json.dumps(data) if not isinstance(data, str)
                                          else data)
    return str(tmp_path)


def test_bundle_that_is_valid_has_no_problems(tmp_path: Path) -> None:
    assert validate_bundle(write_bundle(tmp_path, RUNC_SPEC)) == []


def test_bundle_reports_schema_and_parser_problems(tmp_path: Path) -> None:
    data = cfg(process__cwd="tmp", process__scheduler={"policy": "SCHED_FOO"})
    problems = validate_bundle(write_bundle(tmp_path, data))
    assert paths_of(problems) == ["process.scheduler.policy", "process.cwd"]
    assert problems[1] == "process.cwd: 'tmp' must be an absolute path"


def test_bundle_does_not_repeat_a_problem_the_schema_already_reported(tmp_path: Path) -> None:
    problems = validate_bundle(write_bundle(tmp_path, cfg(process__user__uid=-1)))
    assert paths_of(problems) == ["process.user.uid"]


def test_bundle_needs_root_and_process_to_be_created(tmp_path: Path) -> None:
    assert validate_bundle(write_bundle(tmp_path, {"ociVersion": "1.2.0",
                                                   "root": {"path": "r"}})) == [
        "process: is required to create a container"]


def test_bundle_with_bad_json_or_no_config(tmp_path: Path) -> None:
    assert validate_bundle(write_bundle(tmp_path, "{]"))[0].startswith(
        "config.json: invalid JSON")
    assert validate_bundle(str(tmp_path / "nowhere")) == [
        f"bundle {tmp_path / 'nowhere'}: config.json: no such file or directory"]


# ---------------------------------------------------------------- schemas, packaging
def test_schemas_resolve_offline_and_cover_every_reference() -> None:
    directory = schema_dir()
    names = {p.name for p in directory.glob("*.json")}
    for path in directory.glob("*.json"):
        text = path.read_text()
        json.loads(text)
        for ref in re.findall(r'"\$ref": "([^"#]*)#', text):
            assert not ref or ref in names, f"{path.name} refers to missing {ref}"
    assert {"config-schema.json", "config-linux.json", "defs.json", "defs-linux.json",
            "state-schema.json"} <= names


def test_source_checkout_ships_schemas_as_package_data() -> None:
    link = REPO / "ocirun" / "schemas"
    assert link.resolve() == (REPO / "schemas").resolve()
    assert "schemas/*.json" in (REPO / "setup.cfg").read_text()


def test_schema_declares_draft4_and_is_validated_as_draft4() -> None:
    import jsonschema

    from ocirun.validate import _validator
    schema = json.loads((schema_dir() / "config-schema.json").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-04/schema#"
    assert isinstance(_validator("config-schema.json"), jsonschema.Draft4Validator)


def test_importing_spec_or_validate_does_not_load_jsonschema() -> None:
    code = ("import sys\n"
            "for module in ('ocirun.spec', 'ocirun.validate'):\n"
            "    __import__(module)\n"
            "    bad = [m for m in ('jsonschema', 'referencing') if m in sys.modules]\n"
            "    assert not bad, (module, bad)\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=str(REPO))
