#!/bin/bash
# tests/cgroup2-guest.sh DIR 'COMMAND'
#
# Runs COMMAND (bash -c, as root, in DIR) in a throw-away QEMU guest that boots
# Debian's stock kernel with only cgroup v2 (cgroup_no_v1=all), so every controller
# is on the unified hierarchy: the pure-v2 leg of the tests, on any Debian host
# whatever its own cgroup layout.  Exits with COMMAND's status; 124 on timeout,
# 125 when the guest could not run it at all (one line on stderr says why).
#
# The guest's root is this host's root, shared read-only over virtio-9p under a
# tmpfs overlay (so the host's python3 and its packages run there as they are;
# guest writes vanish), with fresh tmpfs on /tmp and /var/tmp.  DIR is shared
# read-write at the same path.  Nothing is installed into the host's /boot: the
# kernel package is fetched with `apt-get download` and unpacked into the cache.
#
# Environment:
#   GUEST_CACHE    where the kernel and the initramfs are kept
#                  [/var/cache/ocirun-cgroup2-guest]
#   GUEST_KERNEL   kernel package [what linux-image-amd64 depends on]
#   GUEST_TIMEOUT  seconds before the guest is killed [3600]
#   GUEST_CPUS / GUEST_MEM   [nproc / 2G]
#   GUEST_MODULES  kernel modules to load before COMMAND (e.g. "virtio_blk bfq")
#   GUEST_QEMU_OPTS  extra qemu arguments (e.g. a -drive)
#   GUEST_ACCEL    auto|kvm|tcg [auto: kvm only where /dev/kvm runs stock kernels]
#   GUEST_VERBOSE=1  the guest's console on stderr afterwards
set -euo pipefail

fail() { echo "cgroup2-guest: $*" >&2; exit 125; }
say() { [ "${GUEST_VERBOSE:-0}" = 1 ] && echo "cgroup2-guest: $*" >&2 || true; }

