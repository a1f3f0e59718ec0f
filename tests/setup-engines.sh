#!/bin/sh
# Install the container engines the engine tests drive (idempotent; run as root):
# podman + conmon, containerd (ctr), dockerd from Debian's docker.io, and umoci for
# building an OCI image layout from the busybox rootfs.  Services are never started
# here: the tests start private daemons and stop them.
set -eu
export DEBIAN_FRONTEND=noninteractive
[ "$(id -u)" = 0 ] || { echo "setup-engines: needs root" >&2; exit 0; }
need=""
for pkg in podman conmon containerd docker.io umoci zstd iptables busybox-static \
           golang-github-containers-common uidmap bsdutils; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || need="$need $pkg"
done
if [ -n "$need" ]; then
  # No init system here: keep package scripts from starting docker/containerd services.
  policy=/usr/sbin/policy-rc.d
  made_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"
    chmod 755 "$policy"
    made_policy=1
  fi
  apt-get update -qq || true
  apt-get install -y -qq --no-install-recommends $need >/dev/null || status=$?
  [ "$made_policy" = 1 ] && rm -f "$policy"
  # Without the engines their tests skip; the rest of the suite still runs.
  [ "${status:-0}" = 0 ] || { echo "setup-engines: apt-get install failed" >&2; exit 0; }
fi
echo "setup-engines: $(podman --version 2>/dev/null), containerd $(containerd --version 2>/dev/null | awk '{print $3}'), $(/usr/bin/docker --version 2>/dev/null)"
