#!/bin/sh
# The compatibility leg: the unit tests and real containers (lifecycle, seccomp cache)
# on every other CPython >= 3.11 this machine has (pyenv's 3.12 and 3.13 here, and
# Debian's python3 where python3 is another build, as pyenv's 3.11 is here), so a
# private C module ocirun uses (ocirun/compat.py, ocirun/sys/ffi.py) that a release
# renamed is seen, and the interpreter README recommends is tested.
# Each interpreter gets a venv with the runtime's and the tests' packages (made once,
# reused), and reads ocirun from this checkout.  No other interpreter: nothing to do.
set -eu
cd "$(dirname "$0")/.."
venvs=${OCIRUN_PY_VENVS:-/var/tmp/ocirun-python-venvs}
tests="tests/test_architecture.py tests/test_sys_arch.py tests/test_first_child_unit.py
tests/test_cgroup_placement_unit.py tests/test_cgroups_translate.py tests/test_validate.py
tests/test_create_protocol.py tests/test_lifecycle.py tests/test_seccomp.py tests/test_fstree.py tests/test_module_finder.py tests/test_signal_exact.py tests/test_ffi.py"
status=0
found=""
main=$(python3 -c 'import os, sys; print(os.path.realpath(sys.executable))')
for py in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/*/bin/python3 /usr/bin/python3.1[1-9]; do
  [ -x "$py" ] || continue
  [ "$(realpath "$py")" = "$main" ] && continue  # the main leg
  version=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  case "$version" in 3.1[1-9]) ;; *) continue ;; esac
  case " $found " in *" $version "*) continue ;; esac
  found="$found $version"
  venv=$venvs/$version
  if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import pytest, prctl, pyseccomp, jsonschema' 2>/dev/null; then
    log=$(mktemp)
    if ! { "$py" -m venv "$venv" && "$venv/bin/python" -m pip install -q \
           --disable-pip-version-check jsonschema python-prctl pyseccomp pytest hypothesis \
           hypothesis-jsonschema; } >"$log" 2>&1; then
      echo "pythons: preparing $venv for CPython $version failed:"; tail -5 "$log"
      rm -f "$log"; exit 1
    fi
    rm -f "$log"
  fi
  echo "== CPython $version ($py)"
  # shellcheck disable=SC2086
  PYTHONPATH=$PWD "$venv/bin/python" -m pytest -q -p no:cacheprovider $tests || status=1
done
[ -n "$found" ] || echo "pythons: no CPython >= 3.11 besides the main one: nothing to run"
exit $status
