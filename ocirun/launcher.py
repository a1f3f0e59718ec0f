"""`python3 -m ocirun.launcher PATH`: write a fast `ocirun` executable at PATH.

pip's console script starts the interpreter with `site`, which here imports every
.pth hook of site-packages (~15-60 ms) before ocirun runs, and behind a version
manager's shim it adds another process.  The launcher runs the real interpreter
isolated (-I: no environment, no user site) and without site (-S), with the few
directories ocirun imports from fixed at install time.
"""

from __future__ import annotations

import importlib.util
import os
import sys

_MODULES = ("ocirun", "_prctl", "prctl", "pyseccomp", "jsonschema")

_TEMPLATE = """#!{python} -IS
import sys
sys.path[:0] = {paths!r}
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


def write_launcher(path: str) -> None:
    text = _TEMPLATE.format(python=os.path.realpath(sys.executable), paths=import_roots())
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o755)
    os.rename(tmp, path)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python3 -m ocirun.launcher PATH")
    write_launcher(sys.argv[1])
