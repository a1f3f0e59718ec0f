"""What the lifecycle commands import, and the small replacements that keep it short.

Every `ocirun` call pays interpreter start-up plus its imports: `json`, `re`, `enum`,
`typing`, `socket` and `signal` cost 4-9 ms each here, more than the work `state` or
`start` do.  These tests run each command the way the installed launcher does
(`python -I -S`) and fail when one of those modules comes back.
"""

from __future__ import annotations

import json
import signal
import sys
import sysconfig
from pathlib import Path

import pytest

from conftest import REPO, Runtime, built_launcher

from ocirun import jsonio, signals

# What no lifecycle command may import, in the parent (children are forks of it).
HEAVY = {"json", "re", "enum", "typing", "socket", "signal", "dataclasses", "inspect",
         "functools", "collections", "subprocess", "shutil", "jsonschema", "pyseccomp",
         "seccomp", "platform", "glob", "tempfile", "argparse",
         "ctypes",  # ocirun.sys.ffi is the part of it create/run need, at a third the cost
         "_prctl"}  # capset goes through ocirun.sys.ffi: no extension module for it
# ...and what the commands that never fork or mount may not need either.
NO_KERNEL_LAYER = {"ctypes", "_ctypes", "ocirun.sys", "ocirun.init", "ocirun.sync"}

PROBE = """
import sys
sys.path[:0] = %r
out, argv = sys.argv[1], sys.argv[2:]
before = set(sys.modules)
from ocirun.cli import main
code = main(argv)
with open(out, "w") as f:
    f.write("\\n".join(sorted(set(sys.modules) - before)))
sys.stdout.flush()
import os
os._exit(code)
""" % ([str(REPO), sysconfig.get_path("purelib"), sysconfig.get_path("platlib")],)


@pytest.fixture
def probed(runtime: Runtime, tmp_path: Path) -> Runtime:
    """The same runtime, each call started as `python -I -S` and recording its imports."""
    runtime.argv = [sys.executable, "-I", "-S", "-c", PROBE, str(tmp_path / "modules")]
    return runtime


def imported(rt: Runtime, *args: str) -> set[str]:
    r = rt(*args)
    assert r.returncode == 0, r.stderr.decode()
    return set((rt.work / "modules").read_text().split())


def test_lifecycle_commands_import_nothing_heavy(probed: Runtime) -> None:
    bundle = probed.bundle(["sleep", "1000"])
    cid = probed.new_id()
    seen = {"create": imported(probed, "create", "--bundle", str(bundle), cid)}
    seen["state"] = imported(probed, "state", cid)
    seen["start"] = imported(probed, "start", cid)
    seen["state running"] = imported(probed, "state", cid)
    seen["kill"] = imported(probed, "kill", cid, "KILL")
    seen["delete"] = imported(probed, "delete", "--force", cid)
    for command, modules in seen.items():
        assert not modules & HEAVY, f"{command} imports {sorted(modules & HEAVY)}"
    for command in ("state", "state running", "kill", "delete"):
        extra = seen[command] & NO_KERNEL_LAYER
        assert not extra, f"{command} imports {sorted(extra)}"
    for command in ("state", "state running", "kill", "start", "delete"):
        # start and delete read hooks back only when the config has some
        assert "ocirun.spec" not in seen[command], f"{command} parses no config"


def test_run_imports_nothing_heavy(probed: Runtime) -> None:
    bundle = probed.bundle(["true"])
    modules = imported(probed, "run", "--bundle", str(bundle), probed.new_id())
    assert not modules & HEAVY, sorted(modules & HEAVY)


@pytest.mark.parametrize("value", [
    {"a": 1, "b": [1, 2.5, {"c": None}], "d": {}, "e": [], "f": "é\"\n\t", "g": True},
    [], {}, "text", 0, -1.25e100, [[[]]], {"k": {"z": [1, {"y": []}]}},
])
def test_jsonio_writes_what_json_writes(value: object) -> None:
    for indent in (None, 2, 4):
        assert jsonio.dumps(value, indent=indent) == json.dumps(value, indent=indent)
    assert jsonio.loads(json.dumps(value)) == value
    assert jsonio.loads(json.dumps(value, indent=2).encode()) == value


@pytest.mark.parametrize("text", ["", "{", '{"a": 1} x', "[1,]", "nul", '{"a": [1,',
                                  b"\xff\xfe"])
def test_jsonio_errors_are_json_errors(text: str | bytes) -> None:
    with pytest.raises(ValueError) as ours:
        jsonio.loads(text)
    with pytest.raises(ValueError) as theirs:
        json.loads(text)
    assert str(ours.value) == str(theirs.value)


def test_jsonio_falls_back_for_what_it_does_not_handle() -> None:
    assert jsonio.dumps({1: "x"}, indent=2) == json.dumps({1: "x"}, indent=2)
    with pytest.raises(TypeError, match="not JSON serializable"):
        jsonio.dumps({"a": object()})


def test_signal_names_match_the_signal_module() -> None:
    for sig in signal.Signals:
        assert signals.number(sig.name) == sig.value
        assert signals.name(sig.value) == sig.name
    assert signals.number("SIGNOPE") is None
    assert signals.name(200) == "200"


