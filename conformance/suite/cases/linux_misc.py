"""config-linux.md: sysctl, seccomp, rootfsPropagation, maskedPaths, readonlyPaths,
personality, intelRdt."""

from __future__ import annotations

import os
import platform
from typing import Any

from suite.cases.common import APPLY, VALID_VALUES, expect_create_error
from suite.harness import (MUST, Ctx, Skip, case, check, expect_eq, kv_lines, mountinfo,
                           read)


# ----------------------------------------------------------------------------- sysctl
@case("linux/sysctl", "namespaced-sysctls", MUST, "config-linux.md#sysctl",
      "sysctl (object, OPTIONAL) allows kernel parameters to be modified at runtime for the "
      "container. " + APPLY)
def sysctl(t: Ctx) -> None:
    values = {"net.ipv4.ip_forward": "1", "kernel.shm_rmid_forced": "1",
              "kernel.msgmax": "4096"}
    host = {k: read(f"/proc/sys/{k.replace('.', '/')}").strip() for k in values}

    def mutate(cfg: dict) -> None:
        cfg["linux"]["sysctl"] = values
    out, _ = t.run_script("; ".join(f"echo {k}=$(cat /proc/sys/{k.replace('.', '/')})"
                                    for k in values), mutate)
    got = kv_lines(out)
    for k, v in values.items():
        expect_eq(f"sysctl {k} inside", v, got.get(k))
    after = {k: read(f"/proc/sys/{k.replace('.', '/')}").strip() for k in values}
    expect_eq("the host's values (must not change)", host, after)


@case("linux/sysctl", "unknown-sysctl", MUST, "runtime.md#create",
      "If the runtime cannot apply a property as specified in the configuration, it MUST "
      "generate an error and a new container MUST NOT be created.")
def sysctl_unknown(t: Ctx) -> str:
    cfg = t.config(["true"])
    cfg["linux"]["sysctl"] = {"net.conformance.no_such_key": "1"}
    return expect_create_error(t, cfg, "a sysctl that does not exist")


# ----------------------------------------------------------------------------- seccomp
SECCOMP_S = ("seccomp (object, OPTIONAL) ... defaultAction (string, REQUIRED) - the default "
             "action for seccomp. syscalls (array of objects, OPTIONAL) - match a syscall in "
             "seccomp. ... names (array of strings, REQUIRED) ... action (string, REQUIRED) "
             "... errnoRet (uint, OPTIONAL) - the errno return code to use. ... If not "
             "specified then its default value is EPERM. " + APPLY)
MKDIR = "mkdir /tmp/conf-dir 2>&1 && echo mkdir=ok"


def _seccomp(rules: list[dict[str, Any]], default: str = "SCMP_ACT_ALLOW") -> dict[str, Any]:
    return {"defaultAction": default,
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
            "syscalls": rules}


@case("linux/seccomp", "errno-default-eperm", MUST, "config-linux.md#seccomp", SECCOMP_S)
def seccomp_errno(t: Ctx) -> None:
    def mutate(cfg: dict) -> None:
        cfg["linux"]["seccomp"] = _seccomp([{"names": ["mkdir", "mkdirat"],
                                             "action": "SCMP_ACT_ERRNO"}])
    out, _ = t.run_script(MKDIR + "; echo after=yes", mutate)
    check("Operation not permitted" in out, f"mkdir: expected EPERM, got {out.strip()!r}")
    check("after=yes" in out, "the shell did not continue after the refused syscall")


@case("linux/seccomp", "errno-ret", MUST, "config-linux.md#seccomp", SECCOMP_S)
def seccomp_errno_ret(t: Ctx) -> None:
    def mutate(cfg: dict) -> None:
        cfg["linux"]["seccomp"] = _seccomp([{"names": ["mkdir", "mkdirat"],
                                             "action": "SCMP_ACT_ERRNO", "errnoRet": 28}])
    out, _ = t.run_script(MKDIR, mutate)
    check("No space left on device" in out, f"mkdir: expected ENOSPC (errnoRet 28), got "
                                            f"{out.strip()!r}")


@case("linux/seccomp", "argument-filter", MUST, "config-linux.md#seccomp", SECCOMP_S +
      " args (array of objects, OPTIONAL) - the specific syscall in seccomp. index (uint, "
      "REQUIRED) ... value (uint64, REQUIRED) ... op (string, REQUIRED).")
def seccomp_args(t: Ctx) -> None:
    def mutate(cfg: dict) -> None:
        cfg["linux"]["seccomp"] = _seccomp([
            {"names": ["chmod"], "action": "SCMP_ACT_ERRNO",
             "args": [{"index": 1, "value": 0o777, "op": "SCMP_CMP_EQ"}]},
            {"names": ["fchmodat"], "action": "SCMP_ACT_ERRNO",
             "args": [{"index": 2, "value": 0o777, "op": "SCMP_CMP_EQ"}]}])
    out, _ = t.run_script("touch /tmp/f; chmod 700 /tmp/f && echo c700=ok; "
                          "chmod 777 /tmp/f 2>/dev/null && echo c777=ok || echo c777=denied",
                          mutate)
    got = kv_lines(out)
    expect_eq("chmod 700 (not matched)", "ok", got.get("c700"))
    expect_eq("chmod 777 (matched)", "denied", got.get("c777"))


