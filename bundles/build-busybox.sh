#!/bin/sh
# Build an OCI bundle from Debian's busybox-static: bundles/busybox/{rootfs,config.json}.
# Usage: bundles/build-busybox.sh [DEST]   (DEST defaults to bundles/busybox)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
dest=${1:-$here/busybox}
busybox=$(command -v busybox || true)
[ -n "$busybox" ] || busybox=/bin/busybox
case "$(ldd "$busybox" 2>&1)" in
  *"not a dynamic executable"*|*"statically linked"*) ;;
  *) echo "build-busybox: $busybox is not static: apt-get install busybox-static" >&2; exit 1 ;;
esac
rootfs=$dest/rootfs
mkdir -p "$rootfs"
for d in bin sbin usr/bin usr/sbin etc proc sys dev tmp root home var/tmp run; do
  mkdir -p "$rootfs/$d"
done
chmod 1777 "$rootfs/tmp" "$rootfs/var/tmp"
cp "$busybox" "$rootfs/bin/busybox"
for applet in $("$rootfs/bin/busybox" --list); do
  [ "$applet" = busybox ] || ln -sf busybox "$rootfs/bin/$applet"
done
cat > "$rootfs/etc/passwd" <<'PW'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
PW
cat > "$rootfs/etc/group" <<'GR'
root:x:0:
tty:x:5:
nogroup:x:65534:
GR
echo "ocirun" > "$rootfs/etc/hostname"
if [ ! -f "$dest/config.json" ]; then
  # The config is `ocirun spec`'s default, made non-interactive for the demo.
  PYTHONPATH="$here/..${PYTHONPATH:+:$PYTHONPATH}" python3 -m ocirun spec --bundle "$dest"
  python3 - "$dest/config.json" <<'PY'
import json, sys
with open(sys.argv[1]) as f:
    spec = json.load(f)
spec["process"]["terminal"] = False
spec["process"]["args"] = ["sh", "-c", "echo hello from $(hostname): pid $$, $(id)"]
with open(sys.argv[1], "w") as f:
    json.dump(spec, f, indent="\t")
PY
fi
echo "bundle ready: $dest"
