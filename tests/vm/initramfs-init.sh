#!/bin/sh
# /init of the qbkit VM initramfs (busybox-static; copied in by tests/vm/build-initramfs.sh).
# Mounts the host root (virtio-9p tag "hostroot", read-only) as the lower layer
# of an overlayfs whose upper layer is RAM, so the guest has a writable root
# that is the host's userland; writes never reach the host.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "qbkit-vm-init: initramfs up at $(cut -d' ' -f1 /proc/uptime)s" > /dev/kmsg

for m in $(cat /modules.load); do
    insmod "/lib/modules/$m" 2>/dev/null || echo "qbkit-vm-init: insmod $m failed"
done

arg() { # value of qvm.$1= on the kernel command line
    for w in $(cat /proc/cmdline); do
        case "$w" in "qvm.$1="*) echo "${w#qvm.$1=}"; return;; esac
    done
}
CACHE=$(arg 9pcache); CACHE=${CACHE:-loose}
MSIZE=$(arg msize); MSIZE=${MSIZE:-512000}
RWSIZE=$(arg rwsize); RWSIZE=${RWSIZE:-50%}

fail() { echo "qbkit-vm-init: $*"; echo "qbkit-vm-init: dropping to busybox shell"; exec sh; }

mount -t 9p -o ro,trans=virtio,version=9p2000.L,msize=$MSIZE,cache=$CACHE hostroot /mnt/lower \
    || fail "cannot mount 9p hostroot"
mount -t tmpfs -o size=$RWSIZE,mode=755 rw /mnt/rw
mkdir -p /mnt/rw/upper /mnt/rw/work
if ! mount -t overlay overlay -o lowerdir=/mnt/lower,upperdir=/mnt/rw/upper,workdir=/mnt/rw/work /newroot; then
    echo "qbkit-vm-init: overlayfs failed, using read-only host root"
    mount --bind /mnt/lower /newroot
fi
R=/newroot
mkdir -p $R/host 2>/dev/null && mount --bind /mnt/lower $R/host   # pristine read-only view of the host
for d in tmp run; do mount -t tmpfs -o mode=1777,size=$RWSIZE $d $R/$d || fail "tmpfs $d"; done
chmod 755 $R/run
KVER=$(cat /kver)
mkdir -p $R/lib/modules/$KVER && mount --bind "/mnt/lower$(cat /moddir)" $R/lib/modules/$KVER \
    || echo "qbkit-vm-init: cannot bind the module tree"
# other 9p shares (e.g. boot.sh's writable run dir, tag vmio) -> /run/qbkit-vm/<tag>
for t in /sys/bus/virtio/drivers/9pnet_virtio/*/mount_tag; do
    [ -e "$t" ] || continue
    tag=$(tr -d '\000' < "$t")
    [ "$tag" = hostroot ] && continue
    mkdir -p $R/run/qbkit-vm/$tag && mount -t 9p -o trans=virtio,version=9p2000.L,msize=$MSIZE,cache=none "$tag" $R/run/qbkit-vm/$tag
done
mkdir -p $R/run/qbkit-vm
cp /stage2.sh $R/run/qbkit-vm/stage2.sh
for d in proc sys dev; do mount --move /$d $R/$d; done
echo "qbkit-vm-init: switch_root at $(cut -d' ' -f1 $R/proc/uptime)s" > $R/dev/kmsg
exec switch_root $R /run/qbkit-vm/stage2.sh
