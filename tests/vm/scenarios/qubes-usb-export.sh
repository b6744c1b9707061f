#!/bin/bash
# qubes-usb-export.sh BUSID - test stand-in for the qubes.USB service in the USB qube
# (qubes-app-linux-usb-proxy's usb-export, as ../shared/reference/001-qubes-usb-proxy.txt
# describes it): run with the qrexec connection as stdin and stdout (a stream socket), it binds the
# whole device BUSID to usbip-host, writes "<devid> <speed>" (devid = busnum << 16 | devnum, speed
# as in sysfs) as one line, then hands its stdin socket to the kernel by writing fd number 0 to the
# device's usbip_sockfd. From then on the kernel speaks the USB/IP URB stream on that socket.
set -u
busid=${1:?usage: qubes-usb-export.sh BUSID}
dev=/sys/bus/usb/devices/$busid
drv=/sys/bus/usb/drivers/usbip-host
die() { echo "qubes-usb-export: $*" >&2; exit 1; }
case $busid in *[!0-9.-]*|"") die "bad device name $busid" ;; esac
[ -e "$dev/idVendor" ] || die "no device $busid"
modprobe usbip-host || die "modprobe usbip-host"
if [ "$(readlink -f "$dev/driver")" != "$(readlink -f "$drv")" ]; then
    # what `usbip bind -b BUSID` does: release the device, let only usbip-host match it, bind
    # (a stale entry, e.g. left marked "other" by an earlier `usbip unbind`, makes bind fail with
    # ENODEV: drop it first; "del" of an absent entry fails harmlessly)
    if [ -e "$dev/driver" ]; then echo "$busid" > "$dev/driver/unbind" || die "unbind $busid"; fi
    # (no newline: the kernel keeps the rest of the write, newline included, as the bus id)
    printf 'del %s' "$busid" > "$drv/match_busid" 2>/dev/null
    printf 'add %s' "$busid" > "$drv/match_busid" || die "match_busid add $busid"
    echo "$busid" > "$drv/bind" || die "bind $busid to usbip-host"
fi
read -r busnum < "$dev/busnum"; read -r devnum < "$dev/devnum"; read -r speed < "$dev/speed"
echo "$(( busnum << 16 | devnum )) $speed"
echo 0 > "$dev/usbip_sockfd" || die "usbip_sockfd: the kernel refused the connection"
echo "qubes-usb-export: $busid ($busnum-$devnum, $speed) handed to usbip-host" >&2
