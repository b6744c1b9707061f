#!/bin/bash
# vm-bench.sh - run INSIDE the VM (tests/vm/boot.sh bench/usb-lib/vm-bench.sh).
# nusb vs libusb-async bulk throughput against ffs-dev (usb-gadget queued AIO, 16 transfers deep)
# on dummy_hcd, at high speed then super speed, in this one VM boot.
# The ffs-dev these scripts drive (1209:0001, `ffs-dev SECONDS`) came from the VM recipe the
# measurement was made with, which is not part of this repository; set FFS to such a program.
# tests/vm/tools/usb-probe's ffs-dev (1209:0002) is the in-repo test gadget, and bench/usb/run the
# maintained USB benchmark.
# Per speed: REPS rounds, each round runs bench-nusb then bench-libusb (interleaved so machine
# load hits both alike); each program does one OUT phase and one IN phase of SECS seconds with
# IN_DEPTH / OUT_DEPTH 64 KiB transfers in flight. Prints RESULT lines (Mbit/s, CPU%).
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
D=${USBVM_DIR:-/tmp/usbvm}
FFS=${FFS:-$D/cargo-target/release/ffs-dev}
BIN=${BIN:-${CARGO_TARGET_DIR:-$HERE/../../target}/release}
SECS=${SECS:-4}; REPS=${REPS:-3}; IN_DEPTH=${IN_DEPTH:-4}; OUT_DEPTH=${OUT_DEPTH:-2}
SPEEDS=${SPEEDS:-high super}
rc=0
say() { printf '[usb-lib] %s\n' "$*"; }
. "$HERE/vm-lib.sh"
wait_dev() {
    for _ in $(seq 1 300); do
        for d in /sys/bus/usb/devices/*; do
            [ "$(cat "$d/idVendor" 2>/dev/null)" = 1209 ] && [ "$(cat "$d/idProduct" 2>/dev/null)" = 0001 ] && { basename "$d"; return 0; }
        done
        sleep 0.1
    done
    return 1
}
modprobe libcomposite; modprobe usb_f_fs
for speed in $SPEEDS; do
    start_ffs_dev "$speed"
    if ! d=$(wait_dev); then say "FAIL: ffs-dev never enumerated at $speed"; cat "/tmp/ffs-dev-$speed.log"; rc=1; kill $DEVPID; wait $DEVPID; continue; fi
    say "speed=$speed device $d at $(cat /sys/bus/usb/devices/$d/speed)M"
    for r in $(seq 1 "$REPS"); do
        for lib in nusb libusb; do
            timeout 120 "$BIN/bench-$lib" "$SECS" 1 "$IN_DEPTH" "$OUT_DEPTH" | sed -u "s/^RESULT /RESULT speed=$speed round=$r /" || rc=1
        done
    done
    stop_ffs_dev
    say "ffs-dev: $(grep -E 'done|error' /tmp/ffs-dev-$speed.log | sort | uniq -c | head -5 | tr '\n' ';')"
done
say "exit $rc"
exit $rc
