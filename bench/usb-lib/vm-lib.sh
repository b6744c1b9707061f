# vm-lib.sh - sourced by vm-bench.sh and vm-link-test.sh (inside the usbvm guest): brings up
# ffs-dev on dummy_hcd at one speed and takes it down again. Needs FFS and BIN set by the caller.

# start_ffs_dev SPEED: reloads dummy_hcd at SPEED (high or super), starts ffs-dev in the
# background with its log in /tmp/ffs-dev-SPEED.log, and sets DEVPID.
start_ffs_dev() {
    rmmod dummy_hcd 2>/dev/null
    if [ "$1" = super ]; then modprobe dummy_hcd is_super_speed=Y; else modprobe dummy_hcd; fi
    "$FFS" 600 > "/tmp/ffs-dev-$1.log" 2>&1 &
    DEVPID=$!
}

# stop_ffs_dev: asks ffs-dev to stop (bench-nusb stop), waits up to 10 s, then kills it.
stop_ffs_dev() {
    "$BIN/bench-nusb" stop
    for _ in $(seq 1 50); do kill -0 $DEVPID 2>/dev/null || break; sleep 0.2; done
    kill $DEVPID 2>/dev/null; wait $DEVPID 2>/dev/null
}
