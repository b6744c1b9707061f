#!/bin/bash
# Stage 2 of the qbkit VM guest: PID 1 after switch_root, running the build machine's userland
# (read-only 9p root + RAM overlay). Copied into the initramfs by build-initramfs.sh.
# Flow: mount devpts/shm/configfs/debugfs -> modprobe qvm.modules= -> mark the guest
# (/run/qbkit-vm/guest, checked by lib/guest.sh so it never runs on the build machine) ->
# run /run/qbkit-vm/vmio/cmd.sh written by boot.sh (exit status -> vmio/rc and a QBKIT_VM_EXIT=
# console line), or an interactive shell -> power off.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root TERM=${TERM:-linux} LANG=C.UTF-8
cd /

mkdir -p /dev/pts /dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
mount -t tmpfs -o mode=1777 shm /dev/shm
ln -sf /proc/self/fd /dev/fd 2>/dev/null
ln -sf /proc/self/fd/0 /dev/stdin 2>/dev/null
ln -sf /proc/self/fd/1 /dev/stdout 2>/dev/null
ln -sf /proc/self/fd/2 /dev/stderr 2>/dev/null
mkdir -p /run/lock /var/tmp 2>/dev/null
modprobe configfs 2>/dev/null
mountpoint -q /sys/kernel/config || mount -t configfs none /sys/kernel/config
mount -t debugfs none /sys/kernel/debug 2>/dev/null
mkdir -p /run/netns
hostname qbkit-vm 2>/dev/null
ip link set lo up 2>/dev/null
echo "$$" > /run/qbkit-vm/guest

arg() { sed -n "s/.*qvm\.$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
for m in $(arg modules | tr , ' '); do
    modprobe "$m" || echo "qbkit-vm: modprobe $m failed"
done

echo "QBKIT_VM_READY uptime=$(cut -d' ' -f1 /proc/uptime)s"
IO=/run/qbkit-vm/vmio
if [ -f "$IO/cmd.sh" ] && [ -f "$IO/interactive" ]; then
    # QBKIT_VM_INTERACTIVE=1: the command gets the console as its controlling terminal
    setsid -c bash "$IO/cmd.sh" </dev/ttyS0 >/dev/ttyS0 2>&1
    rc=$?
    echo "$rc" > "$IO/rc"
    echo "QBKIT_VM_EXIT=$rc uptime=$(cut -d' ' -f1 /proc/uptime)s"
elif [ -f "$IO/cmd.sh" ]; then
    bash "$IO/cmd.sh"
    rc=$?
    echo "$rc" > "$IO/rc"
    echo "QBKIT_VM_EXIT=$rc uptime=$(cut -d' ' -f1 /proc/uptime)s"
else
    echo "qbkit-vm: interactive shell (exit or Ctrl-D powers off)"
    setsid -c bash -l </dev/ttyS0 >/dev/ttyS0 2>&1
fi
sync
echo o > /proc/sysrq-trigger
sleep 10
