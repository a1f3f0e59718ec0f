"""config-linux.md#namespaces, #user-namespace-mappings, #offset-for-time-namespace."""

from __future__ import annotations

import os
import time

from suite.cases.common import APPLY, VALID_VALUES, expect_create_error
from suite.harness import (MUST, SHOULD, Ctx, Skip, case, check, expect_eq, kv_lines,
                           ns_inode, read, status_fields)

PROC_NS = {"pid": "pid", "network": "net", "ipc": "ipc", "uts": "uts", "mount": "mnt",
           "cgroup": "cgroup", "user": "user", "time": "time"}
NEW_NS = ("If path is not specified, the runtime MUST create a new container namespace of "
          "type type.")


def _new_ns_case(ns_type: str, level: str = MUST) -> None:
    @case("linux/namespaces", f"new-{ns_type}", level, "config-linux.md#namespaces",
          NEW_NS + (" [The following namespace types SHOULD be supported: ... time]"
                    if ns_type == "time" else ""))
    def new_ns(t: Ctx) -> None:
        if not os.path.exists(f"/proc/self/ns/{PROC_NS[ns_type]}"):
            raise Skip(f"this kernel has no {ns_type} namespaces")
        cfg = t.config(["true"])
        if ns_type not in [n["type"] for n in cfg["linux"]["namespaces"]]:
            cfg["linux"]["namespaces"].append({"type": ns_type})
        c = t.create(t.bundle(cfg))
        proc = PROC_NS[ns_type]
        check(ns_inode(c.pid, proc) != ns_inode("self", proc),
              f"the container process shares the runtime caller's {ns_type} namespace "
              f"({ns_inode(c.pid, proc)})")


for _t in ("pid", "network", "ipc", "uts", "mount", "cgroup"):
    _new_ns_case(_t)
_new_ns_case("time", SHOULD)


@case("linux/namespaces", "inherit-unlisted", MUST, "config-linux.md#namespaces",
      "If a namespace type is not specified in the namespaces array, the container MUST "
      "inherit the runtime namespace of that type.")
def ns_inherit(t: Ctx) -> None:
    cfg = t.config(["true"])
    cfg["linux"]["namespaces"] = [{"type": "pid"}, {"type": "mount"}]
    del cfg["hostname"]
    c = t.create(t.bundle(cfg))
    for proc in ("net", "ipc", "uts", "cgroup"):
        expect_eq(f"{proc} namespace (not listed)", ns_inode("self", proc), ns_inode(c.pid, proc))


@case("linux/namespaces", "join-path", MUST, "config-linux.md#namespaces",
      "path (string, OPTIONAL) - namespace file. This value MUST be an absolute path in the "
      "runtime mount namespace. The runtime MUST place the container process in the "
      "namespace associated with that path.")
def ns_join(t: Ctx) -> None:
    holder = t.helper(["unshare", "--net", "--ipc", "--uts", "sleep", "300"])
    time.sleep(0.1)
    cfg = t.config(["true"])
    del cfg["hostname"]
    for ns in cfg["linux"]["namespaces"]:
        if ns["type"] in ("network", "ipc", "uts"):
            ns["path"] = f"/proc/{holder.pid}/ns/{PROC_NS[ns['type']]}"
    c = t.create(t.bundle(cfg))
    for proc in ("net", "ipc", "uts"):
        expect_eq(f"{proc} namespace", ns_inode(holder.pid, proc), ns_inode(c.pid, proc))


@case("linux/namespaces", "path-of-wrong-type", MUST, "config-linux.md#namespaces",
      "The runtime MUST generate an error if path is not associated with a namespace of "
      "type type.")
def ns_wrong_type(t: Ctx) -> str:
    holder = t.helper(["unshare", "--net", "--ipc", "sleep", "300"])
    time.sleep(0.1)
    cfg = t.config(["true"])
    for ns in cfg["linux"]["namespaces"]:
        if ns["type"] == "network":
            ns["path"] = f"/proc/{holder.pid}/ns/ipc"
    return expect_create_error(t, cfg, "network namespace path pointing to an ipc namespace")


@case("linux/namespaces", "duplicate-type", MUST, "config-linux.md#namespaces",
      "If a namespaces field contains duplicated namespaces with same type, the runtime MUST "
      "generate an error.")
def ns_duplicate(t: Ctx) -> str:
    cfg = t.config(["true"])
    cfg["linux"]["namespaces"].append({"type": "network"})
    return expect_create_error(t, cfg, "two network namespaces")


@case("linux/namespaces", "relative-path-refused", MUST, "config-linux.md#namespaces",
      "path (string, OPTIONAL) - namespace file. This value MUST be an absolute path in the "
      "runtime mount namespace. " + VALID_VALUES)
