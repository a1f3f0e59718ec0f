#!/bin/bash
# Run the cgroup tests inside a pure cgroup v2 guest (QEMU, tests/cgroup2-guest.sh) and
# exit with pytest's status.
#
#   tests/cgroup2_vm.sh [extra pytest args...]
#
# The guest boots with software emulation, where Python runs 13-30x slower than
# here: only the cgroup test files, the AppArmor test (the host has no AppArmor) and the namespace tests (the init born with its namespaces, on pure v2) run (module level and container level;
# CG2VM_TESTS overrides the list), plugin autoload is off, and the timeout is
# generous (GUEST_TIMEOUT, default 3600 s).  Most of a Python start in the guest
# is site processing (.pth files), so pytest and every `ocirun` call the
# container tests make run with -S and site-packages on PYTHONPATH instead
# (OCIRUN_TEST_PYFLAGS), with per-call timeouts and waits stretched to match.
# The code under test is read from this checkout; the guest's /tmp is a fresh
# tmpfs where pytest builds the busybox rootfs, so nothing is left behind here.
# A small blank virtio disk is attached so the io controller has a device to limit.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
guest=$here/tests/cgroup2-guest.sh
export GUEST_TIMEOUT=${GUEST_TIMEOUT:-3600}

tests=${CG2VM_TESTS:-"tests/test_cgroups.py tests/test_cgroups_limits.py tests/test_cgroups_translate.py tests/test_container_cgroups.py tests/test_systemd_cgroup.py tests/test_lsm.py tests/test_namespaces.py"}
args=""
for a in "$@"; do args="$args $(printf '%q' "$a")"; done

disk=$(mktemp /tmp/ocirun-cg2vm-disk.XXXXXX)
trap 'rm -f "$disk"' EXIT
truncate -s 16M "$disk"
export GUEST_QEMU_OPTS="${GUEST_QEMU_OPTS:-} -drive file=$disk,format=raw,if=virtio"
export GUEST_MODULES="${GUEST_MODULES:-} virtio_blk bfq"
# BFQ on the disk gives io.bfq.weight (blockIO weights); the guest is thrown away.
setup="echo bfq > /sys/block/vda/queue/scheduler 2>/dev/null || true"

# -p no:cacheprovider: the guest writes nothing into the checkout.
status=0
site=$(python3 -c 'import sysconfig as s; p = s.get_paths(); print(p["purelib"] + ":" + p["platlib"])')
env="PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 PYTHONDONTWRITEBYTECODE=1 PYTHONPATH=$(printf '%q' "$site")"
env="$env OCIRUN_TEST_PYFLAGS=-S OCIRUN_TEST_CLI_TIMEOUT=${CG2VM_CLI_TIMEOUT:-300}"
env="$env OCIRUN_TEST_SLOWDOWN=${CG2VM_SLOWDOWN:-10}"
[ -z "${OCIRUN_EXPECTED_SKIPS:-}" ] || env="$env OCIRUN_EXPECTED_SKIPS=$(printf '%q' "$OCIRUN_EXPECTED_SKIPS")"
start=$(date +%s)
"$guest" "$here" "$setup; $env python3 -S -m pytest -q -rs --durations=15 -o faulthandler_timeout=600 \
-p no:cacheprovider $tests$args" || status=$?
echo "cgroup2_vm: exit $status after $(( $(date +%s) - start )) s (wall time, boot included)" >&2
exit $status