@case("linux/seccomp", "without-no-new-privileges", MUST, "config-linux.md#seccomp", SECCOMP_S)
def seccomp_no_nnp(t: Ctx) -> None:
    def mutate(cfg: dict) -> None:
        cfg["process"]["noNewPrivileges"] = False
        cfg["linux"]["seccomp"] = _seccomp([{"names": ["mkdir", "mkdirat"],
                                             "action": "SCMP_ACT_ERRNO"}])
    out, _ = t.run_script(MKDIR, mutate)
    check("Operation not permitted" in out, f"mkdir: expected EPERM, got {out.strip()!r}")


@case("linux/seccomp", "errno-ret-on-allow-refused", MUST, "config-linux.md#seccomp",
      "errnoRet (uint, OPTIONAL) - the errno return code to use. Some actions like "
      "SCMP_ACT_ERRNO and SCMP_ACT_TRACE allow to specify the errno code to return. When "
      "the action doesn't support an errno, the runtime MUST print and error and fail.")
def seccomp_errno_on_allow(t: Ctx) -> str:
    cfg = t.config(["true"])
    cfg["linux"]["seccomp"] = _seccomp([{"names": ["mkdir"], "action": "SCMP_ACT_LOG",
                                         "errnoRet": 1}])
    return expect_create_error(t, cfg, "errnoRet on SCMP_ACT_LOG")


@case("linux/seccomp", "unknown-action-refused", MUST, "config-linux.md#seccomp",
      "action (string, REQUIRED) - the action for seccomp rules. A valid list of constants "
      "as of libseccomp v2.5.0 is shown below. " + VALID_VALUES)
def seccomp_bad_action(t: Ctx) -> str:
    cfg = t.config(["true"])
    cfg["linux"]["seccomp"] = _seccomp([{"names": ["mkdir"], "action": "SCMP_ACT_CONFORMANCE"}])
    return expect_create_error(t, cfg, "seccomp action SCMP_ACT_CONFORMANCE")


# ----------------------------------------------------------------------------- propagation
PROPAGATION = ("rootfsPropagation (string, OPTIONAL) sets the rootfs's mount propagation. "
               "Its value is either shared, slave, private or unbindable. " + APPLY)


def _root_mount(t: Ctx, propagation: str) -> dict[str, Any]:
    def mutate(cfg: dict) -> None:
        cfg["linux"]["rootfsPropagation"] = propagation
    out, _ = t.run_script("cat /proc/self/mountinfo", mutate)
    roots = [m for m in mountinfo(out) if m["mountpoint"] == "/"]
    check(roots, "no / in the container's mountinfo")
    return roots[-1]


def _tags(m: dict[str, Any]) -> set[str]:
    return {o.split(":")[0] for o in m["optional"]}


@case("linux/rootfs-propagation", "shared", MUST, "config-linux.md#rootfs-mount-propagation",
      PROPAGATION)
def prop_shared(t: Ctx) -> None:
    m = _root_mount(t, "shared")
    check("shared" in _tags(m), f"/ is not shared: optional fields {m['optional']}")


@case("linux/rootfs-propagation", "private", MUST, "config-linux.md#rootfs-mount-propagation",
      PROPAGATION)
def prop_private(t: Ctx) -> None:
    m = _root_mount(t, "private")
    check(not _tags(m) & {"shared", "master", "unbindable"},
          f"/ is not private: optional fields {m['optional']}")


@case("linux/rootfs-propagation", "slave", MUST, "config-linux.md#rootfs-mount-propagation",
      PROPAGATION)
def prop_slave(t: Ctx) -> str:
    m = _root_mount(t, "slave")
    check("shared" not in _tags(m), f"/ is shared, not a slave: {m['optional']}")
    # A slave has a master only if the host mount under the bundle was shared.
    return "host mounts are private here: only 'not shared' is observable"


@case("linux/rootfs-propagation", "unbindable", MUST,
      "config-linux.md#rootfs-mount-propagation", PROPAGATION)
def prop_unbindable(t: Ctx) -> None:
    m = _root_mount(t, "unbindable")
    check("unbindable" in _tags(m), f"/ is not unbindable: optional fields {m['optional']}")