def ns_relative(t: Ctx) -> str:
    holder = t.helper(["unshare", "--net", "sleep", "300"])
    time.sleep(0.1)
    cfg = t.config(["true"])
    for ns in cfg["linux"]["namespaces"]:
        if ns["type"] == "network":
            ns["path"] = f"proc/{holder.pid}/ns/net"  # resolves from / (the runtime's cwd)
    b = t.bundle(cfg)
    c = t.create(b, ok=False, cwd="/")
    check(c.create is not None and c.create.rc != 0,
          "create accepted a relative namespace path")
    return f"error: {c.create}"


# ----------------------------------------------------------------------------- user namespace
def _userns_config(t: Ctx, script: str) -> dict:
    cfg = t.config(script=script)
    cfg["linux"]["namespaces"].append({"type": "user"})
    cfg["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
    cfg["linux"]["gidMappings"] = [{"containerID": 0, "hostID": 200000, "size": 65536}]
    # A cgroup v1 tree cannot be mounted from a user namespace the host does not own.
    cfg["mounts"] = [m for m in cfg["mounts"] if m["type"] != "cgroup"]
    return cfg


def _results_dir(rootfs: str) -> None:
    # The container's root (uid 100000 on the host) cannot create mount points in a
    # rootfs owned by the host's root: the bundle provides them, as image tools do.
    os.makedirs(f"{rootfs}/results")


@case("linux/user-namespace", "id-mappings", MUST, "config-linux.md#user-namespace-mappings",
      "uidMappings (array of objects, OPTIONAL) describes the user namespace uid mappings "
      "from the host to the container. gidMappings (array of objects, OPTIONAL) describes "
      "the user namespace gid mappings from the host to the container. " + APPLY)
def userns_mappings(t: Ctx) -> None:
    script = ("echo uid_map=$(cat /proc/1/uid_map); echo gid_map=$(cat /proc/1/gid_map); "
              "echo id=$(id -u):$(id -g); echo ready > /results/ready; sleep 300")
    b = t.bundle(_userns_config(t, script), prepare=_results_dir)
    c = t.create(b)
    check(ns_inode(c.pid, "user") != ns_inode("self", "user"),
          "the container process is in the runtime's user namespace")
    t.start(c)
    deadline = time.monotonic() + 10
    while b.result("ready") is None and time.monotonic() < deadline:
        time.sleep(0.05)
    got = kv_lines(c.stdout())
    expect_eq("uid_map", "0 100000 65536", " ".join(got.get("uid_map", "").split()))
    expect_eq("gid_map", "0 200000 65536", " ".join(got.get("gid_map", "").split()))
    expect_eq("ids inside", "0:0", got.get("id"))
    st = status_fields(c.pid)
    expect_eq("uid of the container process on the host", "100000", st["Uid"].split()[0])
    expect_eq("gid of the container process on the host", "200000", st["Gid"].split()[0])


@case("linux/user-namespace", "rootfs-ownership-kept", SHOULD,
      "config-linux.md#user-namespace-mappings",
      "The runtime SHOULD NOT modify the ownership of referenced filesystems to realize the "
      "mapping.")
def userns_no_chown(t: Ctx) -> None:
    b = t.bundle(_userns_config(t, "ls / > /dev/null"), prepare=_results_dir)
    before = {p: os.lstat(os.path.join(b.rootfs, p)) for p in ("", "bin", "bin/busybox", "etc/passwd")}
    t.run(b)
    after = {p: os.lstat(os.path.join(b.rootfs, p)) for p in before}
    changed = [p or "/" for p, s in before.items()
               if (after[p].st_uid, after[p].st_gid) != (s.st_uid, s.st_gid)]
    check(not changed, f"ownership changed in the rootfs: {changed}")


# ----------------------------------------------------------------------------- time offsets
@case("linux/namespaces", "time-offsets", SHOULD, "config-linux.md#offset-for-time-namespace",
      "timeOffsets (object, OPTIONAL) sets the offset for Time Namespace. [namespaces] The "
      "following namespace types SHOULD be supported: ... time.")
def time_offsets(t: Ctx) -> None:
    if not os.path.exists("/proc/self/ns/time"):
        raise Skip("this kernel has no time namespaces")

    def mutate(cfg: dict) -> None:
        cfg["linux"]["namespaces"].append({"type": "time"})
        cfg["linux"]["timeOffsets"] = {"monotonic": {"secs": 86400 * 7, "nanosecs": 0},
                                       "boottime": {"secs": 86400 * 7, "nanosecs": 0}}
    host_uptime = float(read("/proc/uptime").split()[0])
    out, _ = t.run_script("cat /proc/uptime", mutate)
    inside = float(out.split()[0])
    check(inside - host_uptime > 86400 * 7 - 60,
          f"uptime inside {inside:.0f}s vs host {host_uptime:.0f}s: the 7-day boottime "
          f"offset was not applied")
