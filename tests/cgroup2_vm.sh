#!/bin/bash
# Run the cgroup tests inside a pure cgroup v2 guest (QEMU, see
# /work/shared/tools/README.md) and exit with pytest's status.
#
#   tests/cgroup2_vm.sh [extra pytest args...]
#
# The guest boots with software emulation, where Python runs 13-30x slower than
# here: only the cgroup test files run (CG2VM_TESTS overrides the list), plugin
# autoload is off, and the timeout is generous (CG2VM_TIMEOUT, default 1800 s).
# Everything the guest reads lives in this checkout (its /tmp is a fresh tmpfs).
# A small blank virtio disk is attached so the io controller has a device to limit.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
tool=${CG2VM_TOOL:-/work/shared/tools/in-cgroup2-vm.sh}
[ -x "$tool" ] || tool=$here/../shared/tools/in-cgroup2-vm.sh
export CG2VM_TIMEOUT=${CG2VM_TIMEOUT:-1800}

tests=${CG2VM_TESTS:-"tests/test_cgroups.py tests/test_cgroups_limits.py tests/test_cgroups_translate.py"}
args=""
for a in "$@"; do args="$args $(printf '%q' "$a")"; done

disk=$(mktemp /tmp/ocirun-cg2vm-disk.XXXXXX)
trap 'rm -f "$disk"' EXIT
truncate -s 16M "$disk"
export CG2VM_QEMU_OPTS="${CG2VM_QEMU_OPTS:-} -drive file=$disk,format=raw,if=virtio"
export CG2VM_MODULES="${CG2VM_MODULES:-} virtio_blk bfq"
# BFQ on the disk gives io.bfq.weight (blockIO weights); the guest is thrown away.
setup="echo bfq > /sys/block/vda/queue/scheduler 2>/dev/null || true"

# -p no:cacheprovider: the guest writes nothing into the checkout.
status=0
"$tool" "$here" "$setup; PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 PYTHONDONTWRITEBYTECODE=1 \
python3 -m pytest -q -rs -p no:cacheprovider $tests$args" || status=$?
exit $status
