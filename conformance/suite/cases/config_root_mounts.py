"""config.md: root, mounts, hostname, annotations, extensibility, valid values."""

from __future__ import annotations

import os

from suite.cases.common import APPLY, APPLY_REF, VALID_VALUES, expect_create_error
from suite.harness import (MUST, SHOULD, Ctx, case, check, expect_eq, kv_lines,
                           mountinfo)


# ----------------------------------------------------------------------------- root
@case("config/root", "readonly", MUST, "config.md#root",
      "readonly (bool, OPTIONAL) If true then the root filesystem MUST be read-only inside "
      "the container, defaults to false.")
def root_readonly(t: Ctx) -> None:
    def mutate(cfg: dict) -> None:
        cfg["root"]["readonly"] = True
    out, b = t.run_script("touch /conformance-probe 2>/dev/null && echo w=yes || echo w=no; "
                          "touch /results/ok && echo results=yes", mutate)
    got = kv_lines(out)
    expect_eq("writing to / with root.readonly=true", "no", got.get("w"))
    expect_eq("the rw /results mount still writable", "yes", got.get("results"))
    check(not os.path.exists(os.path.join(b.rootfs, "conformance-probe")),
          "a file appeared in the rootfs")


@case("config/root", "writable-by-default", MUST, "config.md#root",
      "readonly (bool, OPTIONAL) If true then the root filesystem MUST be read-only inside "
      "the container, defaults to false. " + APPLY)
def root_writable(t: Ctx) -> None:
    def mutate(cfg: dict) -> None:
        del cfg["root"]["readonly"]
    out, b = t.run_script("echo hi > /conformance-probe && echo w=yes || echo w=no", mutate)
    expect_eq("writing to / with readonly unset", "yes", kv_lines(out).get("w"))
    check(os.path.exists(os.path.join(b.rootfs, "conformance-probe")),
          "the file written to / is not in the bundle's rootfs")


@case("config/root", "absolute-path", MUST, "config.md#root",
      "path (string, REQUIRED) Specifies the path to the root filesystem for the container. "
      "... On POSIX platforms, path is either an absolute path or a relative path to the "
      "bundle. " + APPLY)
def root_absolute(t: Ctx) -> None:
    cfg = t.config(script="cat /conformance-marker")
    b = t.bundle(cfg, prepare=lambda r: open(f"{r}/conformance-marker", "w").write("abs\n"))
    b.config["root"]["path"] = os.path.join(b.path, "rootfs")
    b.write()
    c = t.run(b)
    expect_eq("output", "abs", c.stdout().strip())


@case("config/root", "missing-directory", MUST, "config.md#root",
      "A directory MUST exist at the path declared by the field. " + VALID_VALUES)
def root_missing(t: Ctx) -> str:
    cfg = t.config(["true"])
    cfg["root"]["path"] = "conformance-no-such-rootfs"
    return expect_create_error(t, cfg, "root.path does not exist")


# ----------------------------------------------------------------------------- mounts
@case("config/mounts", "listed-order", MUST, "config.md#mounts",
      "The runtime MUST mount entries in the listed order.")
def mounts_order(t: Ctx) -> None:
    src = t.path("order-src")
    os.makedirs(src)
    open(f"{src}/marker", "w").write("bound\n")
    cfg = t.config(script="cat /m/sub/marker; grep ' /s ' /proc/self/mountinfo")
    cfg["mounts"] += [
        {"destination": "/m", "type": "tmpfs", "source": "tmpfs", "options": ["size=1m"]},
        {"destination": "/m/sub", "type": "bind", "source": src, "options": ["rbind"]},
        {"destination": "/s", "type": "tmpfs", "source": "tmpfs", "options": ["size=1m"]},
        {"destination": "/s", "type": "tmpfs", "source": "tmpfs", "options": ["size=2m"]},
    ]
    c = t.run(t.bundle(cfg))
    out = c.stdout()
    check(out.startswith("bound"), "a bind mount listed after the tmpfs that holds its "
                                   "destination is not visible (mounted out of order?)")
    stacked = mountinfo(out)
    check(len(stacked) == 2, f"expected two mounts stacked at /s, got {len(stacked)}")
    check("size=2048k" in stacked[-1]["super"],
          f"the topmost mount at /s should be the last listed (size=2048k), got "
          f"{sorted(stacked[-1]['super'])}")


@case("config/mounts", "bind-relative-source", MUST, "config.md#mounts",
      "source (string, OPTIONAL) A device name, but can also be a file or directory name for "
      "bind mounts or a dummy. Path values for bind mounts are either absolute or relative "
      "to the bundle. " + APPLY)
