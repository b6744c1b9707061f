#!/bin/sh
# qbkit-gadget shell fallback: builds the same USB gadget as `qbkit-gadget run` (identical ConfigFS
# layout and FunctionFS descriptors) on boards where the daemon is not installed yet, so the laptop
# already sees the device. It does not move packets: start `qbkit-gadget run` to replace it (it
# removes this gadget first), or stop it with `qbkit-gadget.sh stop`.
#
# GENERATED from gadget/src/configfs/plan.rs (`qbkit-gadget plan --shell`); a unit test fails when
# the two differ. Do not edit by hand.
#
# Usage: qbkit-gadget.sh [start|stop]   env: SERIAL=... UDC=... (defaults: machine-id hash, the only UDC)
# Needs: configfs mounted, CONFIG_USB_CONFIGFS_F_FS, and descs-*.bin/strs.bin next to this script.
set -eu
NAME='qbkit'
FFS_DIR='/dev/ffs-qbkit-0'
CFS=/sys/kernel/config
HERE=$(cd "$(dirname "$0")" && pwd)
G="$CFS/usb_gadget/$NAME"
PIDFILE=/run/qbkit-gadget-fallback.pid

stop() {
  [ -d "$G" ] || return 0
  [ -f "$PIDFILE" ] && kill "$(cat "$PIDFILE")" 2>/dev/null || true
  rm -f "$PIDFILE"
  printf '\n' > "$G/UDC" 2>/dev/null || true
  rm -f "$G"/os_desc/c.* "$G"/configs/c.*/*.* 2>/dev/null || true
  rmdir "$G"/configs/c.*/strings/* "$G"/configs/c.* "$G"/functions/* "$G"/strings/* 2>/dev/null || true
  umount "$FFS_DIR" 2>/dev/null || true
  rmdir "$FFS_DIR" "$G" 2>/dev/null || true
}

# Mounts FunctionFS and writes the descriptor blobs to ep0. FunctionFS keeps the function alive only
# while ep0 is open, so a background holder keeps it open until `stop`.
ffs_init() {
  mkdir -p "$2"
  mount -t functionfs "$1" "$2"
  v=$(uname -r | awk -F. '{ if ($1 > 6 || ($1 == 6 && $2 >= 4)) print "v0100"; else print "v0001" }')
  ( exec 3<>"$2/ep0"; cat "$HERE/descs-$v.bin" >&3; cat "$HERE/strs.bin" >&3; exec sleep 2147483647 ) &
  echo $! > "$PIDFILE"
  for _ in 1 2 3 4 5 6 7 8 9 10; do [ -e "$2/ep1" ] && break; sleep 0.2; done
}

case "${1:-start}" in
  stop) stop; exit 0 ;;
  start) ;;
  *) echo "usage: $0 [start|stop]" >&2; exit 2 ;;
esac

if [ -z "${SERIAL:-}" ]; then
  SERIAL=$(printf 'qbkit-net serial:%s' "$(cat /etc/machine-id)" | sha256sum | cut -c1-12 | tr 'a-f' 'A-F')
fi
if [ -z "${UDC:-}" ]; then
  set -- $(ls /sys/class/udc)
  [ $# -eq 1 ] || { echo "found $# UDCs ($*); set UDC=NAME" >&2; exit 1; }
  UDC=$1
fi
modprobe libcomposite 2>/dev/null || true
[ -d "$G" ] && { echo "$G exists; run '$0 stop' first" >&2; exit 1; }

mkdir -p "$CFS"/'usb_gadget/qbkit'
printf '%s' '0x00' > "$CFS"/'usb_gadget/qbkit/bDeviceClass'
printf '%s' '0x00' > "$CFS"/'usb_gadget/qbkit/bDeviceSubClass'
printf '%s' '0x00' > "$CFS"/'usb_gadget/qbkit/bDeviceProtocol'
printf '%s' '0x1209' > "$CFS"/'usb_gadget/qbkit/idVendor'
printf '%s' '0x0001' > "$CFS"/'usb_gadget/qbkit/idProduct'
printf '%s' '0x40' > "$CFS"/'usb_gadget/qbkit/bMaxPacketSize0'
printf '%s' '0x0100' > "$CFS"/'usb_gadget/qbkit/bcdDevice'
printf '%s' '0x0201' > "$CFS"/'usb_gadget/qbkit/bcdUSB'
mkdir -p "$CFS"/'usb_gadget/qbkit/strings/0x0409'
printf '%s' 'qbkit' > "$CFS"/'usb_gadget/qbkit/strings/0x0409/manufacturer'
printf '%s' 'qbkit-net' > "$CFS"/'usb_gadget/qbkit/strings/0x0409/product'
printf '%s' "$SERIAL" > "$CFS"/'usb_gadget/qbkit/strings/0x0409/serialnumber'
mkdir -p "$CFS"/'usb_gadget/qbkit/functions/ffs.qbkit-0'
ffs_init 'qbkit-0' '/dev/ffs-qbkit-0'
mkdir -p "$CFS"/'usb_gadget/qbkit/configs/c.1'
printf '%s' '0x80' > "$CFS"/'usb_gadget/qbkit/configs/c.1/bmAttributes'
printf '%s' '500' > "$CFS"/'usb_gadget/qbkit/configs/c.1/MaxPower'
mkdir -p "$CFS"/'usb_gadget/qbkit/configs/c.1/strings/0x0409'
printf '%s' 'qbkit-net' > "$CFS"/'usb_gadget/qbkit/configs/c.1/strings/0x0409/configuration'
ln -s "$CFS"/'usb_gadget/qbkit/functions/ffs.qbkit-0' "$CFS"/'usb_gadget/qbkit/configs/c.1/ffs.qbkit-0'
printf '%s' '0xf0' > "$CFS"/'usb_gadget/qbkit/os_desc/b_vendor_code'
printf '%s' 'MSFT100' > "$CFS"/'usb_gadget/qbkit/os_desc/qw_sign'
printf '%s' '1' > "$CFS"/'usb_gadget/qbkit/os_desc/use'
ln -s "$CFS"/'usb_gadget/qbkit/configs/c.1' "$CFS"/'usb_gadget/qbkit/os_desc/c.1'
printf '%s' "$UDC" > "$CFS"/'usb_gadget/qbkit/UDC'
echo "qbkit gadget bound to $UDC (serial $SERIAL)"
