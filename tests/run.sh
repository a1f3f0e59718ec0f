#!/bin/sh
# Install what the tests need (idempotent) and run every test: the conformance suite,
# the cgroup tests in a pure cgroup v2 guest (our own QEMU launcher,
# tests/cgroup2-guest.sh), the pytest suite on this host, and a compatibility leg on the
# machine's other CPythons (tests/pythons.sh).  Run as root from anywhere;
# a guest that cannot boot (no QEMU) fails the run with one line saying so.
set -eu
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
need=""
for pkg in python3 python3-pip python3-dev python3-venv gcc libcap-dev libseccomp2 busybox-static \
           runc crun golang-github-containers-common qemu-system-x86 kmod apparmor; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || need="$need $pkg"
done
if [ -n "$need" ]; then
  apt-get update -qq
  apt-get install -y -qq $need >/dev/null
fi
PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install -q --root-user-action=ignore \
  --no-warn-script-location -e '.[test]'
# Keep `ocirun` on PATH pointing at this (editable) install: see install.sh.
scripts=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
for target in "$scripts/ocirun" /usr/local/bin/ocirun; do
  (cd / && python3 -m ocirun.launcher "$target")
done
[ -x tests/setup-engines.sh ] && tests/setup-engines.sh
status=0
# Every skip is printed with its reason (-rs); one not in tests/expected-skips.txt fails
# the run (here and in the guest).
export OCIRUN_EXPECTED_SKIPS="$PWD/tests/expected-skips.txt"
if [ -x conformance/run ]; then
  conformance/run --runtime ocirun --known-failures conformance/known-failures-ocirun.txt || status=1
fi
if [ -x tests/cgroup2_vm.sh ] && [ "${OCIRUN_SKIP_VM:-0}" != 1 ]; then
  tests/cgroup2_vm.sh || status=1
fi
python3 -m pytest -q -rs -p no:cacheprovider tests || status=1
# The unit tests and real containers on the machine's other CPythons (3.12, 3.13).
tests/pythons.sh || status=1
exit $status
