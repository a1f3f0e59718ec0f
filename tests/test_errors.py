"""Bad input: a one-line error naming the problem, a non-zero exit, nothing left behind."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import Runtime


def _assert_clean_failure(runtime: Runtime, r, *needles: str, code: int | None = None) -> None:
    err = r.stderr.decode()
    assert r.returncode != 0, err
    if code is not None:
        assert r.returncode == code, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    leftovers = [p for p in runtime.root.iterdir() if not p.name.startswith(".")] \
        if runtime.root.exists() else []
    assert not leftovers
    for cid in runtime.created:
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        assert cid.encode() not in f.read().split(b"\0"), f"process {pid} left"
                except OSError:
                    pass


CONFIG_ERRORS = [
    ("relative-cwd", lambda s: s["process"].update(cwd="tmp"), "process.cwd"),
    ("bad-namespace", lambda s: s["linux"]["namespaces"].append({"type": "foo"}),
     "linux.namespaces[6].type"),
    ("duplicate-namespace", lambda s: s["linux"]["namespaces"].append({"type": "pid"}),
     "linux.namespaces[6].type"),
    ("negative-uid", lambda s: s["process"]["user"].update(uid=-1), "process.user.uid"),
    ("unknown-rlimit", lambda s: s["process"]["rlimits"].append(
        {"type": "RLIMIT_FOO", "soft": 1, "hard": 1}), "process.rlimits[1].type"),
    ("bad-oci-version", lambda s: s.update(ociVersion="banana"), "ociVersion"),
    ("no-process", lambda s: s.pop("process"), "process"),
    ("args-not-list", lambda s: s["process"].update(args="sh"), "process.args"),
    ("mount-no-destination", lambda s: s["mounts"].append({"type": "tmpfs"}),
     "mounts[7].destination"),
    ("bad-seccomp-action", lambda s: s["linux"].update(seccomp={"defaultAction": "NOPE"}),
     "linux.seccomp.defaultAction"),
    ("bad-intel-rdt", lambda s: s["linux"].update(intelRdt={"closID": 5}),
     "linux.intelRdt.closID"),
]


def test_intel_rdt_is_refused_with_nothing_left_behind(runtime: Runtime) -> None:
    """config-linux.md#intelrdt: without a mounted resctrl the runtime MUST error
    (ocirun manages no resctrl groups at all, and says so where one is mounted)."""
    bundle = runtime.bundle(edit=lambda s: s["linux"].update(
        intelRdt={"closID": "ocirun-test", "l3CacheSchema": "L3:0=ff"}))
    r = runtime("create", "--bundle", str(bundle), runtime.new_id())
    _assert_clean_failure(runtime, r, "linux.intelRdt")


@pytest.mark.parametrize("name,edit,path", CONFIG_ERRORS, ids=[c[0] for c in CONFIG_ERRORS])
def test_config_error_names_the_json_path(runtime: Runtime, name: str, edit, path: str) -> None:
    bundle = runtime.bundle(edit=edit)
    r = runtime("create", "--bundle", str(bundle), runtime.new_id())
    _assert_clean_failure(runtime, r, f"config.json: {path}:", code=1)


def test_invalid_json(runtime: Runtime) -> None:
    bundle = runtime.bundle()
    (bundle / "config.json").write_text("{not json")
    r = runtime("create", "--bundle", str(bundle), runtime.new_id())
    _assert_clean_failure(runtime, r, "invalid JSON")


def test_missing_config(runtime: Runtime) -> None:
    r = runtime("create", "--bundle", str(runtime.work / "nowhere"), runtime.new_id())
    _assert_clean_failure(runtime, r, "no such file or directory")


def test_missing_rootfs(runtime: Runtime) -> None:
    bundle = runtime.bundle(edit=lambda s: s["root"].update(path="/nonexistent-rootfs"))
    r = runtime("create", "--bundle", str(bundle), runtime.new_id())
    _assert_clean_failure(runtime, r, "root.path")


@pytest.mark.parametrize("bad_id", ["a/b", "..", "with space", ""])
def test_invalid_container_id(runtime: Runtime, bad_id: str) -> None:
    r = runtime("create", "--bundle", str(runtime.bundle()), bad_id)
    _assert_clean_failure(runtime, r, "container id")


def test_missing_executable_fails_create_like_runc(runtime: Runtime) -> None:
    bundle = runtime.bundle(["no-such-binary"])
    r = runtime("create", "--bundle", str(bundle), runtime.new_id())
    _assert_clean_failure(runtime, r, 'exec: "no-such-binary": executable file not found in $PATH')


def test_missing_absolute_executable(runtime: Runtime) -> None:
    bundle = runtime.bundle(["/bin/nope"])
    r = runtime("run", "--bundle", str(bundle), runtime.new_id())
    _assert_clean_failure(runtime, r, "no such file or directory")


def test_failing_mount_leaves_nothing(runtime: Runtime) -> None:
    bundle = runtime.bundle(edit=lambda s: s["mounts"].append(
        {"destination": "/x", "type": "nosuchfs", "source": "none"}))
    r = runtime("create", "--bundle", str(bundle), runtime.new_id())
    _assert_clean_failure(runtime, r, "mount", "/x")


@pytest.mark.parametrize("command", ["start", "state", "kill", "pause", "resume", "ps"])
def test_unknown_container(runtime: Runtime, command: str) -> None:
    r = runtime(command, "ghost")
    _assert_clean_failure(runtime, r, "does not exist", code=1)


@pytest.mark.parametrize("argv,needle", [
    (("create", "--bogus", "x"), "flag provided but not defined: --bogus"),
    (("create",), "requires exactly 1 argument"),
    (("kill", "a", "SIGNOPE"), "invalid signal"),
    (("frobnicate",), "unknown command"),
    (("--log-format", "xml", "list"), "invalid --log-format"),
    (("create", "--preserve-fds", "many", "x"), "not an integer"),
])
def test_bad_flags(runtime: Runtime, argv: tuple[str, ...], needle: str) -> None:
    r = runtime(*argv)
    _assert_clean_failure(runtime, r, needle)


def test_invalid_signal(runtime: Runtime) -> None:
    cid = runtime.create(runtime.bundle())
    r = runtime("kill", cid, "SIGNOPE")
    assert r.returncode == 1 and b"invalid signal" in r.stderr


def test_json_log_lines(runtime: Runtime) -> None:
    log = runtime.work / "log.json"
    r = runtime("--log", str(log), "--log-format=json", "delete", "ghost")
    assert r.returncode == 1
    entry = json.loads(log.read_text().splitlines()[-1])
    assert entry["level"] == "error" and "does not exist" in entry["msg"]
    assert entry["time"][:4].isdigit() and "T" in entry["time"]


def test_validate_command(runtime: Runtime) -> None:
    good = runtime.bundle()
    assert runtime("validate", "--bundle", str(good)).returncode == 0
    bad = runtime.bundle(edit=lambda s: s["process"].update(cwd=5))
    r = runtime("validate", "--bundle", str(bad))
    assert r.returncode == 1 and b"process.cwd" in r.stderr


def test_spec_writes_a_config_that_runs(runtime: Runtime, tmp_path: Path) -> None:
    bundle = tmp_path / "specbundle"
    bundle.mkdir()
    assert runtime("spec", "--bundle", str(bundle)).returncode == 0
    spec = json.loads((bundle / "config.json").read_text())
    assert spec["process"]["args"] == ["sh"] and spec["root"]["path"] == "rootfs"
    r = runtime("spec", "--bundle", str(bundle))
    assert r.returncode != 0 and b"exists" in r.stderr
