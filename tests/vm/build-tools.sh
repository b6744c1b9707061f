#!/bin/bash
# build-tools.sh - build the VM suite's own test programs (tests/vm/tools/usb-probe: ffs-dev,
# usb-probe) into $QBKIT_VM_DIR/tools-target/release, which is where lib/guest.sh finds them
# (QBKIT_TOOLS_DIR). Cheap when up to date. The crate is a member of the main workspace (its lock
# file and lints), publish = false.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
QBKIT_VM_DIR=${QBKIT_VM_DIR:-/var/cache/qbkit-vm}
mkdir -p "$QBKIT_VM_DIR" && QBKIT_VM_DIR=$(cd "$QBKIT_VM_DIR" && pwd)
command -v cargo >/dev/null || export PATH="$HOME/.cargo/bin:$PATH"
exec 9>"$QBKIT_VM_DIR/.tools.lock"
flock 9
CARGO_TARGET_DIR=$QBKIT_VM_DIR/tools-target cargo build --release --locked -q \
    --manifest-path "$HERE/tools/usb-probe/Cargo.toml"
echo "$QBKIT_VM_DIR/tools-target/release"
