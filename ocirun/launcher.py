"""`python3 -m ocirun.launcher PATH`: write a fast `ocirun` executable at PATH.

pip's console script starts the interpreter with `site`, which here imports every
.pth hook of site-packages (~15-60 ms) before ocirun runs, and behind a version
manager's shim it adds another process.  The launcher runs the real interpreter
isolated (-I: no environment, no user site) and without site (-S), with the few
directories ocirun imports from fixed at install time.

With a C compiler (gcc is needed for python-prctl anyway) the launcher is the small
program in launcher.c, which also starts the interpreter sealed for the commands that
enter containers (ocirun/exeseal.py); without one it is a `#!` script, and the runtime
seals itself at the cost of one more interpreter start.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile

_MODULES = ("ocirun", "_prctl", "prctl", "pyseccomp", "jsonschema")

# The directories go after the interpreter's own, as `site` would put site-packages:
# the standard library's modules (_json, fcntl, select...) are then found without a
# listing of site-packages (~240 entries here), which `state` never needs.
# The cyclic garbage collector is off: a command lives milliseconds and frees what
# it drops by reference counting; its collections cost `run` ~1 ms.  The commands
# that stay with their container turn it back on (process.staying).  LD_BIND_NOW
# with launcher.c's value was for this interpreter's loading only (see there).
# The package itself is loaded from where it was installed, not looked up along
# sys.path: the lookup lists site-packages (~240 entries here) for a name known at
# install time, ~0.25 ms of every command.  Wherever that fails (a package moved
# since, an interpreter without these bootstrap modules) the plain import runs.
BIND_NOW_MARK = "ocirun"
_BOOT = """import gc, os, sys
gc.disable()
if os.environ.get("LD_BIND_NOW") == {mark!r}:
    del os.environ["LD_BIND_NOW"]
sys.path += {paths!r}
sys.argv[0] = "ocirun"
try:
    from _frozen_importlib import _load
    from _frozen_importlib_external import spec_from_file_location
    _load(spec_from_file_location("ocirun", {package!r}))
except Exception:
    sys.modules.pop("ocirun", None)
from ocirun.cli import main_and_exit
main_and_exit()
"""


def import_roots() -> list[str]:
    roots: list[str] = []
    for name in _MODULES:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            continue
        origin = os.path.dirname(spec.origin)
        root = os.path.dirname(origin) if spec.submodule_search_locations else origin
        if root not in roots:
            roots.append(root)
    return roots


def c_string(text: str) -> str:
    """`text` as a C string literal (octal escapes: nothing in it can end the literal)."""
    out = []
    for byte in text.encode():
        ch = chr(byte)
        out.append(ch if 0x20 <= byte < 0x7f and ch not in '"\\?' else f"\\{byte:03o}")
    return '"' + "".join(out) + '"'


def compile_launcher(path: str, python: str, boot: str) -> bool:
    """Build launcher.c into `path`; False where there is no C compiler or it fails."""
    from ocirun.exeseal import lower_dirs
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return False
    source = os.path.join(os.path.dirname(os.path.abspath(__file__)), "launcher.c")
    defines = {"OCIRUN_PYTHON": python, "OCIRUN_LOWERDIR": lower_dirs(python),
               "OCIRUN_EXE_NAME": os.path.basename(python), "OCIRUN_BOOT": boot,
               "OCIRUN_BIND_NOW": BIND_NOW_MARK}
    with tempfile.TemporaryDirectory() as tmp:
        header = os.path.join(tmp, "config.h")
        with open(header, "w") as f:
            for name, value in defines.items():
                f.write(f"#define {name} {c_string(value)}\n")
        out = os.path.join(tmp, "ocirun")
        # Static where the C library allows it: no dynamic loader on every command
        # (~0.25 ms of the launcher's ~0.5 ms).
        for static in (["-static"], []):
            r = subprocess.run([cc, "-O2", "-Wall", *static, "-include", header, "-o", out,
                                source], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            if r.returncode == 0:
                break
        if r.returncode != 0:
            sys.stderr.write(f"ocirun.launcher: {cc} failed, writing a script instead:\n"
                             f"{r.stderr.decode(errors='replace')}")
            return False
        tmp_target = f"{path}.tmp{os.getpid()}"
        shutil.copyfile(out, tmp_target)
    os.chmod(tmp_target, 0o755)
    os.rename(tmp_target, path)
    return True


def boot_code(paths: list[str] | None = None) -> str:
    """The interpreter's -c code, with the package in paths[0] (import_roots() puts it
    there)."""
    if paths is None:
        paths = import_roots()
    return _BOOT.format(paths=paths, mark=BIND_NOW_MARK,
                        package=os.path.join(paths[0], "ocirun", "__init__.py"))


def write_launcher(path: str) -> None:
    python = os.path.realpath(sys.executable)
    boot = boot_code()
    if compile_launcher(path, python, boot):
        return
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(f"#!{python} -IS\n{boot}")
    os.chmod(tmp, 0o755)
    os.rename(tmp, path)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python3 -m ocirun.launcher PATH")
    write_launcher(sys.argv[1])
