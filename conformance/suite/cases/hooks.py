"""config.md#posix-platform-hooks and the hook steps of runtime.md#lifecycle.

Every hook is /bin/sh with a small script: it saves the state it got on stdin, appends
its name to an `order` file and records what it saw (its mount namespace, the container
process's root and command line).  Hooks of the runtime namespace write to the results
directory by its host path; hooks of the container namespace fall back to /results when
that path does not resolve (after pivot_root)."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from suite.cases.common import VALID_VALUES, expect_create_error
from suite.harness import (MUST, Bundle, Container, Ctx, Fail, case, check, expect_eq,
                           pid_alive)

HOOK_SCRIPT = r"""
name=$1; R=$2
[ -d "$R" ] || R=/results
cat > "$R/$name.json"
echo "$name" >> "$R/order"
pid=$(sed -n 's/.*"pid": *\([0-9][0-9]*\).*/\1/p' "$R/$name.json")
[ -n "$pid" ] || pid=$(sed -n 's/.*"pid": *\([0-9][0-9]*\).*/\1/p' "$R/prestart.json" 2>/dev/null)
{
  echo "mntns=$(readlink /proc/self/ns/mnt)"
  echo "results=$R"
  echo "pid=$pid"
  if [ -n "$pid" ] && [ -d "/proc/$pid" ]; then
    echo "alive=yes"
    echo "root=$(readlink /proc/$pid/root)"
    echo "cmdline=$(tr '\0' ' ' < /proc/$pid/cmdline)"
  else
    echo "alive=no"
  fi
  [ -f /conformance-rootfs-marker ] && echo "in_rootfs=yes" || echo "in_rootfs=no"
  echo "arg3=$3"
  echo "env=$CONF_HOOK_ENV"
} > "$R/$name.info"
exit ${4:-0}
"""

USER = "echo user >> /results/order; sleep 300; : conformance-user-program"
STAGES = ("prestart", "createRuntime", "createContainer", "startContainer", "poststart",
          "poststop")


def hook(name: str, results: str, exit_code: int = 0, **extra: Any) -> dict[str, Any]:
    h = {"path": "/bin/sh",
         "args": ["sh", "-c", HOOK_SCRIPT, "hook", name, results, "third-arg",
                  str(exit_code)],
         "env": ["CONF_HOOK_ENV=hook-env-value", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"]}
    h.update(extra)
    return h


def hooked_bundle(t: Ctx, stages: dict[str, list[tuple[str, int]]],
                  script: str = USER) -> Bundle:
    """A bundle whose hooks are {stage: [(name, exit code), ...]}."""
    cfg = t.config(script=script)
    cfg["annotations"] = {"org.example.conformance": "hooks"}
    b = t.bundle(cfg, prepare=lambda r: open(f"{r}/conformance-rootfs-marker", "w").close())
    b.config["hooks"] = {stage: [hook(name, b.results, code) for name, code in entries]
                         for stage, entries in stages.items()}
    b.write()
    return b


def order(b: Bundle) -> list[str]:
    return (b.result("order") or "").split()


def info(b: Bundle, name: str) -> dict[str, str]:
    out = {}
    for line in (b.result(f"{name}.info") or "").splitlines():
        k, _, v = line.partition("=")
        out[k] = v
    return out


def hook_state(b: Bundle, name: str) -> dict[str, Any]:
    raw = b.result(f"{name}.json")
    if raw is None:
        raise Fail(f"the {name} hook did not run")
    try:
        return json.loads(raw)
    except ValueError:
        raise Fail(f"{name} hook: stdin is not JSON: {raw[:200]!r}") from None


def full_lifecycle(t: Ctx) -> tuple[Bundle, Container, dict[str, list[str]]]:
    """Every hook once; returns the bundle, the container and the order seen after each
    operation returned."""
    b = hooked_bundle(t, {s: [(s, 0)] for s in STAGES})
    seen: dict[str, list[str]] = {}
    c = t.create(b)
    seen["create"] = order(b)
    c.cgroup_name = b.config["linux"]["cgroupsPath"]
    t.start(c)
    seen["start"] = order(b)
    deadline = time.monotonic() + 10
    while "user" not in order(b) and time.monotonic() < deadline:
        time.sleep(0.05)
    t.kill(c, 9)
    t.wait_exit(c)
    seen["before-delete"] = order(b)
    t.delete(c)
    seen["delete"] = order(b)
    return b, c, seen


@case("config/hooks", "prestart", MUST, "config.md#prestart",
      "The prestart hooks MUST be called as part of the create operation after the runtime "
      "environment has been created (according to the configuration in config.json) but "
      "before the pivot_root or any equivalent operation has been executed. ... The "
      "prestart hooks MUST be called before the createRuntime hooks.")
def hooks_prestart(t: Ctx) -> None:
    b, c, seen = full_lifecycle(t)
    check("prestart" in seen["create"], f"prestart did not run during create (order after "
                                        f"create: {seen['create']})")
    check("user" not in seen["create"], "the user program ran during create")
    i = info(b, "prestart")
    expect_eq("prestart: state pid is the container process", str(c.pid), i.get("pid"))
    expect_eq("prestart: root of the container process (not yet pivoted)", "/", i.get("root"))
    cr = seen["create"]
    if "createRuntime" in cr:
        check(cr.index("prestart") < cr.index("createRuntime"),
              f"prestart ran after createRuntime: {cr}")


@case("config/hooks", "createRuntime", MUST, "config.md#createruntime-hooks",
      "The createRuntime hooks MUST be called as part of the create operation after the "
      "runtime environment has been created (according to the configuration in config.json) "
      "but before the pivot_root or any equivalent operation has been executed. ... the "
      "path MUST resolve in the runtime namespace; the hooks MUST be executed in the runtime "
      "namespace.")
def hooks_create_runtime(t: Ctx) -> None:
    b, c, seen = full_lifecycle(t)
    check("createRuntime" in seen["create"], f"createRuntime did not run during create "
                                             f"(order: {seen['create']})")
    i = info(b, "createRuntime")
    expect_eq("createRuntime: root of the container process (not yet pivoted)", "/", i.get("root"))
    check(i.get("results") == b.results, "createRuntime did not run in the runtime's mount "
                                         "namespace (the host path did not resolve)")
    check(i.get("mntns") != info(b, "createContainer").get("mntns") or not
          info(b, "createContainer"), "createRuntime ran in the container's mount namespace")


@case("config/hooks", "createContainer", MUST, "config.md#createcontainer-hooks",
      "The createContainer hooks MUST be called as part of the create operation after the "
      "runtime environment has been created (according to the configuration in config.json) "
      "but before the pivot_root or any equivalent operation has been executed. The "
      "createContainer hooks MUST be called after the createRuntime hooks. ... the path "
      "MUST resolve in the container namespace; the hooks MUST be executed in the container "
      "namespace.")
def hooks_create_container(t: Ctx) -> None:
    b, c, seen = full_lifecycle(t)
    cr = seen["create"]
    check("createContainer" in cr, f"createContainer did not run during create (order: {cr})")
    if "createRuntime" in cr:
        check(cr.index("createRuntime") < cr.index("createContainer"),
              f"createContainer ran before createRuntime: {cr}")
    i = info(b, "createContainer")
    rt = info(b, "createRuntime")
    check(i.get("mntns") and i.get("mntns") != rt.get("mntns"),
          "createContainer ran in the runtime's mount namespace, not the container's")
    # Before pivot_root the container's mount namespace still shows the host's tree, so
    # the results directory's host path resolves; after it, only /results does.
    expect_eq("createContainer: host path of the results dir resolves (not yet pivoted)",
              b.results, i.get("results"))


@case("config/hooks", "startContainer", MUST, "config.md#startcontainer-hooks",
      "The startContainer hooks MUST be called before the user-specified process is executed "
      "as part of the start operation. ... the path MUST resolve in the container namespace; "
      "the hooks MUST be executed in the container namespace.")
def hooks_start_container(t: Ctx) -> None:
    b, c, seen = full_lifecycle(t)
    check("startContainer" not in seen["create"], "startContainer ran during create")
    final = seen["delete"]
    check("startContainer" in final, f"startContainer did not run (order: {final})")
    check("user" in final and final.index("startContainer") < final.index("user"),
          f"startContainer did not run before the user program: {final}")
    i = info(b, "startContainer")
    expect_eq("startContainer: ran inside the container's root", "yes", i.get("in_rootfs"))
    check(i.get("mntns") == info(b, "createContainer").get("mntns") or
          i.get("mntns") != info(b, "createRuntime").get("mntns"),
          "startContainer ran in the runtime's mount namespace")


@case("config/hooks", "poststart", MUST, "config.md#poststart",
      "The poststart hooks MUST be called after the user-specified process is executed but "
      "before the start operation returns.")
def hooks_poststart(t: Ctx) -> None:
    b, c, seen = full_lifecycle(t)
    check("poststart" not in seen["create"], "poststart ran during create, before the user "
                                             "program was executed")
    check("poststart" in seen["start"], f"poststart had not run when start returned "
                                        f"(order: {seen['start']})")
    i = info(b, "poststart")
    check("conformance-user-program" in i.get("cmdline", ""),
          f"when poststart ran, the container process was not yet the user program "
          f"(cmdline {i.get('cmdline')!r})")


@case("config/hooks", "poststop", MUST, "config.md#poststop",
      "The poststop hooks MUST be called after the container is deleted but before the "
      "delete operation returns.")
def hooks_poststop(t: Ctx) -> None:
    b, c, seen = full_lifecycle(t)
    check("poststop" not in seen["before-delete"], "poststop ran before delete")
    check("poststop" in seen["delete"], f"poststop had not run when delete returned "
                                        f"(order: {seen['delete']})")
    expect_eq("container process alive when poststop ran", "no", info(b, "poststop").get("alive"))


@case("config/hooks", "state-on-stdin", MUST, "config.md#posix-platform-hooks",
      "The state of the container MUST be passed to hooks over stdin so that they may do "
      "work appropriate to the current state of the container.")
def hooks_state(t: Ctx) -> None:
    b, c, seen = full_lifecycle(t)
    for name in STAGES:
        st = hook_state(b, name)
        expect_eq(f"{name}: id", c.id, st.get("id"))
        expect_eq(f"{name}: bundle", os.path.realpath(b.path), st.get("bundle"))
        check(isinstance(st.get("ociVersion"), str), f"{name}: no ociVersion")
        check(st.get("status") in ("creating", "created", "running", "stopped"),
              f"{name}: status {st.get('status')!r}")
        if name in ("prestart", "createRuntime", "poststart"):
            expect_eq(f"{name}: pid (as seen by the runtime)", c.pid, st.get("pid"))
        expect_eq(f"{name}: annotations", {"org.example.conformance": "hooks"},
                  st.get("annotations"))


@case("config/hooks", "args-and-env", MUST, "config.md#posix-platform-hooks",
      "args (array of strings, OPTIONAL) with the same semantics as IEEE Std 1003.1-2008 "
      "execv's argv. env (array of strings, OPTIONAL) with the same semantics as IEEE Std "
      "1003.1-2008's environ.")
def hooks_args_env(t: Ctx) -> None:
    b = hooked_bundle(t, {"prestart": [("prestart", 0)]}, script="true")
    t.run(b)
    i = info(b, "prestart")
    expect_eq("hook argv[3]", "third-arg", i.get("arg3"))
    expect_eq("hook env CONF_HOOK_ENV", "hook-env-value", i.get("env"))


@case("config/hooks", "listed-order", MUST, "config.md#posix-platform-hooks",
      "Hooks MUST be called in the listed order.")
def hooks_order(t: Ctx) -> None:
    b = hooked_bundle(t, {"prestart": [("first", 0), ("second", 0), ("third", 0)]},
                      script="true")
    t.run(b)
    expect_eq("order of the prestart hooks", ["first", "second", "third"], order(b))


def _create_hook_fails(t: Ctx, stage: str) -> None:
    b = hooked_bundle(t, {"prestart": [("prestart", 0)], stage: [("failing", 1)]}
                      if stage != "prestart" else {"prestart": [("failing", 1)]})
    c = t.create(b, ok=False)
    check(c.create is not None and c.create.rc != 0,
          f"create succeeded although a {stage} hook failed")
    check("user" not in order(b), "the user program ran")
    # The pid as seen by the runtime: from the prestart hook (runtime namespace).
    pid = str(hook_state(b, "failing" if stage == "prestart" else "prestart").get("pid", ""))
    if pid.isdigit():
        time.sleep(0.2)
        check(not pid_alive(int(pid)), f"after the failed {stage} hook the container "
                                       f"process {pid} is still alive (not stopped)")
    st = t.state(c.id, required=False)
    check(st is None or st.get("status") == "stopped",
          f"after the failed {stage} hook the container is {st and st.get('status')!r}")


FAIL_CREATE = ("If any {0} hook fails, the runtime MUST generate an error, stop the "
               "container, and continue the lifecycle at step 12.")


@case("config/hooks", "prestart-failure", MUST, "runtime.md#lifecycle",
      FAIL_CREATE.format("prestart"))
def hooks_prestart_fails(t: Ctx) -> None:
    _create_hook_fails(t, "prestart")


@case("config/hooks", "createRuntime-failure", MUST, "runtime.md#lifecycle",
      FAIL_CREATE.format("createRuntime"))
def hooks_create_runtime_fails(t: Ctx) -> None:
    _create_hook_fails(t, "createRuntime")


@case("config/hooks", "createContainer-failure", MUST, "runtime.md#lifecycle",
      FAIL_CREATE.format("createContainer"))
def hooks_create_container_fails(t: Ctx) -> None:
    _create_hook_fails(t, "createContainer")


@case("config/hooks", "startContainer-failure", MUST, "runtime.md#lifecycle",
      FAIL_CREATE.format("startContainer"))
def hooks_start_container_fails(t: Ctx) -> None:
    b = hooked_bundle(t, {"startContainer": [("failing", 1)]})
    c = t.create(b)
    r = t.start(c, ok=False)
    check(r.rc != 0, "start succeeded although a startContainer hook failed")
    time.sleep(0.3)
    check("user" not in order(b), "the user program ran after the startContainer hook failed")
    check(not pid_alive(c.pid), "the container process is still alive (not stopped)")


@case("config/hooks", "poststart-failure", MUST, "runtime.md#lifecycle",
      "If any poststart hook fails, the runtime MUST log a warning, but the remaining hooks "
      "and lifecycle continue as if the hook had succeeded.")
def hooks_poststart_fails(t: Ctx) -> None:
    b = hooked_bundle(t, {"poststart": [("failing", 1), ("after", 0)]})
    c = t.create(b, ok=False)
    if c.create is not None and c.create.rc != 0:
        raise Fail(f"create failed: a poststart hook ran (and failed) during create: "
                   f"{c.create}")
    r = t.start(c, ok=False)
    check(r.rc == 0, f"start failed because of a failing poststart hook: {r}")
    check("after" in order(b), f"the poststart hook after the failing one did not run "
                               f"(order: {order(b)})")
    expect_eq("status", "running", t.status(c.id))


@case("config/hooks", "poststop-failure", MUST, "runtime.md#lifecycle",
      "If any poststop hook fails, the runtime MUST log a warning, but the remaining hooks "
      "and lifecycle continue as if the hook had succeeded.")
def hooks_poststop_fails(t: Ctx) -> None:
    b = hooked_bundle(t, {"poststop": [("failing", 1), ("after", 0)]}, script="true")
    c = t.run(b)
    r = t.delete(c, ok=False)
    check(r.rc == 0, f"delete failed because of a failing poststop hook: {r}")
    check("after" in order(b), f"the poststop hook after the failing one did not run "
                               f"(order: {order(b)})")
    check(t.state(c.id, required=False) is None, "the container still exists after delete")


@case("config/hooks", "timeout", MUST, "config.md#posix-platform-hooks",
      "timeout (int, OPTIONAL) is the number of seconds before aborting the hook. ... "
      "[runtime.md] If any prestart hook fails, the runtime MUST generate an error, stop the "
      "container, and continue the lifecycle at step 12.")
def hooks_timeout(t: Ctx) -> None:
    cfg = t.config(["true"])
    cfg["hooks"] = {"prestart": [{"path": "/bin/sleep", "args": ["sleep", "20"], "timeout": 1}]}
    b = t.bundle(cfg)
    t0 = time.monotonic()
    c = t.create(b, ok=False, timeout=25)
    took = time.monotonic() - t0
    check(c.create is not None and c.create.rc != 0,
          f"create succeeded although the prestart hook outlived its timeout ({took:.1f}s)")
    check(took < 10, f"create took {took:.1f}s: the 1 s hook timeout was not enforced")


@case("config/hooks", "timeout-zero-refused", MUST, "config.md#posix-platform-hooks",
      "If set, timeout MUST be greater than zero. " + VALID_VALUES)
def hooks_timeout_zero(t: Ctx) -> str:
    cfg = t.config(["true"])
    cfg["hooks"] = {"prestart": [{"path": "/bin/true", "timeout": 0}]}
    return expect_create_error(t, cfg, "hook timeout 0")


@case("config/hooks", "relative-path-refused", MUST, "config.md#posix-platform-hooks",
      "This specification extends the IEEE standard in that path MUST be absolute. " +
      VALID_VALUES)
def hooks_relative_path(t: Ctx) -> str:
    cfg = t.config(["true"])
    # The relative path does resolve from the bundle (the runtime's working directory
    # here): only a runtime that checks it refuses the config.
    cfg["hooks"] = {"prestart": [{"path": "conformance-hook.sh"}]}
    b = t.bundle(cfg)
    with open(f"{b.path}/conformance-hook.sh", "w") as f:
        f.write("#!/bin/sh\nexit 0\n")
    os.chmod(f"{b.path}/conformance-hook.sh", 0o755)
    c = t.create(b, ok=False, cwd=b.path)
    check(c.create is not None and c.create.rc != 0,
          "create accepted a hook with a relative path")
    return f"error: {c.create}"

