"""runtime.md: state, and the create / start / kill / delete operations."""

from __future__ import annotations

import os
import re
import time
from typing import Any

from suite.cases.common import APPLY, NOT_CREATED, SLEEP
from suite.harness import (MUST, Ctx, Fail, case, cgroup_dir, check, expect_eq, ns_inode,
                           pid_alive, read, status_fields)

SEMVER = re.compile(r"^\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$")
STATUSES = ("creating", "created", "running", "stopped")


def check_state(st: dict[str, Any], cid: str, status: str, bundle: str) -> None:
    """The State properties of runtime.md#state, as the state schema types them."""
    v = st.get("ociVersion")
    check(isinstance(v, str) and SEMVER.match(v), f"ociVersion: expected a SemVer string, got {v!r}")
    expect_eq("id", cid, st.get("id"))
    expect_eq("status", status, st.get("status"))
    pid = st.get("pid")
    if status in ("created", "running"):
        check(isinstance(pid, int) and pid > 0,
              f"pid: expected a positive integer while {status}, got {pid!r}")
    elif pid is not None:
        check(isinstance(pid, int) and pid >= 0, f"pid: expected an integer >= 0, got {pid!r}")
    expect_eq("bundle", os.path.realpath(bundle), st.get("bundle"))
    ann = st.get("annotations")
    if ann is not None:
        check(isinstance(ann, dict) and all(isinstance(k, str) and isinstance(v, str)
                                            for k, v in ann.items()),
              f"annotations: expected a map of strings, got {ann!r}")


# ----------------------------------------------------------------------------- state
@case("runtime/state", "created-container", MUST, "runtime.md#state",
      "The state of a container includes the following properties: ociVersion (REQUIRED), "
      "id (REQUIRED), status (REQUIRED), pid (REQUIRED when status is created or running "
      "on Linux), bundle (REQUIRED) ... When serialized in JSON, the format MUST adhere to "
      "the JSON Schema schema/state-schema.json.")
def state_created(t: Ctx) -> None:
    b = t.bundle(t.config(["true"]))
    c = t.create(b)
    st = t.state(c.id)
    check_state(st, c.id, "created", b.path)


@case("runtime/state", "pid-is-host-pid", MUST, "runtime.md#state",
      "pid (int, REQUIRED when status is created or running on Linux) is the ID of the "
      "container process. For hooks executed in the runtime namespace, it is the pid as "
      "seen by the runtime.")
def state_pid(t: Ctx) -> None:
    b = t.bundle(t.config(script="echo $$ > /results/pid; " + SLEEP))
    c = t.create(b)
    t.start(c)
    deadline = time.monotonic() + 10
    while b.result("pid") is None and time.monotonic() < deadline:
        time.sleep(0.05)
    pid = t.state(c.id)["pid"]
    check(pid_alive(pid), f"state pid {pid} is not a live process on the host")
    nspid = status_fields(pid).get("NSpid", "").split()
    check(len(nspid) >= 2 and nspid[-1] == "1",
          f"host pid {pid} should be pid 1 of the container's pid namespace (NSpid {nspid})")
    expect_eq("pid seen inside the container", "1", (b.result("pid") or "").strip())


@case("runtime/state", "annotations", MUST, "runtime.md#state",
      "annotations (map, OPTIONAL) contains the list of annotations associated with the "
      "container. ... [Query State] This operation MUST return the state of a container as "
      "specified in the State section.")
def state_annotations(t: Ctx) -> None:
    cfg = t.config(["true"])
    ann = {"org.example.conformance": "value 1", "org.example.other": ""}
    cfg["annotations"] = ann
    c = t.create(t.bundle(cfg))
    expect_eq("annotations", ann, t.state(c.id).get("annotations"))


@case("runtime/state", "bundle-is-absolute", MUST, "runtime.md#state",
      "bundle (string, REQUIRED) is the absolute path to the container's bundle directory. "
      "This is provided so that consumers can find the container's configuration and root "
      "filesystem on the host.")
def state_bundle_abs(t: Ctx) -> None:
    b = t.bundle(t.config(["true"]))
    cid = t.new_id()
    r = t.run_rt("create", "--bundle", os.path.basename(b.path), cid, cwd=t.dir)
    from suite.harness import Container
    c = Container(cid, b, t.path("rel.out"), t.path("rel.err"), create=r)
    t.containers.append(c)
    if r.rc != 0:
        raise Fail(f"create with a relative --bundle failed: {r}")
    st = t.state(cid)
    if st.get("pid"):
        c.track(st["pid"])
    expect_eq("bundle", os.path.realpath(b.path), st.get("bundle"))