[ $# -eq 2 ] || { echo "usage: $0 DIR 'COMMAND'" >&2; exit 2; }
work=$(realpath -e -- "$1") && [ -d "$work" ] || fail "not a directory: $1"
command=$2
[ "$(id -u)" = 0 ] || fail "needs root"
[ "$(uname -m)" = x86_64 ] || fail "needs an x86_64 host (Debian's amd64 kernel)"
export PATH="$PATH:/usr/sbin:/sbin" DEBIAN_FRONTEND=noninteractive
cache=${GUEST_CACHE:-/var/cache/ocirun-cgroup2-guest}
mkdir -p "$cache"

# -------------------------------------------------------------- what the host needs
updated=
apt_update() { [ -n "$updated" ] || { apt-get update -qq >&2 && updated=1; }; }
want=()
command -v qemu-system-x86_64 >/dev/null || want+=(qemu-system-x86)
command -v modprobe >/dev/null || want+=(kmod)
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q "ok installed" ||
    want+=(busybox-static)  # static: the initramfs has no C library
if [ ${#want[@]} -gt 0 ]; then
    say "installing ${want[*]}"
    { apt_update && apt-get install -y -qq --no-install-recommends "${want[@]}" >&2; } ||
        fail "cannot install ${want[*]} (no QEMU: the pure cgroup v2 leg cannot run here)"
fi
busybox=/bin/busybox

# ------------------------------------------------------ the kernel and the initramfs
exec 7>"$cache/.lock"
flock 7  # one setup at a time; the guests themselves run side by side
kpkg=${GUEST_KERNEL:-}
if [ -z "$kpkg" ]; then
    depends() { apt-cache depends linux-image-amd64 2>/dev/null |
                awk '/Depends: linux-image-[0-9]/ {print $2; exit}'; }
    kpkg=$(depends)
    [ -n "$kpkg" ] || { apt_update; kpkg=$(depends); }
    [ -n "$kpkg" ] || fail "apt knows no linux-image-amd64 (is a Debian archive configured?)"
fi
kroot=$cache/$kpkg
if [ ! -e "$kroot/.unpacked" ]; then
    say "fetching $kpkg"
    rm -rf "$kroot" "$cache/download"
    mkdir -p "$kroot" "$cache/download"
    get() { (cd "$cache/download" && apt-get download -qq -o APT::Sandbox::User=root "$kpkg") >&2; }
    get || { apt_update && get; } || fail "apt-get download $kpkg failed"
    dpkg-deb -x "$cache/download/${kpkg}"_*.deb "$kroot"
    rm -rf "$cache/download"
    touch "$kroot/.unpacked"
fi
kver=$(ls "$kroot/lib/modules" | head -n1)
kernel=$kroot/boot/vmlinuz-$kver
[ -f "$kernel" ] || fail "no kernel image in $kroot"
[ -f "$kroot/lib/modules/$kver/modules.dep" ] || depmod -b "$kroot" "$kver"

initrd=$kroot/initrd-ocirun-2.cpio  # the number changes with the /init below
if [ ! -f "$initrd" ]; then
    say "building the initramfs"
    tree=$(mktemp -d "$cache/initrd.XXXXXX")
    mkdir -p "$tree"/{bin,dev,proc,sys,modules,host,rw,root}
    cp "$busybox" "$tree/bin/busybox"
    modprobe -d "$kroot" -S "$kver" --show-depends -a \
            virtio_pci 9pnet_virtio 9p overlay virtio_console |
        awk '$1 == "insmod" && !seen[$2]++ {print $2}' |
        while read -r ko; do cp "$ko" "$tree/modules/" && basename "$ko" >> "$tree/modules/order"; done
    cat > "$tree/init" <<'INIT'
#!/bin/busybox sh
# The host's root (9p, read-only) under a tmpfs overlay becomes the guest's root.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
stop() { echo "guest initramfs: $*"; poweroff -f; }
for ko in $(cat /modules/order); do insmod "/modules/$ko" || stop "insmod $ko"; done
nine=trans=virtio,version=9p2000.L,msize=512000
mount -t 9p -o "$nine,ro,cache=loose" host /host || stop "no host root"
mount -t tmpfs -o mode=0755 rw /rw && mkdir /rw/upper /rw/work
mount -t overlay -o lowerdir=/host,upperdir=/rw/upper,workdir=/rw/work guest /root ||
    stop "no overlay root"
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /root/run
mkdir /root/run/guest
mount -t 9p -o "$nine,cache=none" run /root/run/guest || stop "no run dir"
cp /bin/busybox /root/run/busybox
# The shared root carries the host's /proc, /sys and /dev as plain directories:
# cover them with the guest's own before anything runs there.
mount --move /dev /root/dev
mount --move /proc /root/proc
mount --move /sys /root/sys
exec switch_root /root /run/busybox sh /run/guest/boot.sh
INIT
    chmod +x "$tree/init"
    (cd "$tree" && find . | "$busybox" cpio -o -H newc 2>/dev/null) > "$initrd.tmp"
    mv "$initrd.tmp" "$initrd"
    rm -rf "$tree"
fi
exec 7>&-

# --------------------------------------------------------------------- this run
run=$(mktemp -d /tmp/cgroup2-guest.XXXXXX)
qemu_pid=
finish() {
    trap '' INT TERM
    [ -z "$qemu_pid" ] || { kill "$qemu_pid" 2>/dev/null; wait "$qemu_pid" 2>/dev/null; }
    rm -rf "$run"
}
trap finish EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The host's python3 first on PATH: a version manager's shim costs seconds per call
# under emulation.
guest_path=$PATH
py=$(cd "$work" && python3 -c 'import os, sys; print(os.path.dirname(sys.executable))' 2>/dev/null) || py=
[ -z "$py" ] || guest_path=$py:$guest_path
{
    echo '#!/bin/bash'
    printf 'export PATH=%q\n' "$guest_path"
    for name in HOME LANG LC_ALL TZ CI PYTHONPATH PYTHONDONTWRITEBYTECODE PYENV_VERSION \
                PYENV_ROOT ${GUEST_ENV:-}; do
        [ -z "${!name+x}" ] || printf 'export %s=%q\n' "$name" "${!name}"
    done
    echo 'export USER=root LOGNAME=root TERM=dumb'
    printf 'cd -- %q || exit 125\n' "$work"
    printf 'exec /bin/bash -c %q\n' "$command"
} > "$run/command.sh"
{
    printf 'kroot=%q kver=%q modules=%q work=%q\n' "$kroot" "$kver" "${GUEST_MODULES:-}" "$work"
    cat <<'BOOT'
# PID 1 of the guest (busybox sh: its applets run, not the host's binaries over 9p).
exec </dev/null >/dev/console 2>&1
mount -t cgroup2 -o nsdelegate,memory_recursiveprot cgroup2 /sys/fs/cgroup
mount -t bpf bpf /sys/fs/bpf
mount -t securityfs securityfs /sys/kernel/security 2>/dev/null  # AppArmor profiles
mkdir -p /dev/pts /dev/shm /dev/mqueue
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5 devpts /dev/pts
ln -sfn pts/ptmx /dev/ptmx
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm
mount -t mqueue mqueue /dev/mqueue
for link in fd:/proc/self/fd stdin:/proc/self/fd/0 stdout:/proc/self/fd/1 stderr:/proc/self/fd/2; do
    ln -sfn "${link#*:}" "/dev/${link%%:*}"
done
hostname cgroup2-guest
ip link set lo up
mkdir -p "/lib/modules/$kver" && mount --bind "$kroot/lib/modules/$kver" "/lib/modules/$kver"
for m in $modules; do modprobe "$m" || echo "guest: modprobe $m failed"; done
for d in /tmp /var/tmp; do mkdir -p "$d" && mount -t tmpfs -o mode=1777 tmpfs "$d"; done
mkdir -p "$work"
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=mmap work "$work" ||
    echo "guest: cannot mount $work"
out=/dev/console
for port in /sys/class/virtio-ports/*; do
    [ "$(cat "$port/name" 2>/dev/null)" = guest.out ] && out=/dev/${port##*/}
done
echo "guest: command starts"
{ /bin/bash /run/guest/command.sh; echo $? > /run/guest/rc; } 2>&1 | cat > "$out"
sync
poweroff -f
BOOT
} > "$run/boot.sh"

accel=${GUEST_ACCEL:-auto}
if [ "$accel" = auto ]; then
    accel=tcg
    if [ -r /dev/kvm ] && [ -w /dev/kvm ] && grep -qwE 'vmx|svm' /proc/cpuinfo &&
       [ ! -d /sys/module/kvm_pvm ]; then
        accel=kvm
    fi
fi
case $accel in
    kvm) accel_opts=(-accel kvm -cpu host) ;;
    tcg) accel_opts=(-accel tcg,thread=multi -cpu max) ;;
    *) fail "GUEST_ACCEL is auto, kvm or tcg" ;;