# ----------------------------------------------------------------------------- masked, readonly
def _secret_rootfs(rootfs: str) -> None:
    os.makedirs(f"{rootfs}/conf-secret-dir")
    with open(f"{rootfs}/conf-secret-dir/file", "w") as f:
        f.write("secret\n")
    with open(f"{rootfs}/conf-secret-file", "w") as f:
        f.write("secret\n")
    os.makedirs(f"{rootfs}/conf-ro-dir")
    os.chmod(f"{rootfs}/conf-ro-dir", 0o777)
    with open(f"{rootfs}/conf-ro-dir/file", "w") as f:
        f.write("readable\n")


@case("linux/masked-paths", "files-and-directories", MUST, "config-linux.md#masked-paths",
      "maskedPaths (array of strings, OPTIONAL) will mask over the provided paths inside the "
      "container so that they cannot be read. The values MUST be absolute paths in the "
      "container namespace. " + APPLY)
def masked(t: Ctx) -> None:
    def mutate(cfg: dict) -> None:
        cfg["linux"]["maskedPaths"] = ["/conf-secret-dir", "/conf-secret-file", "/proc/kcore"]
    script = ("echo file=$(cat /conf-secret-file 2>&1 | wc -c); "
              "echo dir=$(ls -A /conf-secret-dir | wc -l); "
              "echo dirfile=$(cat /conf-secret-dir/file 2>/dev/null | wc -c); "
              "echo kcore=$(head -c 16 /proc/kcore 2>/dev/null | wc -c)")
    out, _ = t.run_script(script, mutate, prepare=_secret_rootfs)
    got = kv_lines(out)
    expect_eq("bytes readable from a masked file", "0", got.get("file"))
    expect_eq("entries in a masked directory", "0", got.get("dir"))
    expect_eq("bytes readable under a masked directory", "0", got.get("dirfile"))
    expect_eq("bytes readable from masked /proc/kcore", "0", got.get("kcore"))


@case("linux/readonly-paths", "directory-and-proc", MUST, "config-linux.md#readonly-paths",
      "readonlyPaths (array of strings, OPTIONAL) will set the provided paths as readonly "
      "inside the container. The values MUST be absolute paths in the container namespace. "
      + APPLY)
def readonly(t: Ctx) -> None:
    def mutate(cfg: dict) -> None:
        cfg["linux"]["readonlyPaths"] = ["/conf-ro-dir", "/proc/sys"]
    script = ("echo read=$(cat /conf-ro-dir/file); "
              "touch /conf-ro-dir/new 2>/dev/null && echo write=yes || echo write=no; "
              "echo x > /proc/sys/kernel/hostname 2>/dev/null && echo sys=yes || echo sys=no; "
              "touch /conf-elsewhere && echo other=yes")
    out, _ = t.run_script(script, mutate, prepare=_secret_rootfs)
    got = kv_lines(out)
    expect_eq("reading a readonly path", "readable", got.get("read"))
    expect_eq("writing under a readonly directory", "no", got.get("write"))
    expect_eq("writing /proc/sys/kernel/hostname under readonly /proc/sys", "no", got.get("sys"))
    expect_eq("writing elsewhere in the rootfs", "yes", got.get("other"))


# ----------------------------------------------------------------------------- personality
@case("linux/personality", "linux32", MUST, "config-linux.md#personality",
      "personality (object, OPTIONAL) sets the Linux execution personality. ... domain "
      "(string, REQUIRED) the execution domain. The valid list of constants is shown below. "
      "LINUX32 will set the uname system call to show a 32 bit CPU type, such as i686. "
      + APPLY)
def personality(t: Ctx) -> None:
    if platform.machine() not in ("x86_64", "aarch64", "ppc64le", "s390x"):
        raise Skip(f"no 32-bit personality known for {platform.machine()}")

    def mutate(cfg: dict) -> None:
        cfg["linux"]["personality"] = {"domain": "LINUX32"}
    out, _ = t.run_script("uname -m", mutate)
    want = {"x86_64": "i686", "aarch64": "armv8l", "ppc64le": "ppc", "s390x": "s390"}
    expect_eq("uname -m", want[platform.machine()], out.strip())


# ----------------------------------------------------------------------------- intelRdt
@case("linux/intel-rdt", "without-resctrl", MUST, "config-linux.md#intelrdt",
      "If intelRdt is set, the runtime MUST write the container process ID to the tasks file "
      "in a proper sub-directory in a mounted resctrl pseudo-filesystem. ... If no mounted "
      "resctrl pseudo-filesystem is available in the runtime mount namespace, the runtime "
      "MUST generate an error.")
def intel_rdt(t: Ctx) -> str:
    if any(line.split()[2] == "resctrl" for line in read("/proc/mounts").splitlines()):
        raise Skip("a resctrl filesystem is mounted: the error case cannot be exercised")
    cfg = t.config(["true"])
    cfg["linux"]["intelRdt"] = {"closID": "conformance", "l3CacheSchema": "L3:0=ff"}
    return expect_create_error(t, cfg, "intelRdt without a mounted resctrl")