@case("runtime/state", "without-id", MUST, "runtime.md#query-state",
      "This operation MUST generate an error if it is not provided the ID of a container.")
def state_without_id(t: Ctx) -> None:
    r = t.run_rt("state")
    check(r.rc != 0, f"`state` without an id: expected an error, got exit 0 ({r.out.strip()[:100]!r})")


@case("runtime/state", "missing-container", MUST, "runtime.md#query-state",
      "Attempting to query a container that does not exist MUST generate an error.")
def state_missing(t: Ctx) -> None:
    r = t.run_rt("state", "conformance-does-not-exist")
    check(r.rc != 0, f"state of a missing container: expected an error, got exit 0 ({r.out.strip()[:100]!r})")


@case("runtime/state", "running", MUST, "runtime.md#state",
      "running: the container process has executed the user-specified program but has not "
      "exited ... [Query State] This operation MUST return the state of a container as "
      "specified in the State section.")
def state_running(t: Ctx) -> None:
    b = t.bundle(t.config(script=SLEEP))
    c = t.create(b)
    t.start(c)
    st = t.state(c.id)
    check_state(st, c.id, "running", b.path)
    expect_eq("pid after start", c.pid, st["pid"])


@case("runtime/state", "stopped", MUST, "runtime.md#state",
      "stopped: the container process has exited ... [Query State] This operation MUST "
      "return the state of a container as specified in the State section.")
def state_stopped(t: Ctx) -> None:
    b = t.bundle(t.config(["true"]))
    c = t.run(b)
    st = t.state(c.id)
    check_state(st, c.id, "stopped", b.path)


# ----------------------------------------------------------------------------- create
@case("runtime/create", "without-id", MUST, "runtime.md#create",
      "This operation MUST generate an error if it is not provided a path to the bundle and "
      "the container ID to associate with the container.")
def create_without_id(t: Ctx) -> None:
    b = t.bundle(t.config(["true"]))
    r = t.run_rt("create", "--bundle", b.path)
    check(r.rc != 0, "create without an id: expected an error, got exit 0")
    left = [n for n in (os.listdir(t.root) if os.path.isdir(t.root) else [])
            if not n.startswith(".")]
    check(not left, f"create without an id failed but left {left} in the state root")
    check(not t.cgroup_exists(b.config["linux"]["cgroupsPath"]),
          "create without an id failed but left a cgroup")


@case("runtime/create", "without-bundle", MUST, "runtime.md#create",
      "This operation MUST generate an error if it is not provided a path to the bundle and "
      "the container ID to associate with the container.")
def create_without_bundle(t: Ctx) -> None:
    empty = t.path("not-a-bundle")
    os.makedirs(empty)
    cid = t.new_id()
    # With no --bundle the runc-style CLI uses the working directory: here, no bundle.
    r = t.run_rt("create", cid, cwd=empty)
    from suite.harness import Container
    t.containers.append(Container(cid, None, "", "", create=r))
    check(r.rc != 0, "create with no bundle (cwd holds no config.json): expected an error, "
                     "got exit 0")
    check(t.state(cid, required=False) is None, "create failed but the container exists")


@case("runtime/create", "duplicate-id", MUST, "runtime.md#create",
      "If the ID provided is not unique across all containers within the scope of the "
      "runtime, or is not valid in any other way, the implementation MUST generate an error "
      "and a new container MUST NOT be created.")
def create_duplicate(t: Ctx) -> None:
    b1 = t.bundle(t.config(script=SLEEP))
    c1 = t.create(b1)
    b2 = t.bundle(t.config(script="echo second > /results/ran"))
    c2 = t.create(b2, cid=c1.id, ok=False)
    t.containers.remove(c2)
    check(c2.create is not None and c2.create.rc != 0,
          "second create with the same id: expected an error, got exit 0")
    st = t.state(c1.id)
    expect_eq("first container's status", "created", st.get("status"))
    expect_eq("first container's pid", c1.pid, st.get("pid"))
    expect_eq("first container's bundle", os.path.realpath(b1.path), st.get("bundle"))
    check(not t.cgroup_exists(b2.config["linux"]["cgroupsPath"]),
          "the refused create left its cgroup behind")


@case("runtime/create", "program-not-run", MUST, "runtime.md#create",
      "This operation MUST create a new container. ... process.args MUST NOT be applied "
      "until triggered by the start operation.")
