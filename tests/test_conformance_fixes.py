"""Fixes for conformance cases: capabilities the runtime itself lacks are warned about and
left out (config.md#linux-process), and a linux.devices path that already exists as
something else fails create (config-linux.md#devices).  Each test runs real containers
and reads what the kernel shows."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

from conftest import Runtime, proc_status
from ocirun.spec import CAPABILITIES
from test_userns import mapped_rootfs, userns  # noqa: F401 - a fixture, and its helper

# ocirun with capabilities dropped from its bounding set before it starts (as the
# conformance harness runs it without CAP_SYS_RESOURCE): as root, execve(2) then leaves
# them out of permitted and effective as well.
_DROP = ("import ctypes, os, sys\n"
         "libc = ctypes.CDLL(None, use_errno=True)\n"
         "n = int(sys.argv[1])\n"
         "for cap in sys.argv[2:2 + n]:\n"
         "    if libc.prctl(24, int(cap), 0, 0, 0) != 0:\n"  # PR_CAPBSET_DROP
         "        raise OSError(ctypes.get_errno(), 'PR_CAPBSET_DROP')\n"
         "os.execv(sys.executable, [sys.executable, '-m', 'ocirun', *sys.argv[2 + n:]])\n")

LACKING = ("CAP_SYS_RESOURCE", "CAP_SYS_TIME")
KEPT = ("CAP_KILL", "CAP_CHOWN", "CAP_NET_BIND_SERVICE")


def _mask(*names: str) -> int:
    return sum(1 << CAPABILITIES.index(n) for n in names)


def _without(runtime: Runtime, *caps: str) -> Runtime:
    """The same runtime (root, work dir, cleanup list), run without `caps`."""
    numbers = [str(CAPABILITIES.index(c)) for c in caps]
    rt = Runtime(runtime.root, runtime.work, runtime.rootfs,
                 [sys.executable, "-c", _DROP, str(len(numbers)), *numbers])
    rt.created = runtime.created  # the fixture deletes them, with the plain runtime
    rt.cgroup_prefix = runtime.cgroup_prefix
    return rt


def _request(*names: str):  # type: ignore[no-untyped-def]
    def edit(spec: dict) -> None:
        spec["process"]["capabilities"] = {
            "bounding": list(names), "effective": list(names),
            "permitted": list(names), "inheritable": [], "ambient": []}
    return edit


def _warnings(text: str, cap: str) -> list[str]:
    return [line for line in text.splitlines() if cap in line and "warning" in line]


# ------------------------------------------------------------------- capabilities
def test_unheld_capabilities_are_left_out_and_named_on_stderr(runtime: Runtime) -> None:
    rt = _without(runtime, *LACKING)
    bundle = rt.bundle(edit=_request(*KEPT, *LACKING))
    cid = rt.new_id()
    r = rt("create", "--bundle", str(bundle), cid)
    assert r.returncode == 0, r.stderr.decode()
    status = proc_status(rt.pid(cid))
    for key in ("CapBnd", "CapEff", "CapPrm"):
        assert int(status[key], 16) == _mask(*KEPT), key
    err = r.stderr.decode()
    for cap in LACKING:
        said = _warnings(err, cap)
        assert len(said) == 1, err  # once, from the runtime: not again from the init
        assert "bounding, effective, permitted" in said[0]
    assert "CAP_KILL" not in err
    r = rt("start", cid)
    assert r.returncode == 0, r.stderr.decode()


def test_unheld_capability_warning_goes_to_the_log_file(runtime: Runtime,
                                                         tmp_path: Path) -> None:
    rt = _without(runtime, *LACKING)
    log = tmp_path / "runtime.log"
    bundle = rt.bundle(["sh", "-c", "grep ^Cap /proc/self/status"],
                       edit=_request(*KEPT, *LACKING))
    r = rt("--log", str(log), "run", "--bundle", str(bundle), rt.new_id())
    assert r.returncode == 0, r.stderr.decode()
    got = dict(line.split(":\t") for line in r.stdout.decode().splitlines())
    # uid 0: execve(2) refills permitted and effective from the bounding set
    assert int(got["CapBnd"], 16) == _mask(*KEPT)
    assert int(got["CapEff"], 16) == _mask(*KEPT)
    logged = log.read_text()
    for cap in LACKING:
        assert len(_warnings(logged, cap)) == 1, logged
        assert cap not in r.stderr.decode()  # with --log, warnings go to the file


def test_held_capabilities_give_no_warning(runtime: Runtime) -> None:
    rt = _without(runtime, *LACKING)
    bundle = rt.bundle(edit=_request(*KEPT))
    cid = rt.new_id()
    r = rt("create", "--bundle", str(bundle), cid)
    assert r.returncode == 0, r.stderr.decode()
    assert b"warning" not in r.stderr
    assert int(proc_status(rt.pid(cid))["CapBnd"], 16) == _mask(*KEPT)


def test_unknown_capability_name_is_warned_about_and_ignored(runtime: Runtime) -> None:
    """config.md: logged as a warning, and the runtime SHOULD NOT fail (runc and crun
    ignore such names too)."""
    rt = _without(runtime, *LACKING)
    bundle = rt.bundle(edit=_request(*KEPT, "CAP_CONFORMANCE_UNKNOWN"))
    cid = rt.new_id()
    r = rt("create", "--bundle", str(bundle), cid)
    assert r.returncode == 0, r.stderr
    assert b"warning" in r.stderr and b"CAP_CONFORMANCE_UNKNOWN" in r.stderr
    assert b"unknown capability" in r.stderr
    assert int(proc_status(rt.pid(cid))["CapBnd"], 16) == _mask(*KEPT)


def test_user_namespace_grants_what_the_runtime_lacks(runtime: Runtime,
                                                      mapped_rootfs: Path) -> None:  # noqa: F811
    # A new user namespace comes with every capability (in it): nothing to leave out.
    rt = _without(runtime, *LACKING)

    def edit(spec: dict) -> None:
        userns(spec, mapped_rootfs)
        _request(*KEPT, *LACKING)(spec)
    cid = rt.new_id()
    r = rt("create", "--bundle", str(rt.bundle(edit=edit)), cid)
    assert r.returncode == 0, r.stderr.decode()
    assert b"warning" not in r.stderr
    status = proc_status(rt.pid(cid))
    assert int(status["CapBnd"], 16) == _mask(*KEPT, *LACKING)
    assert int(status["CapEff"], 16) == _mask(*KEPT, *LACKING)


def test_exec_leaves_out_and_names_unheld_capabilities(runtime: Runtime) -> None:
    cid = runtime.create(runtime.bundle(edit=_request(*KEPT)))
    assert runtime("start", cid).returncode == 0
    rt = _without(runtime, *LACKING)
    r = rt("exec", "--cap", "CAP_SYS_TIME", cid, "grep", "^Cap", "/proc/self/status")
    assert r.returncode == 0, r.stderr.decode()
    got = dict(line.split(":\t") for line in r.stdout.decode().splitlines())
    assert int(got["CapBnd"], 16) == _mask(*KEPT)
    assert int(got["CapEff"], 16) == _mask(*KEPT)
    assert len(_warnings(r.stderr.decode(), "CAP_SYS_TIME")) == 1, r.stderr.decode()


# ------------------------------------------------------------------------ devices
def _device_bundle(runtime: Runtime, prepare, *devices: dict):  # type: ignore[no-untyped-def]
    def edit(spec: dict) -> None:
        spec["linux"]["devices"] = list(devices)
    bundle = runtime.bundle(edit=edit, own_rootfs=True)
    prepare(bundle / "rootfs")
    return bundle


def _refused(runtime: Runtime, bundle: Path) -> str:
    cid = runtime.new_id()
    r = runtime("create", "--bundle", str(bundle), cid)
    assert r.returncode != 0
    assert runtime("state", cid).returncode != 0  # no container left behind
    lines = r.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_device_over_a_regular_file_fails_create(runtime: Runtime) -> None:
    def prepare(rootfs: Path) -> None:
        (rootfs / "devfile").write_text("a regular file, not 1:3\n")
    bundle = _device_bundle(runtime, prepare,
                            {"path": "/devfile", "type": "c", "major": 1, "minor": 3})
    err = _refused(runtime, bundle)
    assert "linux.devices[0]" in err and "/devfile" in err and "regular file" in err, err
    # the file is left as it was
    assert (bundle / "rootfs" / "devfile").read_text() == "a regular file, not 1:3\n"


def test_device_over_a_node_with_other_numbers_fails_create(runtime: Runtime) -> None:
    def prepare(rootfs: Path) -> None:
        os.mknod(rootfs / "devnode", 0o600 | stat.S_IFCHR, os.makedev(1, 5))
    bundle = _device_bundle(runtime, prepare,
                            {"path": "/devnode", "type": "c", "major": 1, "minor": 3})
    err = _refused(runtime, bundle)
    assert "/devnode" in err and "1:5" in err and "1:3" in err, err
    st = os.lstat(bundle / "rootfs" / "devnode")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 5)


def test_device_over_a_directory_fails_create(runtime: Runtime) -> None:
    def prepare(rootfs: Path) -> None:
        (rootfs / "devdir").mkdir()
    bundle = _device_bundle(runtime, prepare,
                            {"path": "/devdir", "type": "b", "major": 7, "minor": 0})
    err = _refused(runtime, bundle)
    assert "/devdir" in err and "directory" in err, err


def test_device_over_the_same_device_is_accepted(runtime: Runtime) -> None:
    def prepare(rootfs: Path) -> None:
        os.mknod(rootfs / "devnode", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    bundle = _device_bundle(runtime, prepare,
                            {"path": "/devnode", "type": "c", "major": 1, "minor": 3,
                             "fileMode": 0o640})
    cid = runtime.create(bundle)
    st = os.lstat(f"/proc/{runtime.pid(cid)}/root/devnode")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
    assert stat.S_IMODE(st.st_mode) == 0o640
