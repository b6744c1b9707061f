#!/bin/bash
# build-initramfs.sh - prepare the cache the qbkit VM tests boot from (run as root, Debian 12).
#
# The VM runs a stock Debian 6.1 kernel (it has dummy_hcd, libcomposite, usb_f_fs, usb_f_ncm,
# cdc_ncm, usbip-*) over the build machine's own root filesystem, shared read-only via virtio-9p.
# Flow: apt-get install the tools the build machine AND the guest need (the guest runs the build
# machine's userland) -> apt-get download + extract the kernel package -> depmod -> extract an
# uncompressed vmlinux (PVH boot, ~5 s faster under TCG) -> cpio a busybox initramfs with the few
# modules needed to mount 9p + overlayfs.
#
# Cache: $QBKIT_VM_DIR (default /var/cache/qbkit-vm):
#   kernel/lib/modules/<kver>/  full module tree     vmlinux, vmlinuz, kver
#   initramfs.cpio.gz           rebuilt when initramfs-init.sh / vm-stage2.sh / the kernel change
#   initramfs.inputs            sha256 of those inputs
# Idempotent and cheap when up to date (~1 s). FORCE=1 redoes the kernel; KPKG=linux-image-...
# forces a kernel package; QBKIT_VM_NO_APT=1 skips apt-get. Concurrent callers serialise on a lock.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
QBKIT_VM_DIR=${QBKIT_VM_DIR:-/var/cache/qbkit-vm}
mkdir -p "$QBKIT_VM_DIR"
QBKIT_VM_DIR=$(cd "$QBKIT_VM_DIR" && pwd)   # absolute: its path is baked into the initramfs
D=$QBKIT_VM_DIR

log() { printf '[build-initramfs] %s\n' "$*" >&2; }
[ "$(id -u)" = 0 ] || { log "must run as root (apt-get, depmod into $D)"; exit 1; }

exec 9>"$D/.build.lock"
flock 9

# ---------------------------------------------------------------- 1. packages
# Build-machine tools (qemu, cpio, ...) plus everything a guest script calls (the guest runs the
# build machine's binaries: pitfall 7) plus what tests/vm/build-tools.sh needs to build the tools crate.
PKGS=(qemu-system-x86 busybox-static kmod cpio gzip bc util-linux procps iproute2 iputils-ping
      iperf3 usbip usbutils python3 python3-usb dnsmasq-base libusb-1.0-0 libusb-1.0-0-dev
      pkg-config curl dnsutils udev)
if [ "${QBKIT_VM_NO_APT:-0}" != 1 ]; then
    missing=()
    for p in "${PKGS[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing: ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
fi

# ---------------------------------------------------------------- 2. kernel
if [ -z "${KPKG:-}" ] && [ -f "$D/kver" ] && [ "${FORCE:-0}" != 1 ] \
   && [ -f "$D/kernel/lib/modules/$(cat "$D/kver")/modules.dep" ]; then
    KPKG=linux-image-$(cat "$D/kver")     # cached kernel: no apt-cache round trip
fi
if [ -z "${KPKG:-}" ]; then
    KPKG=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
    if [ -z "$KPKG" ]; then
        apt-get update -qq
        KPKG=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
    fi