def test_commands_run_without_the_cyclic_gc_until_they_stay(tmp_path: Path) -> None:
    """The launcher's boot code turns the collector off (a command frees by reference
    counting; collections cost `run` ~1 ms); a command that stays with its container
    (process.staying: foreground run/exec, events) turns it back on, with what exists
    by then frozen."""
    import subprocess

    from ocirun import launcher
    boot = launcher.boot_code([str(REPO)])
    boot = boot.replace("from ocirun.cli import main_and_exit\nmain_and_exit()\n", """
import gc
before = gc.isenabled()
from ocirun import process
import ocirun.run, ocirun.spec, ocirun.init
young = len(gc.get_objects(0))
process.staying()
print(before, gc.isenabled(), young, len(gc.get_objects(0)), gc.get_freeze_count())
""")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", boot], capture_output=True,
                         text=True, check=True).stdout.split()
    assert out[:2] == ["False", "True"]
    # What the imports made is out of the collector's way, not left in the young
    # generation for the first collection to walk.
    young_before, young_after, frozen = map(int, out[2:])
    assert young_before > 1000 and young_after < 100 and frozen >= young_before


def test_the_boot_code_loads_the_package_from_where_it_was_installed() -> None:
    """The launcher's boot code loads ocirun from the file recorded at install time:
    the directory holding it (site-packages, ~240 entries) is never listed.  With the
    file gone since, the plain import along sys.path still finds the package."""
    import subprocess

    from ocirun import launcher
    probe = ("import sys, ocirun.cli\n"
             "print(ocirun.__file__, %r in sys.path_importer_cache)\n" % str(REPO))
    tail = "from ocirun.cli import main_and_exit\nmain_and_exit()\n"
    boot = launcher.boot_code([str(REPO)])
    assert boot.endswith(tail)
    out = subprocess.run([sys.executable, "-I", "-S", "-c", boot.replace(tail, probe)],
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == [str(REPO / "ocirun" / "__init__.py"), "False"]

    moved = boot.replace(str(REPO / "ocirun" / "__init__.py"), "/nonexistent/ocirun/__init__.py")
    assert moved != boot
    out = subprocess.run([sys.executable, "-I", "-S", "-c", moved.replace(tail, probe)],
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == [str(REPO / "ocirun" / "__init__.py"), "True"]


def test_state_is_replaced_by_swapping_names(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The final state.json swaps names with the old one (renameat2 RENAME_EXCHANGE),
    which is then unlinked: readers see either record, nothing else is left beside it,
    and without an old one to swap with it is a plain rename."""
    import os
    from ocirun import state as st
    cdir = st.ContainerDir(str(tmp_path), "c")
    cdir.make()
    first = st.State(id="c", bundle="/b", rootfs="/b/rootfs", pid=1, creating=True)
    cdir.write(first)  # nothing to swap with
    inode = os.stat(cdir.file(st.STATE_FILE)).st_ino

    def no_rename(*_args: object) -> None:
        raise AssertionError("renamed over the old record")
    monkeypatch.setattr(os, "rename", no_rename)
    cdir.write(st.State(id="c", bundle="/b", rootfs="/b/rootfs", pid=2))
    assert os.listdir(cdir.path) == [st.STATE_FILE]
    assert os.stat(cdir.file(st.STATE_FILE)).st_ino != inode
    second = cdir.read()
    assert second is not None and second.pid == 2 and not second.creating


@pytest.mark.parametrize("caller", [None, "1"])
def test_the_launcher_binds_at_load_for_the_interpreter_only(
        runtime: Runtime, tmp_path: Path, caller: str | None) -> None:
    """launcher.c starts the interpreter with LD_BIND_NOW (a shared libpython's symbols
    bound at load: ~1.1 ms of a `run` on pyenv's build); the boot code takes it out of
    the environment again, so a hook without an env of its own does not inherit it.
    A caller's own value is left alone."""
    import os
    import shutil
    from ocirun import launcher
    if not (shutil.which("cc") or shutil.which("gcc")):
        pytest.skip("no C compiler: the launcher is a script")
    runtime.argv = built_launcher(tmp_path)
    hook = tmp_path / "hook.sh"
    hook.write_text(f"#!/bin/sh\nenv > {tmp_path}/hook-env\n"
                    f"tr '\\0' '\\n' < /proc/$PPID/environ > {tmp_path}/runtime-env\n")
    hook.chmod(0o755)
    bundle = runtime.bundle(["true"], edit=lambda spec: spec.update(
        hooks={"prestart": [{"path": str(hook)}]}))
    env = {"PATH": os.environ["PATH"], **({"LD_BIND_NOW": caller} if caller else {})}
    r = runtime("run", "--bundle", str(bundle), runtime.new_id(), env=env)
    assert r.returncode == 0, r.stderr

    def bind_now(name: str) -> list[str]:
        lines = (tmp_path / name).read_text().splitlines()
        return [line for line in lines if line.startswith("LD_BIND_NOW=")]
    assert bind_now("runtime-env") == [f"LD_BIND_NOW={caller or launcher.BIND_NOW_MARK}"]
    assert bind_now("hook-env") == ([f"LD_BIND_NOW={caller}"] if caller else [])