def mounts_relative(t: Ctx) -> None:
    cfg = t.config(script="cat /data/marker")
    cfg["mounts"].append({"destination": "/data", "type": "bind", "source": "data",
                          "options": ["rbind", "ro"]})
    b = t.bundle(cfg)
    os.makedirs(f"{b.path}/data")
    open(f"{b.path}/data/marker", "w").write("relative\n")
    c = t.run(b)
    expect_eq("content of the bind mount", "relative", c.stdout().strip())


@case("config/mounts", "bind-readonly", MUST, APPLY_REF,
      APPLY + " [config.md#mounts] options (array of strings, OPTIONAL) Mount options of the "
      "filesystem to be used.")
def mounts_bind_ro(t: Ctx) -> None:
    src = t.path("ro-src")
    os.makedirs(src)
    os.chmod(src, 0o777)
    cfg = t.config(script="cat /ro/marker; touch /ro/new 2>/dev/null && echo w=yes || echo w=no")
    open(f"{src}/marker", "w").write("m=ro\n")
    cfg["mounts"].append({"destination": "/ro", "type": "bind", "source": src,
                          "options": ["rbind", "ro"]})
    c = t.run(t.bundle(cfg))
    got = kv_lines(c.stdout())
    expect_eq("content", "ro", got.get("m"))
    expect_eq("writing into a ro bind mount", "no", got.get("w"))
    check(not os.path.exists(f"{src}/new"), "the write reached the host directory")


@case("config/mounts", "bind-file", MUST, APPLY_REF,
      APPLY + " [config.md#mounts] destination (string, REQUIRED) Destination of mount point: "
      "path inside container.")
def mounts_bind_file(t: Ctx) -> None:
    src = t.path("file-src")
    open(src, "w").write("file content\n")
    cfg = t.config(script="cat /etc/conformance/file.conf")
    cfg["mounts"].append({"destination": "/etc/conformance/file.conf", "type": "bind",
                          "source": src, "options": ["bind", "ro"]})
    c = t.run(t.bundle(cfg))
    expect_eq("content of the file bind mount", "file content", c.stdout().strip())


@case("config/mounts", "tmpfs-options", MUST, APPLY_REF,
      APPLY + " [config.md#mounts] options (array of strings, OPTIONAL) Mount options of the "
      "filesystem to be used.")
def mounts_tmpfs_opts(t: Ctx) -> None:
    cfg = t.config(script="grep ' /opt/t ' /proc/self/mountinfo; echo mode=$(stat -c %a /opt/t)")
    cfg["mounts"].append({"destination": "/opt/t", "type": "tmpfs", "source": "tmpfs",
                          "options": ["nosuid", "nodev", "noexec", "size=1m", "mode=710"]})
    c = t.run(t.bundle(cfg))
    out = c.stdout()
    m = mountinfo(out)
    check(m, "no tmpfs mounted at /opt/t (the destination did not exist in the rootfs)")
    expect_eq("fstype", "tmpfs", m[-1]["fstype"])
    missing = {"nosuid", "nodev", "noexec"} - m[-1]["opts"]
    check(not missing, f"per-mount flags missing: {sorted(missing)} (got {sorted(m[-1]['opts'])})")
    check("size=1024k" in m[-1]["super"], f"size=1m not applied: {sorted(m[-1]['super'])}")
    expect_eq("mode of the tmpfs root", "710", kv_lines(out).get("mode"))


@case("config/mounts", "default-filesystems", SHOULD, "config-linux.md#default-filesystems",
      "The following filesystems SHOULD be made available in each container's filesystem: "
      "/proc proc, /sys sysfs, /dev/pts devpts, /dev/shm tmpfs.")
def mounts_default_fs(t: Ctx) -> None:
    out, _ = t.run_script("cat /proc/self/mountinfo")
    have = {(m["mountpoint"], m["fstype"]) for m in mountinfo(out)}
    want = {("/proc", "proc"), ("/sys", "sysfs"), ("/dev/pts", "devpts"), ("/dev/shm", "tmpfs")}
    missing = want - have
    check(not missing, f"missing: {sorted(missing)}")


# ----------------------------------------------------------------------------- hostname
@case("config/hostname", "hostname", MUST, "config.md#hostname",
      "hostname (string, OPTIONAL) specifies the container's hostname as seen by processes "
      "running inside the container. On Linux, for example, this will change the hostname "
      "in the container UTS namespace. " + APPLY)
def hostname(t: Ctx) -> None:
    def mutate(cfg: dict) -> None:
        cfg["hostname"] = "conformance-host"
    out, _ = t.run_script("hostname", mutate)
    expect_eq("hostname", "conformance-host", out.strip())
    check(os.uname().nodename != "conformance-host", "the host's hostname changed")


@case("config/hostname", "hostname-in-joined-uts", MUST, "config.md#hostname",
      "hostname (string, OPTIONAL) specifies the container's hostname as seen by processes "
      "running inside the container. On Linux, for example, this will change the hostname "
      "in the container UTS namespace. " + APPLY)