fi
KVER=${KPKG#linux-image-}
KROOT=$D/kernel
if [ "${FORCE:-0}" = 1 ] || [ ! -f "$KROOT/lib/modules/$KVER/modules.dep" ] || [ ! -f "$KROOT/boot/vmlinuz-$KVER" ]; then
    log "downloading $KPKG"
    rm -rf "$D/dl" "$KROOT" "$D/vmlinux"
    mkdir -p "$D/dl" "$KROOT"
    # apt-get download runs as _apt when it can; a root-only dir only gives a warning
    (cd "$D/dl" && apt-get download "$KPKG" 2>&1 | grep -v '^W: Download is performed unsandboxed' || true)
    deb=$(ls "$D"/dl/"$KPKG"_*.deb)
    log "extracting $(basename "$deb")"
    dpkg-deb -x "$deb" "$KROOT"
    depmod -b "$KROOT" "$KVER"    # the .deb has no modules.dep (its postinst makes it): pitfall 2
    rm -rf "$D/dl"
fi
cmp -s "$KROOT/boot/vmlinuz-$KVER" "$D/vmlinuz" || cp "$KROOT/boot/vmlinuz-$KVER" "$D/vmlinuz"
echo "$KVER" > "$D/kver"
if [ ! -s "$D/vmlinux" ] || [ "$D/vmlinuz" -nt "$D/vmlinux" ]; then
    rm -f "$D/vmlinux"
    for spec in $'\xfd7zXZ:xz -dc' $'\x28\xb5\x2f\xfd:zstd -dc' $'\x1f\x8b\x08:gzip -dc'; do
        magic=${spec%%:*}; dec=${spec#*:}
        for off in $(LC_ALL=C grep -abo "$magic" "$D/vmlinuz" | cut -d: -f1 | head -3); do
            tail -c +$((off + 1)) "$D/vmlinuz" | $dec > "$D/vmlinux.tmp" 2>/dev/null || true
            if head -c 4 "$D/vmlinux.tmp" | grep -q $'\x7fELF'; then
                mv "$D/vmlinux.tmp" "$D/vmlinux"; break 2
            fi
        done
    done
    rm -f "$D/vmlinux.tmp"
    [ -s "$D/vmlinux" ] || log "WARNING: could not extract vmlinux, boot.sh will use the bzImage"
fi
MODDIR=$KROOT/lib/modules/$KVER

# ---------------------------------------------------------------- 3. initramfs
INPUTS=$( { echo "$KVER $MODDIR"; cat "$HERE/initramfs-init.sh" "$HERE/vm-stage2.sh"; } | sha256sum | cut -d' ' -f1)
if [ -s "$D/initramfs.cpio.gz" ] && [ "$(cat "$D/initramfs.inputs" 2>/dev/null)" = "$INPUTS" ]; then
    log "up to date: kernel $KVER, cache $D"
    exit 0
fi
BOOT_MODS=(virtio_pci 9pnet_virtio 9p overlay)
IR=$D/initramfs-root
rm -rf "$IR"
mkdir -p "$IR"/{bin,dev,proc,sys,mnt/lower,mnt/rw,newroot,lib/modules}
cp /bin/busybox "$IR/bin/busybox"
for a in sh mount umount mkdir insmod switch_root cat echo sleep ls grep sed tr cut poweroff reboot; do
    ln -s busybox "$IR/bin/$a"
done
: > "$IR/modules.load"
for m in "${BOOT_MODS[@]}"; do
    modprobe -d "$KROOT" -S "$KVER" --show-depends "$m" | awk '$1=="insmod"{print $2}' | while read -r ko; do
        rel=${ko#"$MODDIR"/}
        grep -qxF "$rel" "$IR/modules.load" && continue
        mkdir -p "$IR/lib/modules/$(dirname "$rel")"
        cp "$ko" "$IR/lib/modules/$rel"
        echo "$rel" >> "$IR/modules.load"
    done
done
cp "$HERE/initramfs-init.sh" "$IR/init"
cp "$HERE/vm-stage2.sh" "$IR/stage2.sh"
chmod 755 "$IR/init" "$IR/stage2.sh"
echo "$KVER" > "$IR/kver"
echo "$MODDIR" > "$IR/moddir"
(cd "$IR" && find . -print0 | sort -z | cpio --null -o -H newc --quiet) | gzip -1 > "$D/initramfs.cpio.gz.tmp"
mv "$D/initramfs.cpio.gz.tmp" "$D/initramfs.cpio.gz"
echo "$INPUTS" > "$D/initramfs.inputs"
rm -rf "$IR"
log "kernel $KVER: $D/vmlinux, initramfs $(du -h "$D/initramfs.cpio.gz" | cut -f1)"
