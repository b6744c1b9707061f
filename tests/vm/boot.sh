#!/bin/bash
# boot.sh - boot the qbkit test VM (stock Debian kernel, the build machine's root shared read-only
# over virtio-9p with a RAM overlay) and run one command in it, or give an interactive shell.
#
#   tests/vm/boot.sh                 interactive serial shell (Ctrl-a x quits qemu)
#   tests/vm/boot.sh CMD [ARGS...]   run CMD in the guest with the caller's cwd; exit with its status
#
# Data flow: a per-run dir $QBKIT_VM_DIR/runs/run.* is shared with the guest as 9p tag "vmio"
# (/run/qbkit-vm/vmio in the guest). boot.sh writes cmd.sh there (cwd, exported environment, CMD);
# vm-stage2.sh runs it and writes rc. The console streams to stdout (and $QBKIT_VM_LOG).
# Paths under the build machine's /tmp are /host/tmp/... in the guest (its /tmp is a tmpfs): boot.sh
# maps the working directory, the path variables below, CMD itself and every argument that names an
# existing /tmp path (also in NAME=PATH and --opt=PATH form), so a clone under /tmp works like one
# under /root. Any path, spaces included, is quoted into cmd.sh with printf %q.
#
# Environment (build machine side):
#   QBKIT_VM_DIR      cache from build-initramfs.sh (default /var/cache/qbkit-vm)
#   QBKIT_VM_MEM      guest RAM (default 1024M)       QBKIT_VM_CPUS  vCPUs (default 2)
#   QBKIT_VM_ACCEL    auto|kvm|tcg (auto: KVM only with kvm_intel/kvm_amd loaded; pitfall 1)
#   QBKIT_VM_MODULES  comma list modprobe'd before CMD
#   QBKIT_VM_TIMEOUT  seconds before qemu is killed in command mode (default 900) -> exit 124
#   QBKIT_VM_APPEND   extra kernel command line       QBKIT_VM_KEEP=1 keep the run dir
#   QBKIT_VM_LOG      also write the console to this file
#   QBKIT_VM_INTERACTIVE=1  run CMD with this terminal as the console (stdin attached, no timeout)
#   QBKIT_VM_BOOT_RETRIES  reboots when qemu dies before the guest is ready (default 1)
#   QBKIT_VM_PASS     space-separated names of extra variables to pass to CMD. Always passed:
#                     every QBKIT_* variable and SPEED RUNS DURATION CYCLES SECS.
#   QBKIT_VM_PRINT_CMD=1  print the guest's cmd.sh for CMD and exit without booting (tests)
# Exit status: CMD's; 124 on timeout; 255 when the guest reported nothing.
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
QBKIT_VM_DIR=${QBKIT_VM_DIR:-/var/cache/qbkit-vm}
mkdir -p "$QBKIT_VM_DIR" && QBKIT_VM_DIR=$(cd "$QBKIT_VM_DIR" && pwd)
export QBKIT_VM_DIR
MEM=${QBKIT_VM_MEM:-1024M}
CPUS=${QBKIT_VM_CPUS:-2}
ACCEL=${QBKIT_VM_ACCEL:-auto}

