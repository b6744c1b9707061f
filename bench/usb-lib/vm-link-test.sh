#!/bin/bash
# vm-link-test.sh - run INSIDE the VM (tests/vm/boot.sh bench/usb-lib/vm-link-test.sh).
# The ffs-dev these scripts drive (1209:0001, `ffs-dev SECONDS`) came from the VM recipe the
# measurement was made with, which is not part of this repository; set FFS to such a program.
# tests/vm/tools/usb-probe's ffs-dev (1209:0002) is the in-repo test gadget, and bench/usb/run the
# maintained USB benchmark.
# The qbkit-usb crate against ffs-dev at high and super speed in one boot, with REPLUGS port power cycles
# each (usb-link-test). EXPECT_HOTPLUG=1 starts systemd-udevd first (must be installed on the build
# machine) and requires the replugs to be seen through hotplug events.
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
D=${USBVM_DIR:-/tmp/usbvm}
FFS=${FFS:-$D/cargo-target/release/ffs-dev}
BIN=${BIN:-${CARGO_TARGET_DIR:-$HERE/../../target}/release}
REPLUGS=${REPLUGS:-3}; SPEEDS=${SPEEDS:-high super}; EXPECT_HOTPLUG=${EXPECT_HOTPLUG:-0}
rc=0
say() { printf '[usb-link] %s\n' "$*"; }
. "$HERE/vm-lib.sh"
if [ "$EXPECT_HOTPLUG" = 1 ]; then
    UDEVD=$(command -v systemd-udevd || echo /lib/systemd/systemd-udevd)
    "$UDEVD" --daemon || { say "FAIL: cannot start $UDEVD"; exit 1; }
fi
modprobe libcomposite; modprobe usb_f_fs
for speed in $SPEEDS; do
    start_ffs_dev "$speed"
    say "speed=$speed"
    timeout 300 "$BIN/usb-link-test" "$REPLUGS" "$EXPECT_HOTPLUG" || { say "FAIL at $speed"; rc=1; }
    stop_ffs_dev >/dev/null 2>&1
    say "ffs-dev: $(grep -E 'done|bad' /tmp/ffs-dev-$speed.log | tr '\n' ';')"
done
say "exit $rc"
exit $rc
