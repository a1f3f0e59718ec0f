"""ocirun.compat's finder for the package's own modules: it takes a pyc only when
importlib would, and leaves everything else to importlib (no root needed)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def package(tmp_path: Path) -> Path:
    """A copy of the package without any pyc; returns the directory to put on sys.path."""
    shutil.copytree(REPO / "ocirun", tmp_path / "ocirun",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def _probe(root: Path, code: str, *flags: str) -> str:
    r = subprocess.run([sys.executable, "-I", "-S", *flags, "-c",
                        f"import sys; sys.path.insert(0, {str(root)!r}); {code}"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


LOADER = "import ocirun.errors as m; print(type(m.__spec__.loader).__name__, m.__file__)"


def test_modules_come_through_the_finder_once_their_pyc_exists(package: Path) -> None:
    first = _probe(package, LOADER)  # no pyc yet: importlib compiles and writes it
    pyc = package / "ocirun" / "__pycache__" / f"errors.{sys.implementation.cache_tag}.pyc"
    assert pyc.exists()
    assert first.split() == ["_PycLoader", str(package / "ocirun" / "errors.py")]
    assert _probe(package, LOADER).split()[0] == "_PycLoader"
    # packages themselves are left to importlib
    assert _probe(package, "import ocirun.cgroups as m; print(type(m.__spec__.loader).__name__)") \
        == "SourceFileLoader"


def test_a_changed_source_is_recompiled_not_run_from_its_old_pyc(package: Path) -> None:
    _probe(package, LOADER)
    source = package / "ocirun" / "errors.py"
    st = source.stat()
    source.write_text(source.read_text() + "\nMARK = 42\n")
    os.utime(source, (st.st_atime, st.st_mtime + 10))
    assert _probe(package, "import ocirun.errors as m; print(m.MARK)") == "42"
    assert _probe(package, "import ocirun.errors as m; print(m.MARK)") == "42"  # pyc rewritten


def test_a_pyc_of_another_interpreter_or_kind_is_left_to_importlib(package: Path) -> None:
    _probe(package, LOADER)
    pyc = package / "ocirun" / "__pycache__" / f"errors.{sys.implementation.cache_tag}.pyc"
    data = pyc.read_bytes()
    pyc.write_bytes(b"\0\0\0\0" + data[4:])  # another magic number
    assert _probe(package, "import ocirun.errors as m; print(m.OciError.__name__)") == "OciError"
    data = pyc.read_bytes()
    pyc.write_bytes(data[:4] + b"\3\0\0\0" + data[8:])  # a checked hash-based pyc
    assert _probe(package, "import ocirun.errors as m; print(m.OciError.__name__)") == "OciError"


def test_optimised_runs_use_importlibs_own_pycs(package: Path) -> None:
    assert _probe(package, LOADER, "-O").split()[0] == "SourceFileLoader"