def hostname_joined(t: Ctx) -> None:
    import time
    holder = t.helper(["unshare", "--uts", "sleep", "300"])
    time.sleep(0.1)
    path = f"/proc/{holder.pid}/ns/uts"

    def mutate(cfg: dict) -> None:
        cfg["hostname"] = "conformance-joined"
        for ns in cfg["linux"]["namespaces"]:
            if ns["type"] == "uts":
                ns["path"] = path
    out, _ = t.run_script("hostname", mutate)
    expect_eq("hostname in the joined uts namespace", "conformance-joined", out.strip())
    check(os.uname().nodename != "conformance-joined", "the host's hostname changed")


@case("config/root", "no-mount-namespace", MUST, APPLY_REF,
      "If a namespace type is not specified in the namespaces array, the container MUST "
      "inherit the runtime namespace of that type. [config.md#root] path specifies the "
      "path to the root filesystem for the container. " + APPLY)
def root_without_mount_ns(t: Ctx) -> str:
    """Either root.path is the process's root, or create refuses: never the host's /."""
    cfg = t.config(["sleep", "300"])
    cfg["linux"]["namespaces"] = [n for n in cfg["linux"]["namespaces"]
                                  if n["type"] != "mount"]
    cfg["mounts"] = []
    cfg["root"]["readonly"] = False
    for key in ("maskedPaths", "readonlyPaths"):
        cfg["linux"].pop(key, None)
    b = t.bundle(cfg)
    c = t.create(b, ok=False)
    if c.create is not None and c.create.rc != 0:
        return expect_create_error(t, cfg, "no mount namespace (refused)")
    root = os.readlink(f"/proc/{c.pid}/root")
    check(root != "/", "the container process runs in the host's root")
    expect_eq("the process's root", os.path.realpath(b.rootfs), root)
    return "root.path applied"


@case("config/hostname", "domainname", MUST, "config.md#domainname",
      "domainname (string, OPTIONAL) specifies the container's domainname as seen by "
      "processes running inside the container. On Linux, for example, this will change the "
      "domainname in the container UTS namespace. " + APPLY)
def domainname(t: Ctx) -> None:
    def mutate(cfg: dict) -> None:
        cfg["domainname"] = "conformance.example"
    out, _ = t.run_script("cat /proc/sys/kernel/domainname", mutate)
    expect_eq("domainname", "conformance.example", out.strip())


# ----------------------------------------------------------------------------- misc
@case("config/annotations", "unknown-keys", MUST, "config.md#annotations",
      "Implementations that are reading/processing this configuration file MUST NOT "
      "generate an error if they encounter an unknown annotation key.")
def annotations_unknown(t: Ctx) -> None:
    def mutate(cfg: dict) -> None:
        cfg["annotations"] = {"org.example.conformance.unknown": "x",
                              "com.example.key": "", "io.example/odd key": "y"}
    out, _ = t.run_script("echo ok", mutate)
    expect_eq("output", "ok", out.strip())


@case("config/extensibility", "unknown-properties", MUST, "config.md#extensibility",
      "Runtimes that are reading or processing this configuration file MUST NOT generate an "
      "error if they encounter an unknown property. Instead they MUST ignore unknown "
      "properties.")
def unknown_properties(t: Ctx) -> None:
    def mutate(cfg: dict) -> None:
        cfg["conformanceUnknown"] = {"nested": [1, 2, 3]}
        cfg["process"]["conformanceUnknown"] = True
        cfg["process"]["user"]["conformanceUnknown"] = "x"
        cfg["root"]["conformanceUnknown"] = 1
        cfg["linux"]["conformanceUnknown"] = {}
        cfg["linux"]["resources"]["conformanceUnknown"] = None
        cfg["mounts"][0]["conformanceUnknown"] = "x"
    out, _ = t.run_script("echo ok", mutate)
    expect_eq("output", "ok", out.strip())


@case("config/valid-values", "oci-version-not-semver", MUST, "config.md#specification-version",
      "ociVersion (string, REQUIRED) MUST be in SemVer v2.0.0 format and specifies the "
      "version of the Open Container Initiative Runtime Specification with which the bundle "
      "complies. " + VALID_VALUES)
def oci_version_invalid(t: Ctx) -> str:
    cfg = t.config(["true"])
    cfg["ociVersion"] = "not-a-version"
    return expect_create_error(t, cfg, "ociVersion 'not-a-version'")


@case("config/valid-values", "unknown-namespace-type", MUST, "config.md#valid-values",
      VALID_VALUES + " [config-linux.md#namespaces] type (string, REQUIRED) - namespace "
      "type. The following namespace types SHOULD be supported: ...")
def ns_type_invalid(t: Ctx) -> str:
    cfg = t.config(["true"])
    cfg["linux"]["namespaces"].append({"type": "conformance"})
    return expect_create_error(t, cfg, "namespace type 'conformance'")

