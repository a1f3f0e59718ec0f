"""A create killed at any moment, a state.json garbled or gone, two commands racing on
one id: `delete --force` still removes every process, cgroup and file of the
container, and concurrent commands on one id take turns."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import Runtime, _cgroup_leftovers, _env, wait_for


def _pids_in_cgroups(runtime: Runtime) -> set[int]:
    pids: set[int] = set()
    for directory in _cgroup_leftovers(runtime.cgroup_prefix):
        try:
            with open(os.path.join(directory, "cgroup.procs")) as f:
                pids.update(int(line) for line in f if line.strip())
        except OSError:
            pass
    return pids


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def _assert_all_gone(runtime: Runtime, cid: str, pids: set[int]) -> None:
    assert not (runtime.root / cid).exists(), "state dir left behind"
    wait_for(lambda: not any(_alive(p) for p in pids), 5, f"pids {pids} to end")
    assert not _cgroup_leftovers(runtime.cgroup_prefix), "cgroup left behind"


def _start_create(runtime: Runtime, bundle: Path, cid: str) -> subprocess.Popen:
    runtime.created.append(cid)
    return subprocess.Popen([*runtime.argv, "--root", str(runtime.root), "create",
                             "--bundle", str(bundle), cid], env=_env(),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def _create_in_prestart_hook(runtime: Runtime, tmp_path: Path,
                             script: str) -> tuple[str, subprocess.Popen]:
    """A create started in the background whose prestart hook runs `script` (sh)."""
    hook = tmp_path / "hook.sh"
    hook.write_text(f"#!/bin/sh\n{script}\n")
    hook.chmod(0o755)

    def edit(spec: dict) -> None:
        spec["hooks"] = {"prestart": [{"path": str(hook)}]}
    cid = runtime.new_id()
    return cid, _start_create(runtime, runtime.bundle(edit=edit), cid)


def test_create_killed_during_prestart_hook_is_cleaned_by_delete_force(
        runtime: Runtime, tmp_path: Path) -> None:
    """The init waits for the runtime (which is running the hook) when create dies."""
    marker = tmp_path / "hook-ran"
    cid, create = _create_in_prestart_hook(runtime, tmp_path,
                                           f"echo $$ > {marker}\nexec sleep 30")
    wait_for(marker.exists, 10, "the prestart hook")
    wait_for(lambda: marker.read_text().strip() != "", 5, "the hook's pid")
    pids = _pids_in_cgroups(runtime)
    assert pids, "the init should be in its cgroup"
    os.killpg(create.pid, signal.SIGKILL)  # create and its hook
    create.wait()
    r = runtime("delete", "--force", cid)
    assert r.returncode == 0, r.stderr
    _assert_all_gone(runtime, cid, pids)


def test_create_killed_at_random_moments_is_cleaned_by_delete_force(
        runtime: Runtime) -> None:
    bundle = runtime.bundle()
    rng = random.Random(4)
    for i in range(12):
        cid = runtime.new_id()
        create = _start_create(runtime, bundle, cid)
        time.sleep(rng.uniform(0.0, 0.25))
        pids = _pids_in_cgroups(runtime)
        os.killpg(create.pid, signal.SIGKILL)
        create.wait()
        pids |= _pids_in_cgroups(runtime)
        r = runtime("delete", "--force", cid)
        assert r.returncode == 0, (i, r.stderr)
        _assert_all_gone(runtime, cid, pids)


@pytest.mark.parametrize("damage", ["garbled", "truncated", "missing", "wrong-types",
                                    "cgroup-mode", "cgroup-paths"])
def test_delete_force_with_a_damaged_state_file_removes_everything(
        runtime: Runtime, damage: str) -> None:
    cid = runtime.create(runtime.bundle())
    pids = _pids_in_cgroups(runtime)
    state_file = runtime.root / cid / "state.json"
    if damage == "garbled":
        state_file.write_text('{"id": "x", "pid": [[[')
    elif damage == "truncated":
        state_file.write_text("")
    elif damage == "missing":
        state_file.unlink()
    elif damage == "wrong-types":
        state_file.write_text('{"pid": "1", "cgroup": 7}')
    else:  # a well-formed file whose cgroup placement is not one
        record = json.loads(state_file.read_text())
        if damage == "cgroup-mode":
            record["cgroup"]["mode"] = "v3"
        else:
            record["cgroup"]["paths"] = {"pids": 7}
        state_file.write_text(json.dumps(record))
    r = runtime("delete", "--force", cid)
    assert r.returncode == 0, r.stderr
    assert len(r.stderr.strip().splitlines()) <= 1  # at most the warning
    _assert_all_gone(runtime, cid, pids)


def test_delete_force_after_a_create_killed_between_its_mkdirs(runtime: Runtime) -> None:
    """No record, and the leaf of one hierarchy (the one whose cgroup.procs lists the
    processes) never made: what a create killed in the middle of its mkdirs leaves."""
    cid = runtime.create(runtime.bundle())
    init = json.loads((runtime.root / cid / "state.json").read_text())["pid"]
    os.kill(init, signal.SIGKILL)
    wait_for(lambda: not _alive(init), 5, "the init to die")
    leaves = _cgroup_leftovers(runtime.cgroup_prefix)
    primary = [d for d in leaves if d.startswith("/sys/fs/cgroup/pids/")] or \
        [d for d in leaves if "/unified/" not in d] or leaves
    wait_for(lambda: not _pids_in_cgroups(runtime), 5, "the cgroups to empty")
    os.rmdir(primary[0])
    (runtime.root / cid / "state.json").unlink()
    r = runtime("delete", "--force", cid)
    assert r.returncode == 0, r.stderr
    _assert_all_gone(runtime, cid, {init})


def test_plain_delete_of_a_damaged_state_file_is_a_one_line_error(runtime: Runtime) -> None:
    cid = runtime.create(runtime.bundle())
    (runtime.root / cid / "state.json").write_text("{not json")
    r = runtime("delete", cid)
    assert r.returncode != 0
    assert b"corrupt state file" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_two_concurrent_delete_force_both_succeed(runtime: Runtime) -> None:
    bundle = runtime.bundle()
    for _ in range(8):
        cid = runtime.create(bundle)
        results: list[subprocess.CompletedProcess] = []
        threads = [threading.Thread(target=lambda: results.append(
            runtime("delete", "--force", cid))) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [r.returncode for r in results] == [0, 0], [r.stderr for r in results]
        assert not (runtime.root / cid).exists()


def test_two_concurrent_creates_of_one_id_exactly_one_wins(runtime: Runtime) -> None:
    bundle = runtime.bundle()
    for _ in range(5):
        cid = runtime.new_id()
        results: list[subprocess.CompletedProcess] = []
        threads = [threading.Thread(target=lambda: results.append(
            runtime("create", "--bundle", str(bundle), cid))) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        codes = sorted(r.returncode for r in results)
        assert codes[0] == 0 and codes[1] != 0, [r.stderr for r in results]
        loser = next(r for r in results if r.returncode != 0)
        assert b"already exists" in loser.stderr, loser.stderr
        assert runtime.state(cid)["status"] == "created"
        r = runtime("delete", "--force", cid)
        assert r.returncode == 0
        assert not _cgroup_leftovers(runtime.cgroup_prefix)


def test_start_waits_for_a_create_in_progress(runtime: Runtime, tmp_path: Path) -> None:
    """Serialized on the container's lock: a start issued while create still runs
    (here: its prestart hook) starts the container once create is done."""
    go = tmp_path / "go"
    cid, create = _create_in_prestart_hook(runtime, tmp_path,
                                           f"while [ ! -e {go} ]; do sleep 0.02; done")
    wait_for(lambda: (runtime.root / cid).exists(), 10, "the state dir")
    starter = subprocess.Popen([*runtime.argv, "--root", str(runtime.root), "start", cid],
                               env=_env(), stdin=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    time.sleep(0.3)
    assert starter.poll() is None, "start did not wait for create"
    go.touch()
    assert create.wait(20) == 0
    _, err = starter.communicate(timeout=20)
    assert starter.returncode == 0, err
    assert runtime.state(cid)["status"] == "running"