def create_not_run(t: Ctx) -> None:
    b = t.bundle(t.config(script="echo ran > /results/ran; " + SLEEP))
    c = t.create(b)
    time.sleep(0.3)
    check(b.result("ran") is None, "the user program ran before start")
    expect_eq("status after create", "created", t.status(c.id))
    t.start(c)
    deadline = time.monotonic() + 10
    while b.result("ran") is None and time.monotonic() < deadline:
        time.sleep(0.05)
    check(b.result("ran") is not None, "the user program did not run after start")


@case("runtime/create", "environment-applied", MUST, "runtime.md#create", APPLY)
def create_applied(t: Ctx) -> None:
    cfg = t.config(script=SLEEP)
    cfg["linux"]["resources"]["pids"] = {"limit": 123}
    c = t.create(t.bundle(cfg))
    for ns in ("pid", "net", "ipc", "uts", "mnt", "cgroup"):
        check(ns_inode(c.pid, ns) != ns_inode("self", ns),
              f"after create the container process is still in the host {ns} namespace")
    d = cgroup_dir(c.pid, "pids")
    check(d is not None, "container process has no pids cgroup")
    expect_eq("pids.max after create", "123", read(f"{d}/pids.max").strip())
    mounts = read(f"/proc/{c.pid}/mountinfo")
    check(" /results " in mounts, "after create the /results bind mount is not in the "
                                  "container's mount namespace")


@case("runtime/create", "error-leaves-nothing", MUST, "runtime.md#create", NOT_CREATED +
      " [runtime.md#errors] Unless otherwise stated, generating an error MUST leave the "
      "state of the environment as if the operation were never attempted.")
def create_error_cleanup(t: Ctx) -> None:
    cfg = t.config(["true"])
    # Fails late, inside the container's mount namespace.
    cfg["mounts"].append({"destination": "/conformance-bad", "type": "conformancefs",
                          "source": "none"})
    b = t.bundle(cfg)
    c = t.create(b, ok=False)
    check(c.create is not None and c.create.rc != 0,
          "create with a mount of an unknown filesystem type: expected an error, got exit 0")
    check(t.state(c.id, required=False) is None,
          "create failed but `state` still knows the container")
    left = t.cgroup_exists(cfg["linux"]["cgroupsPath"])
    check(not left, f"create failed but left cgroup {left}")
    # The id is free again.
    c2 = t.create(t.bundle(t.config(["true"])), cid=c.id, ok=False)
    check(c2.create is not None and c2.create.rc == 0,
          f"create failed, yet its id cannot be reused: {c2.create}")


@case("runtime/create", "config-changes-after-create", MUST, "runtime.md#lifecycle",
      "Any updates to config.json after this step MUST NOT affect the container.")
def create_config_update(t: Ctx) -> None:
    b = t.bundle(t.config(script="echo original"))
    c = t.create(b)
    b.config["process"]["args"] = ["sh", "-c", "echo changed"]
    b.config["hostname"] = "changed"
    b.write()
    t.start(c)
    t.wait_exit(c)
    expect_eq("output", "original", c.stdout().strip())


# ----------------------------------------------------------------------------- start
@case("runtime/start", "without-id", MUST, "runtime.md#start",
      "This operation MUST generate an error if it is not provided the container ID.")
def start_without_id(t: Ctx) -> None:
    r = t.run_rt("start")
    check(r.rc != 0, "`start` without an id: expected an error, got exit 0")


@case("runtime/start", "missing-container", MUST, "runtime.md#start",
      "Attempting to start a container that is not created MUST have no effect on the "
      "container and MUST generate an error.")
def start_missing(t: Ctx) -> None:
    r = t.run_rt("start", "conformance-does-not-exist")
    check(r.rc != 0, "start of a missing container: expected an error, got exit 0")


@case("runtime/start", "twice", MUST, "runtime.md#start",
      "Attempting to start a container that is not created MUST have no effect on the "
      "container and MUST generate an error.")
def start_twice(t: Ctx) -> None:
    b = t.bundle(t.config(script="echo run >> /results/runs; " + SLEEP))
    c = t.create(b)
    t.start(c)
    r = t.start(c, ok=False)
    check(r.rc != 0, "second start of a running container: expected an error, got exit 0")
    time.sleep(0.2)
    st = t.state(c.id)
    expect_eq("status after the refused start", "running", st.get("status"))
    expect_eq("pid after the refused start", c.pid, st.get("pid"))
    expect_eq("times the program ran", 1, (b.result("runs") or "").count("run"))


@case("runtime/start", "stopped-container", MUST, "runtime.md#start",
      "Attempting to start a container that is not created MUST have no effect on the "
      "container and MUST generate an error.")