esac
share="security_model=none,multidevs=remap"
: > "$run/out"
for attempt in 1 2 3; do
    : > "$run/console"
    # shellcheck disable=SC2086  # GUEST_QEMU_OPTS is a list of words
    timeout -k 10 "${GUEST_TIMEOUT:-3600}" qemu-system-x86_64 -name cgroup2-guest \
        -machine q35 "${accel_opts[@]}" -smp "${GUEST_CPUS:-$(nproc)}" -m "${GUEST_MEM:-2G}" \
        -nodefaults -no-user-config -display none -vga none -monitor none -no-reboot \
        -chardev "file,id=console,path=$run/console" -serial chardev:console \
        -kernel "$kernel" -initrd "$initrd" \
        -append "console=ttyS0 quiet panic=-1 cgroup_no_v1=all mitigations=off" \
        -fsdev "local,id=host,path=/,readonly=on,$share" \
        -device virtio-9p-pci,fsdev=host,mount_tag=host \
        -fsdev "local,id=run,path=$run,$share" -device virtio-9p-pci,fsdev=run,mount_tag=run \
        -fsdev "local,id=work,path=$work,$share" -device virtio-9p-pci,fsdev=work,mount_tag=work \
        -device virtio-serial-pci -chardev "file,id=out,path=$run/out,append=on" \
        -device virtserialport,chardev=out,name=guest.out \
        ${GUEST_QEMU_OPTS:-} </dev/null &
    qemu_pid=$!
    tail -n +1 -f --pid "$qemu_pid" "$run/out" &
    tail_pid=$!
    booted=
    for _ in $(seq "${GUEST_BOOT_TIMEOUT:-150}"); do
        grep -q '^guest: command starts' "$run/console" 2>/dev/null && { booted=1; break; }
        kill -0 "$qemu_pid" 2>/dev/null || break
        sleep 1
    done
    if [ -z "$booted" ] && kill -0 "$qemu_pid" 2>/dev/null; then
        # An emulated guest very rarely hangs while booting: COMMAND has not started.
        echo "cgroup2-guest: the guest did not boot in time, trying again" >&2
        kill "$qemu_pid" 2>/dev/null
    fi
    status=0
    wait "$qemu_pid" || status=$?
    qemu_pid=
    wait "$tail_pid" 2>/dev/null || true
    [ -n "$booted" ] || [ -s "$run/rc" ] && break
done
[ "${GUEST_VERBOSE:-0}" = 1 ] && cat "$run/console" >&2
if [ -s "$run/rc" ]; then
    exit "$(cat "$run/rc")"
fi
tail -n 20 "$run/console" >&2 || true
[ "$status" != 124 ] && [ "$status" != 137 ] || { echo "cgroup2-guest: timed out" >&2; exit 124; }
fail "the guest reported no exit status (qemu exit status $status)"