# The build machine's /tmp as the guest sees it: the guest's own /tmp is an empty tmpfs.
guest_path() { case $1 in /tmp|/tmp/*) echo "/host$1" ;; *) echo "$1" ;; esac; }
# An argument of CMD: an existing /tmp path (or NAME=PATH, --opt=PATH with one) is mapped; a path
# that does not exist here is left alone (a file the command creates in the guest's /tmp).
guest_arg() {
    local a=$1 pre='' val=$1
    case $a in
        /tmp|/tmp/*) ;;
        *=/tmp|*=/tmp/*) pre=${a%%=/tmp*}=; val=${a#"$pre"} ;;
        *) echo "$a"; return ;;
    esac
    if [ -e "$val" ]; then echo "$pre$(guest_path "$val")"; else echo "$a"; fi
}
INTERACTIVE=1
CMD_SH=
if [ $# -gt 0 ]; then
    INTERACTIVE=0
    CMD_SH=$(
        for v in $(compgen -v | grep -E '^QBKIT_[A-Z0-9_]*$'; echo SPEED RUNS DURATION CYCLES SECS ${QBKIT_VM_PASS:-}); do
            [ -n "${!v+x}" ] || continue
            val=${!v}
            case $v in QBKIT_VM_DIR|QBKIT_BIN_DIR|QBKIT_REPO|QBKIT_TOOLS_DIR) val=$(guest_path "$val") ;; esac
            printf 'export %s=%q\n' "$v" "$val"
        done
        printf 'cd %q 2>/dev/null || cd /\n' "$(guest_path "$PWD")"
        printf 'exec'
        for a in "$@"; do printf ' %q' "$(guest_arg "$a")"; done
        printf '\n'
    )
fi
if [ "${QBKIT_VM_PRINT_CMD:-0}" = 1 ]; then
    printf '%s\n' "$CMD_SH"
    exit 0
fi

# cheap when up to date; rebuilds the initramfs when its inputs changed
"$HERE/build-initramfs.sh" || exit 1

kvm_ok() {
    [ -c /dev/kvm ] && [ -w /dev/kvm ] || return 1
    # /dev/kvm backed by kvm_pvm runs a stock kernel ~100x slower than TCG: trust only VT-x/AMD-V
    [ -d /sys/module/kvm_intel ] || [ -d /sys/module/kvm_amd ] || return 1
    echo quit | timeout 20 qemu-system-x86_64 -accel kvm -M none -nodefaults -display none -monitor stdio >/dev/null 2>&1
}
if [ "$ACCEL" = auto ]; then
    if kvm_ok; then ACCEL=kvm; else ACCEL=tcg; fi
fi
case $ACCEL in
    kvm) ACCEL_ARGS=(-accel kvm -cpu host,-arch-capabilities) ;;
    tcg) ACCEL_ARGS=(-accel tcg,thread=multi -cpu max) ;;
    *) echo "boot.sh: bad QBKIT_VM_ACCEL=$ACCEL" >&2; exit 2 ;;
esac

KERNEL=$QBKIT_VM_DIR/vmlinux      # PVH entry into the ELF saves ~5 s of TCG decompression
[ -s "$KERNEL" ] || KERNEL=$QBKIT_VM_DIR/vmlinuz

mkdir -p "$QBKIT_VM_DIR/runs"
RUN=$(mktemp -d "$QBKIT_VM_DIR/runs/run.XXXXXX")
cleanup() { [ "${QBKIT_VM_KEEP:-0}" = 1 ] || rm -rf "$RUN"; }
trap cleanup EXIT
[ $INTERACTIVE = 1 ] || printf '%s\n' "$CMD_SH" > "$RUN/cmd.sh"

APPEND="console=ttyS0 quiet loglevel=3 panic=-1 8250.nr_uarts=1 i8042.noaux i8042.nokbd i8042.nopnp"
[ -n "${QBKIT_VM_MODULES:-}" ] && APPEND+=" qvm.modules=$QBKIT_VM_MODULES"
APPEND+=" ${QBKIT_VM_APPEND:-}"

# -nodefaults and no -netdev: the guest has no NIC, nothing it does can leave it (pitfall 15)
QEMU=(qemu-system-x86_64 "${ACCEL_ARGS[@]}" -M q35 -smp "$CPUS" -m "$MEM"
      -nodefaults -no-user-config -display none -no-reboot
      -kernel "$KERNEL" -initrd "$QBKIT_VM_DIR/initramfs.cpio.gz" -append "$APPEND"
      -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap
      -virtfs local,path="$RUN",mount_tag=vmio,security_model=none,multidevs=remap)

if [ $INTERACTIVE = 1 ]; then
    "${QEMU[@]}" -serial mon:stdio
    exit $?
fi
if [ "${QBKIT_VM_INTERACTIVE:-0}" = 1 ]; then
    # CMD on the console with this terminal attached (scripts/demo --shell); no timeout
    touch "$RUN/interactive"
    "${QEMU[@]}" -serial mon:stdio
    [ -f "$RUN/rc" ] && exit "$(cat "$RUN/rc")"
    exit 255
fi

T0=$EPOCHREALTIME
# console lines end in CRLF (pitfall 13): strip the CR for the log and the caller.
# qemu 7.2 TCG rarely aborts during early boot (seen once: msix_table_mmio_write assertion); a run
# that dies before QBKIT_VM_READY is retried (QBKIT_VM_BOOT_RETRIES, default 1).
attempt=0
while :; do
    append=(); [ $attempt -gt 0 ] && append=(-a)
    timeout -k 5 "${QBKIT_VM_TIMEOUT:-900}" "${QEMU[@]}" -serial stdio -monitor none </dev/null 2>&1 \
        | tr -d '\r' | tee "${append[@]}" "$RUN/console.log" ${QBKIT_VM_LOG:+"$QBKIT_VM_LOG"}
    qrc=${PIPESTATUS[0]}
    if [ ! -f "$RUN/rc" ] && [ "$qrc" != 124 ] && [ $attempt -lt "${QBKIT_VM_BOOT_RETRIES:-1}" ] \
       && ! grep -q '^QBKIT_VM_READY' "$RUN/console.log"; then
        attempt=$((attempt + 1))
        echo "boot.sh: qemu exited (rc=$qrc) before the guest was ready; retry $attempt" | tee -a ${QBKIT_VM_LOG:+"$QBKIT_VM_LOG"} >&2
        continue
    fi
    break
done
printf 'boot.sh: accel=%s mem=%s cpus=%s wall=%.1fs\n' "$ACCEL" "$MEM" "$CPUS" "$(bc <<<"$EPOCHREALTIME - $T0")" >&2
if [ -f "$RUN/rc" ]; then
    exit "$(cat "$RUN/rc")"
fi
[ "$qrc" = 124 ] && { echo "boot.sh: timed out after ${QBKIT_VM_TIMEOUT:-900} s" >&2; exit 124; }
echo "boot.sh: guest did not report an exit status" >&2
exit 255
