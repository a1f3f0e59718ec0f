"""ps, kill --all, pause/resume, update and events on real containers."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import OCIRUN, Runtime, _env, wait_for


def _running(runtime: Runtime, edit: Any = None, args: list[str] | None = None) -> str:
    cid = runtime.create(runtime.bundle(args, edit=edit))
    assert runtime("start", cid).returncode == 0
    return cid


def _cgroup(runtime: Runtime, cid: str) -> dict[str, Any]:
    return json.loads((runtime.root / cid / "state.json").read_text())["cgroup"]


def _read(cg: dict[str, Any], v1: tuple[str, str], v2: str) -> str:
    if cg["mode"] == "unified":
        path = os.path.join(cg["paths"][""], v2)
    else:
        path = os.path.join(cg["paths"][v1[0]], v1[1])
    with open(path) as f:
        return f.read().strip()


def _memory_limit(cg: dict[str, Any]) -> int:
    raw = _read(cg, ("memory", "memory.limit_in_bytes"), "memory.max")
    return -1 if raw == "max" else int(raw)


def _pids_limit(cg: dict[str, Any]) -> str:
    return _read(cg, ("pids", "pids.max"), "pids.max")


def test_ps_lists_host_pids_as_json_and_table(runtime: Runtime) -> None:
    cid = _running(runtime, args=["sh", "-c", "sleep 1000 & sleep 1000"])
    init = runtime.pid(cid)
    wait_for(lambda: len(json.loads(runtime("ps", "--format", "json", cid).stdout)) == 2,
             what="two processes")
    pids = json.loads(runtime("ps", "--format", "json", cid).stdout)
    assert init in pids and all(os.path.exists(f"/proc/{p}") for p in pids)
    table = runtime("ps", cid, "-o", "pid").stdout.decode().split()
    assert table[0] == "PID" and {int(p) for p in table[1:]} == set(pids)


def test_kill_all_signals_every_process(runtime: Runtime) -> None:
    cid = _running(runtime, args=["sh", "-c", "sleep 1000 & sleep 1000"])
    wait_for(lambda: len(json.loads(runtime("ps", "--format", "json", cid).stdout)) == 2,
             what="two processes")
    pids = json.loads(runtime("ps", "--format", "json", cid).stdout)
    assert runtime("kill", "--all", cid, "KILL").returncode == 0
    runtime.wait_status(cid, "stopped")
    wait_for(lambda: all(not os.path.exists(f"/proc/{p}/cmdline") or
                         open(f"/proc/{p}/stat").read().split(") ")[1][0] == "Z"
                         for p in pids), what="every process gone")


def test_pause_and_resume_freeze_every_process(runtime: Runtime) -> None:
    cid = _running(runtime)
    pid = runtime.pid(cid)
    assert runtime("pause", cid).returncode == 0
    assert runtime.state(cid)["status"] == "paused"
    r = runtime("pause", cid)
    assert r.returncode != 0  # already paused
    assert runtime("resume", cid).returncode == 0
    assert runtime.state(cid)["status"] == "running"
    assert os.path.exists(f"/proc/{pid}")
    r = runtime("resume", cid)
    assert r.returncode != 0 and b"paused" not in r.stdout


def test_update_from_flags(runtime: Runtime) -> None:
    cid = _running(runtime)
    r = runtime("update", "--memory", "64m", "--pids-limit", "55", cid)
    assert r.returncode == 0, r.stderr
    cg = _cgroup(runtime, cid)
    assert _memory_limit(cg) == 64 << 20
    assert _pids_limit(cg) == "55"
    if cg["mode"] != "unified":
        assert runtime("update", "--cpu-share", "512", cid).returncode == 0
        assert _read(cg, ("cpu", "cpu.shares"), "") == "512"
        assert runtime("update", "--cpu-quota", "50000", "--cpu-period", "100000",
                       cid).returncode == 0
        assert _read(cg, ("cpu", "cpu.cfs_quota_us"), "") == "50000"


def test_update_from_a_resources_file_and_stdin(runtime: Runtime, tmp_path: Path) -> None:
    cid = _running(runtime)
    f = tmp_path / "resources.json"
    f.write_text(json.dumps({"memory": {"limit": 100 << 20}, "pids": {"limit": 77}}))
    assert runtime("update", "--resources", str(f), cid).returncode == 0
    cg = _cgroup(runtime, cid)
    assert _memory_limit(cg) == 100 << 20 and _pids_limit(cg) == "77"
    data = json.dumps({"pids": {"limit": 66}}).encode()
    r = runtime("update", "-r", "-", "--memory", "80M", cid, input=data)
    assert r.returncode == 0, r.stderr
    assert _memory_limit(cg) == 80 << 20 and _pids_limit(cg) == "66"


def test_update_rejects_bad_input_and_stopped_containers(runtime: Runtime,
                                                          tmp_path: Path) -> None:
    cid = _running(runtime)
    r = runtime("update", "--memory", "lots", cid)
    assert r.returncode != 0 and b"--memory" in r.stderr
    (tmp_path / "bad.json").write_text('{"pids": {"limit": "many"}}')
    r = runtime("update", "--resources", str(tmp_path / "bad.json"), cid)
    assert r.returncode != 0 and b"resources.pids.limit" in r.stderr
    assert runtime("kill", cid, "KILL").returncode == 0
    runtime.wait_status(cid, "stopped")
    r = runtime("update", "--pids-limit", "10", cid)
    assert r.returncode != 0 and b"stopped" in r.stderr
    r = runtime("update", "--pids-limit", "10", "no-such-container")
    assert r.returncode != 0 and b"does not exist" in r.stderr


def test_events_stats_prints_one_stats_object(runtime: Runtime) -> None:
    cid = _running(runtime, edit=lambda s: s["linux"].setdefault("resources", {}).update(
        pids={"limit": 99}))
    r = runtime("events", "--stats", cid)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.decode().splitlines()
    assert len(lines) == 1
    event = json.loads(lines[0])
    assert event["type"] == "stats" and event["id"] == cid
    data = event["data"]
    assert data["pids"]["current"] >= 1 and data["pids"]["limit"] == 99
    assert data["memory"]["usage"]["usage"] > 0
    assert data["cpu"]["usage"]["total"] > 0


def test_events_streams_stats_and_oom_until_the_container_stops(runtime: Runtime) -> None:
    def edit(s: dict[str, Any]) -> None:
        s["linux"].setdefault("resources", {})["memory"] = {"limit": 24 << 20}
    cid = _running(runtime, edit)
    proc = subprocess.Popen([*OCIRUN, "--root", str(runtime.root), "events", "--interval",
                             "300ms", cid], env=_env(), stdout=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        r = runtime("exec", cid, "dd", "if=/dev/zero", "of=/dev/null", "bs=100M", "count=1")
        if r.returncode != 137:
            pytest.skip(f"no OOM kill with a 24M limit here (dd: {r.returncode})")
        time.sleep(0.8)
        assert runtime("kill", cid, "KILL").returncode == 0
        assert proc.stdout is not None
        out, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0
    finally:
        proc.kill()
        proc.wait()
    events = [json.loads(line) for line in out.decode().splitlines()]
    kinds = [e["type"] for e in events]
    assert "oom" in kinds and kinds.count("stats") >= 2
    assert all(e["id"] == cid for e in events)


def test_events_of_a_stopped_container_fails(runtime: Runtime) -> None:
    cid = runtime.create(runtime.bundle(["true"]))
    runtime("start", cid)
    runtime.wait_status(cid, "stopped")
    r = runtime("events", "--stats", cid)
    assert r.returncode != 0 and b"not running" in r.stderr
    r = runtime("events", "--interval", "soon", cid)
    assert r.returncode != 0


def test_parse_helpers() -> None:
    from ocirun.events import parse_duration
    from ocirun.update import parse_bytes
    assert parse_duration("5s") == 5 and parse_duration("1m30s") == 90
    assert abs(parse_duration("250ms") - 0.25) < 1e-9 and parse_duration("2") == 2
    assert parse_bytes("100m") == 100 << 20 and parse_bytes("1g") == 1 << 30
    assert parse_bytes("1.5GiB") == 3 << 29 and parse_bytes("-1") == -1
    assert parse_bytes("4096") == 4096 and parse_bytes("512kb") == 512 << 10


def test_zero_limits_mean_unchanged_as_in_runc(tmp_path: Path) -> None:
    from ocirun.update import build_resources
    f = tmp_path / "r.json"
    # what dockerd sends for `docker update --memory 64m`: Go zero values elsewhere
    f.write_text(json.dumps({
        "blockIO": {"weight": 0}, "pids": {"limit": 0},
        "cpu": {"shares": 0, "quota": 0, "period": 0, "realtimeRuntime": 0,
                "realtimePeriod": 0, "cpus": "", "mems": ""},
        "memory": {"limit": 64 << 20, "reservation": 0, "swap": 0, "kernel": 0,
                   "kernelTCP": 0}}))
    r = build_resources(str(f), {})
    assert r.memory is not None and r.memory.limit == 64 << 20 and r.memory.swap is None
    assert r.pids_limit is None
    assert r.cpu is not None and (r.cpu.shares, r.cpu.quota, r.cpu.period, r.cpu.cpus) == (
        None, None, None, None)
    assert r.block_io is not None and r.block_io.weight is None
