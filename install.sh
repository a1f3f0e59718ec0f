#!/bin/sh
# Install ocirun and what it needs on Debian 12, then build the example busybox bundle.
# Idempotent; run as root from the repository.
set -eu
cd "$(dirname "$0")"
export DEBIAN_FRONTEND=noninteractive
need=""
for pkg in python3 python3-pip python3-dev gcc libcap-dev libseccomp2 busybox-static; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || need="$need $pkg"
done
if [ -n "$need" ]; then
  apt-get update -qq
  apt-get install -y -qq $need >/dev/null
fi
# Debian's python3 refuses system-wide pip installs unless told otherwise (PEP 668).
PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install -q --root-user-action=ignore --no-warn-script-location .
# A launcher that runs the real interpreter with -IS (no site, no environment): a
# version manager's shim or site's .pth hooks would add tens of ms to every call.
# (Run from / so that it finds the installed package, not this checkout.)
scripts=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
for target in "$scripts/ocirun" /usr/local/bin/ocirun; do
  (cd / && python3 -m ocirun.launcher "$target")
done
bundles/build-busybox.sh >/dev/null
echo "ocirun installed: /usr/local/bin/ocirun; bundle: bundles/busybox"
