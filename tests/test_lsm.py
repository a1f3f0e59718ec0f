"""AppArmor and SELinux: a profile or label asked for is applied or refused, never
silently dropped.  The AppArmor confinement test needs the module and apparmor_parser:
the pure-v2 guest (tests/cgroup2_vm.sh) has both; this host has neither, and checks
the refusals instead."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from conftest import Runtime, needs_root
from ocirun import lsm

pytestmark = needs_root
needs_no_apparmor = pytest.mark.skipif(lsm.apparmor_enabled(),
                                       reason="AppArmor is enabled here")
needs_apparmor = pytest.mark.skipif(
    not lsm.apparmor_enabled() or shutil.which("apparmor_parser") is None,
    reason="needs AppArmor and apparmor_parser (the pure-v2 guest has both)")


def _assert_refused(runtime: Runtime, r: subprocess.CompletedProcess, field: str) -> None:
    err = r.stderr.decode()
    assert r.returncode != 0, err
    assert len(err.strip().splitlines()) == 1 and field in err, err
    assert "not enabled on this host" in err, err


@needs_no_apparmor
def test_apparmor_profile_without_apparmor_is_an_error(runtime: Runtime) -> None:
    def edit(spec: dict[str, Any]) -> None:
        spec["process"]["apparmorProfile"] = "ocirun-some-profile"
    r = runtime("run", "--bundle", str(runtime.bundle(["true"], edit=edit)),
                runtime.new_id())
    _assert_refused(runtime, r, "process.apparmorProfile")
    # "unconfined" is what the process gets anyway: nothing to refuse
    def unconfined(spec: dict[str, Any]) -> None:
        spec["process"]["apparmorProfile"] = "unconfined"
    r = runtime("run", "--bundle", str(runtime.bundle(["true"], edit=unconfined)),
                runtime.new_id())
    assert r.returncode == 0, r.stderr


@pytest.mark.skipif(lsm.selinux_enabled(), reason="SELinux is enabled here")
@pytest.mark.parametrize("field", ["process.selinuxLabel", "linux.mountLabel"])
def test_selinux_label_without_selinux_is_an_error(runtime: Runtime, field: str) -> None:
    def edit(spec: dict[str, Any]) -> None:
        obj, key = field.split(".")
        spec[obj][key] = "system_u:system_r:container_t:s0:c1,c2"
    r = runtime("run", "--bundle", str(runtime.bundle(["true"], edit=edit)),
                runtime.new_id())
    _assert_refused(runtime, r, field)


@needs_no_apparmor
def test_exec_apparmor_flag_without_apparmor_is_an_error(runtime: Runtime) -> None:
    cid = runtime.create(runtime.bundle())
    runtime("start", cid)
    r = runtime("exec", "--apparmor", "ocirun-some-profile", cid, "true")
    _assert_refused(runtime, r, "process.apparmorProfile")


def test_mount_label_goes_to_filesystems_that_take_a_context() -> None:
    label = "system_u:object_r:container_file_t:s0:c1,c2"
    assert lsm.mount_data("tmpfs", False, "mode=755", label) == \
        f'mode=755,context="{label}"'
    assert lsm.mount_data("devpts", False, "", label) == f'context="{label}"'
    for kind in ("proc", "sysfs", "cgroup", "mqueue"):
        assert lsm.mount_data(kind, False, "", label) == ""
    assert lsm.mount_data("none", True, "", label) == ""  # a bind keeps its source's
    assert lsm.mount_data("tmpfs", False, "size=1m", None) == "size=1m"


@needs_apparmor
def test_apparmor_profile_confines_the_process(runtime: Runtime, tmp_path: Path) -> None:
    """A real profile that denies reading one file: the file is readable without it,
    and with it the process runs under the profile and cannot read the file."""
    name = f"ocirun-test-{uuid.uuid4().hex[:8]}"
    profile = tmp_path / name
    profile.write_text(f"""
profile {name} flags=(attach_disconnected,mediate_deleted) {{
  file,
  capability,
  network,
  signal,
  unix,
  deny /secret r,
}}
""")
    subprocess.run(["apparmor_parser", "-r", str(profile)], check=True)
    try:
        script = "cat /proc/self/attr/current; cat /secret || echo denied"
        plain = runtime.bundle(["sh", "-c", script], own_rootfs=True)
        rootfs = plain / "rootfs"
        (rootfs / "secret").write_text("readable\n")
        r = runtime("run", "--bundle", str(plain), runtime.new_id())
        assert r.returncode == 0, r.stderr
        assert r.stdout.decode().splitlines()[-1] == "readable", r.stdout

        def confined(spec: dict[str, Any]) -> None:
            spec["root"]["path"] = str(rootfs)
            spec["process"]["apparmorProfile"] = name
        r = runtime("run", "--bundle", str(runtime.bundle(["sh", "-c", script],
                                                          edit=confined)),
                    runtime.new_id())
        assert r.returncode == 0, r.stderr
        lines = r.stdout.decode().splitlines()
        assert lines[0] == f"{name} (enforce)", lines
        assert lines[-1] == "denied", lines

        # An exec'd process gets the profile too.
        cid = runtime.create(runtime.bundle(["sleep", "100"], edit=confined))
        runtime("start", cid)
        r = runtime("exec", cid, "sh", "-c", script)
        assert r.stdout.decode().splitlines() == [f"{name} (enforce)", "denied"], r.stdout

        # A profile that is not loaded: create fails naming it, nothing left.
        def missing(spec: dict[str, Any]) -> None:
            confined(spec)
            spec["process"]["apparmorProfile"] = name + "-not-loaded"
        r = runtime("run", "--bundle", str(runtime.bundle(["true"], edit=missing)),
                    runtime.new_id())
        err = r.stderr.decode()
        assert r.returncode != 0 and "process.apparmorProfile" in err, err
        assert len(err.strip().splitlines()) == 1, err
    finally:
        runtime.cleanup()
        subprocess.run(["apparmor_parser", "-R", str(profile)], check=False)