def start_stopped(t: Ctx) -> None:
    b = t.bundle(t.config(script="echo run >> /results/runs"))
    c = t.run(b)
    r = t.start(c, ok=False)
    check(r.rc != 0, "start of a stopped container: expected an error, got exit 0")
    expect_eq("status after the refused start", "stopped", t.status(c.id))
    expect_eq("times the program ran", 1, (b.result("runs") or "").count("run"))


@case("runtime/start", "runs-program", MUST, "runtime.md#start",
      "This operation MUST run the user-specified program as specified by process.")
def start_runs(t: Ctx) -> None:
    b = t.bundle(t.config(["echo", "hello", "conformance"]))
    c = t.run(b)
    expect_eq("output", "hello conformance", c.stdout().strip())


@case("runtime/start", "process-not-set", MUST, "runtime.md#start",
      "This operation MUST generate an error if process was not set.")
def start_no_process(t: Ctx) -> None:
    cfg = t.config(["true"])
    del cfg["process"]
    c = t.create(t.bundle(cfg), ok=False)
    if c.create is not None and c.create.rc != 0:
        return "create refused the config (no container to start)"
    r = t.start(c, ok=False)
    check(r.rc != 0, "start of a container without process: expected an error, got exit 0")


# ----------------------------------------------------------------------------- kill
@case("runtime/kill", "without-id", MUST, "runtime.md#kill",
      "This operation MUST generate an error if it is not provided the container ID.")
def kill_without_id(t: Ctx) -> None:
    r = t.run_rt("kill")
    check(r.rc != 0, "`kill` without an id: expected an error, got exit 0")


@case("runtime/kill", "missing-container", MUST, "runtime.md#kill",
      "Attempting to send a signal to a container that is neither created nor running MUST "
      "have no effect on the container and MUST generate an error.")
def kill_missing(t: Ctx) -> None:
    r = t.run_rt("kill", "conformance-does-not-exist", "9")
    check(r.rc != 0, "kill of a missing container: expected an error, got exit 0")


@case("runtime/kill", "signal-running", MUST, "runtime.md#kill",
      "This operation MUST send the specified signal to the container process.")
def kill_running(t: Ctx) -> None:
    script = ("trap 'echo USR1 > /results/signal; exit 0' USR1; echo ready > /results/ready; "
              "while true; do sleep 0.1; done")
    b = t.bundle(t.config(script=script))
    c = t.create(b)
    t.start(c)
    deadline = time.monotonic() + 10
    while b.result("ready") is None and time.monotonic() < deadline:
        time.sleep(0.05)
    t.kill(c, 10)  # SIGUSR1
    t.wait_exit(c, 10)
    expect_eq("signal seen by the container", "USR1", (b.result("signal") or "").strip())
    expect_eq("status after the process exited", "stopped", t.status(c.id))


@case("runtime/kill", "signal-created", MUST, "runtime.md#kill",
      "This operation MUST send the specified signal to the container process. ... When the "
      "container process exits, the status MUST be stopped.")
def kill_created(t: Ctx) -> None:
    b = t.bundle(t.config(script="echo ran > /results/ran"))
    c = t.create(b)
    t.kill(c, 9)
    t.wait_exit(c, 10)
    expect_eq("status after SIGKILL of a created container", "stopped", t.status(c.id))
    check(b.result("ran") is None, "the user program ran although the container was never "
                                   "started")


@case("runtime/kill", "stopped-container", MUST, "runtime.md#kill",
      "Attempting to send a signal to a container that is neither created nor running MUST "
      "have no effect on the container and MUST generate an error.")
def kill_stopped(t: Ctx) -> None:
    b = t.bundle(t.config(["true"]))
    c = t.run(b)
    r = t.kill(c, 9, ok=False)
    check(r.rc != 0, "kill of a stopped container: expected an error, got exit 0")
    expect_eq("status", "stopped", t.status(c.id))


# ----------------------------------------------------------------------------- delete
@case("runtime/delete", "without-id", MUST, "runtime.md#delete",
      "This operation MUST generate an error if it is not provided the container ID.")
def delete_without_id(t: Ctx) -> None:
    r = t.run_rt("delete")
    check(r.rc != 0, "`delete` without an id: expected an error, got exit 0")


@case("runtime/delete", "missing-container", MUST, "runtime.md#delete",
      "Attempting to delete a container that is not stopped MUST have no effect on the "
      "container and MUST generate an error.")
def delete_missing(t: Ctx) -> None:
    r = t.run_rt("delete", "conformance-does-not-exist")
    check(r.rc != 0, "delete of a missing container: expected an error, got exit 0")


@case("runtime/delete", "running-container", MUST, "runtime.md#delete",
      "Attempting to delete a container that is not stopped MUST have no effect on the "
      "container and MUST generate an error.")
def delete_running(t: Ctx) -> None:
    c = t.create(t.bundle(t.config(script=SLEEP)))
    t.start(c)
    r = t.delete(c, ok=False)
    check(r.rc != 0, "delete of a running container: expected an error, got exit 0")
    check(pid_alive(c.pid), "the refused delete killed the container process")
    expect_eq("status after the refused delete", "running", t.status(c.id))


@case("runtime/delete", "created-container", MUST, "runtime.md#delete",
      "Attempting to delete a container that is not stopped MUST have no effect on the "
      "container and MUST generate an error.")
def delete_created(t: Ctx) -> None:
    c = t.create(t.bundle(t.config(["true"])))
    r = t.delete(c, ok=False)
    check(r.rc != 0, "delete of a created (not stopped) container: expected an error, "
                     "got exit 0 and the container was destroyed")
    check(pid_alive(c.pid), "the refused delete killed the container process")
    expect_eq("status after the refused delete", "created", t.status(c.id))


@case("runtime/delete", "removes-resources", MUST, "runtime.md#delete",
      "Deleting a container MUST delete the resources that were created during the create "
      "step. ... Once a container is deleted its ID MAY be used by a subsequent container.")
def delete_removes(t: Ctx) -> None:
    b = t.bundle(t.config(["true"]))
    c = t.run(b)
    name = b.config["linux"]["cgroupsPath"]
    check(t.cgroup_exists(name), "the container's cgroup was never created where expected "
                                 "(relative to the caller's cgroup)")
    t.delete(c)
    check(t.state(c.id, required=False) is None, "`state` still knows the deleted container")
    left = t.cgroup_exists(name)
    check(not left, f"delete left the container's cgroup: {left}")
    c2 = t.create(t.bundle(t.config(["true"])), cid=c.id, ok=False)
    check(c2.create is not None and c2.create.rc == 0,
          f"the id of a deleted container cannot be reused: {c2.create}")


@case("runtime/delete", "keeps-foreign-namespace", MUST, "runtime.md#delete",
      "Note that resources associated with the container, but not created by this "
      "container, MUST NOT be deleted.")
def delete_keeps_ns(t: Ctx) -> None:
    holder = t.helper(["unshare", "--net", "--ipc", "sleep", "300"])
    time.sleep(0.1)
    netns = ns_inode(holder.pid, "net")
    cfg = t.config(["true"])
    for ns in cfg["linux"]["namespaces"]:
        if ns["type"] == "network":
            ns["path"] = f"/proc/{holder.pid}/ns/net"
    c = t.run(t.bundle(cfg))
    t.delete(c)
    check(holder.poll() is None, "deleting the container killed the process holding the "
                                 "network namespace it joined")
    expect_eq("joined network namespace after delete", netns, ns_inode(holder.pid, "net"))


@case("runtime/delete", "keeps-preexisting-cgroup", MUST, "runtime.md#delete",
      "Deleting a container MUST delete the resources that were created during the create "
      "step. Note that resources associated with the container, but not created by this "
      "container, MUST NOT be deleted.")
def delete_keeps_cgroup(t: Ctx) -> None:
    cfg = t.config(["true"])
    name = cfg["linux"]["cgroupsPath"]
    t.own_cgroups.add(name)
    made = t.cgroup_candidates(name)  # every place a runtime may put it
    for d in made:
        os.mkdir(d)
        if os.path.exists(f"{d}/cpuset.cpus"):
            for f in ("cpuset.cpus", "cpuset.mems"):
                with open(f"{d}/{f}", "w") as w:
                    w.write(read(f"{os.path.dirname(d)}/{f}").strip())
    c = t.run(t.bundle(cfg))
    t.delete(c)
    gone = [d for d in made if not os.path.isdir(d)]
    check(not gone, f"delete removed {len(gone)} cgroup directories the container joined "
                    f"but did not create, e.g. {gone[0] if gone else ''}")


@case("runtime/lifecycle", "stopped-after-exit", MUST, "runtime.md#lifecycle",
      "The container process exits. ... [state] stopped: the container process has exited.")
def lifecycle_full(t: Ctx) -> None:
    b = t.bundle(t.config(script="exit 3"))
    c = t.create(b)
    expect_eq("status after create", "created", t.status(c.id))
    t.start(c)
    t.wait_exit(c)
    expect_eq("status after the process exited", "stopped", t.status(c.id))
    t.delete(c)
    check(t.state(c.id, required=False) is None, "`state` still knows the deleted container")

