# guest.sh - helper library for scenarios running INSIDE the qbkit test VM (source it, bash only).
#
#   . "$QBKIT_REPO/tests/vm/lib/guest.sh"     (tests/vm/run exports QBKIT_REPO)
#
# What a scenario gets (see tests/vm/README.md for the full API):
#   usb_load                      dummy_hcd at $SPEED (high|super) + gadget/host modules
#   netns_up                      namespaces "board" and "wan" (ping sockets open in both)
#   wan_up                        wan0 with 198.51.100.1/24 + 2001:db8:5100::1/64, HTTP (20 MiB file,
#                                 known sha256), dnsmasq (test.qbkit), iperf3 server, UDP echo
#   hotplug_up                    uevent relay so libusb/nusb hotplug works (pitfall 18)
#   in_ns NS CMD...               run CMD in NS's network namespace only (configfs stays visible)
#   bg NAME CMD... / bg_ns NS NAME CMD...   background process, log $QVM_RUN/NAME.log, killed at exit
#   replug / port_off / port_on   host port power off/on of the dummy_hcd device (pitfall 19)
#   wait_* helpers                poll with shell built-ins (pitfall 22)
# Data flow: build machine's repo at the same path via 9p; scratch in $QVM_RUN (guest tmpfs);
# everything started here is killed, and namespaces/gadgets removed, by the EXIT trap.

[ -e /run/qbkit-vm/guest ] || { echo "guest.sh: not inside the qbkit test VM (tests/vm/run); refusing" >&2; exit 2; }

QBKIT_REPO=${QBKIT_REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)}
QBKIT_BIN_DIR=${QBKIT_BIN_DIR:-$QBKIT_REPO/target/release}
QBKIT_TOOLS_DIR=${QBKIT_TOOLS_DIR:-${QBKIT_VM_DIR:-/var/cache/qbkit-vm}/tools-target/release}
SPEED=${SPEED:-high}
QVM_LIB=$QBKIT_REPO/tests/vm/lib
QVM_RUN=/run/qbkit-test
QVM_NAME=${QVM_NAME:-$(basename "$0")}
PY=/usr/bin/python3            # Debian's python3 (pyusb), not a pyenv shim (pitfall 6)
export QBKIT_REPO QBKIT_BIN_DIR QBKIT_TOOLS_DIR SPEED

# test network (the defaults of docs/architecture.md for the board side, RFC 5737/3849 documentation ranges for wan)
WAN_IP=198.51.100.1
WAN_IP6=2001:db8:5100::1
WAN_DNS_NAME=test.qbkit
WAN_HTTP_URL=http://$WAN_IP/big.bin
WAN_BIG_MIB=20
WAN_BIG_SHA256=
WAN_UDP_ECHO_PORT=7
WAN_IPERF_PORT=5201
BOARD_IP=10.47.0.2
GW_IP=10.47.0.1

mkdir -p "$QVM_RUN"
[ -p "$QVM_RUN/.sleep" ] || mkfifo "$QVM_RUN/.sleep"
exec {QVM_SLEEP_FD}<>"$QVM_RUN/.sleep"
QVM_PIDS=()
QVM_GADGETS=()

say()    { _now; local ms=$((NOW_MS - QVM_T0_MS)); printf '[%s %d.%ds] %s\n' "$QVM_NAME" $((ms / 1000)) $(((ms % 1000) / 100)) "$*"; }
fail()   { say "FAIL: $*"; exit 1; }
metric() { echo "METRIC $*"; }
# seconds since the library was sourced, e.g. 12.3 (builtin only)
elapsed() { _now; local ms=$((NOW_MS - QVM_T0_MS)); echo "$((ms / 1000)).$(((ms % 1000) / 100))"; }
# now in milliseconds (integer, builtin only)
_now() { local n=${EPOCHREALTIME/./}; NOW_MS=$((n / 1000)); }   # sets NOW_MS without forking
now_ms() { _now; echo "$NOW_MS"; }
# sleep without forking /bin/sleep (process start-up costs 0.1-0.6 s under TCG)
_now; QVM_T0_MS=$NOW_MS
qsleep() { read -r -t "$1" -u "$QVM_SLEEP_FD" _ 2>/dev/null; return 0; }

# wait_for TIMEOUT_S CMD... : poll CMD (a function or builtin test, ideally) every 0.1 s
wait_for() {
    local t=$1; shift
    _now; local end=$((NOW_MS + ${t%.*} * 1000))
    while :; do
        "$@" && return 0
        _now; [ "$NOW_MS" -ge "$end" ] && return 1
        qsleep 0.1
    done
}
_file_has() { [ -s "$1" ]; }
# wait_file PATH [T=30]: until PATH exists and is non-empty
wait_file() { wait_for "${2:-30}" _file_has "$1"; }
# file_grep FILE REGEX: builtin-only line match (bash regex); prints the first matching line
file_grep() {
    local l
    [ -f "$1" ] || return 1
    while IFS= read -r l || [ -n "$l" ]; do
        [[ $l =~ $2 ]] && { printf '%s\n' "$l"; return 0; }
    done < "$1"
    return 1
}
# count_lines FILE REGEX: number of lines matching (builtin only)
count_lines() {
    local l n=0
    if [ -f "$1" ]; then
        while IFS= read -r l || [ -n "$l" ]; do [[ $l =~ $2 ]] && n=$((n + 1)); done < "$1"
    fi
    echo $n
}
_line_in() { file_grep "$1" "$2" >/dev/null; }
# wait_line FILE REGEX [T=30]
wait_line() { wait_for "${3:-30}" _line_in "$1" "$2"; }
_count_at_least() { [ "$(count_lines "$1" "$2")" -ge "$3" ]; }
# wait_count FILE REGEX N [T=30]: until at least N lines match
wait_count() { wait_for "${4:-30}" _count_at_least "$1" "$2" "$3"; }

# ------------------------------------------------------------------ processes
# bg NAME CMD...: start CMD in the background, output to $QVM_RUN/NAME.log; sets BG_PID
bg() {
    local name=$1; shift
    "$@" > "$QVM_RUN/$name.log" 2>&1 &
    BG_PID=$!
    QVM_PIDS+=("$BG_PID")
}
# bg_ns NS NAME CMD...: same, in network namespace NS (mount namespace unchanged: pitfall 17)
bg_ns() { local ns=$1 name=$2; shift 2; bg "$name" nsenter --net="/run/netns/$ns" -- "$@"; }
# in_ns NS CMD...: run CMD in NS's network namespace only. Never `ip netns exec` for gadget code:
# it remounts /sys and hides ConfigFS (pitfall 17).
in_ns() { local ns=$1; shift; nsenter --net="/run/netns/$ns" -- "$@"; }
# stop_pid PID: TERM, wait up to 5 s, then KILL
stop_pid() {
    local p=$1
    kill "$p" 2>/dev/null || return 0
    wait_for 5 _pid_gone "$p" || kill -9 "$p" 2>/dev/null
    wait "$p" 2>/dev/null
    return 0
}
_pid_gone() { ! kill -0 "$1" 2>/dev/null; }
pid_alive() { kill -0 "$1" 2>/dev/null; }
# wait_listen PID tcp|udp PORT [T=30]: until the netns of PID has a socket bound to PORT
_listening() {
    local pid=$1 proto=$2 hex f l
    printf -v hex '%04X' "$3"
    for f in /proc/"$pid"/net/"$proto" /proc/"$pid"/net/"${proto}6"; do
        [ -r "$f" ] || continue
        while read -r l; do
            set -- $l
            [[ $2 == *:"$hex" ]] || continue
            [ "$proto" = udp ] || [ "$4" = 0A ] && return 0
        done < "$f"
    done
    return 1
}
wait_listen() { wait_for "${4:-30}" _listening "$1" "$2" "$3"; }

# bin NAME: path of a product binary ($QBKIT_BIN_DIR), fail if missing
bin() { [ -x "$QBKIT_BIN_DIR/$1" ] || fail "missing $QBKIT_BIN_DIR/$1 (build it on the build machine: cargo build --release --workspace --locked --bins --examples)"; echo "$QBKIT_BIN_DIR/$1"; }
# tool NAME: path of a test tool (tests/vm/build-tools.sh)
tool() { [ -x "$QBKIT_TOOLS_DIR/$1" ] || fail "missing $QBKIT_TOOLS_DIR/$1 (tests/vm/build-tools.sh)"; echo "$QBKIT_TOOLS_DIR/$1"; }

# ------------------------------------------------------------------ USB
# usb_load [N]: dummy_hcd with N (default 1) UDC/host pairs at $SPEED (high: 480M, super: 5000M,
# bulk mps 1024: pitfall 11) and the gadget (libcomposite, usb_f_fs, usb_f_ncm) and host (cdc_ncm)
# modules. Sets UDC (the last one) and UDCS (all, in order).
usb_load() {
    local num=(${1:+num=$1})
    case $SPEED in
        high) modprobe dummy_hcd "${num[@]}" || fail "modprobe dummy_hcd ${num[*]}" ;;
        super) modprobe dummy_hcd "${num[@]}" is_super_speed=Y || fail "modprobe dummy_hcd ${num[*]} is_super_speed=Y" ;;
        *) fail "SPEED must be high or super, got $SPEED" ;;
    esac
    modprobe -a libcomposite usb_f_fs usb_f_ncm cdc_ncm tun || fail "modprobe gadget/host modules"
    mountpoint -q /sys/kernel/config || mount -t configfs none /sys/kernel/config
    UDC= UDCS=()
    local u
    for u in /sys/class/udc/*; do [ -e "$u" ] && UDC=${u##*/} && UDCS+=("$UDC"); done
    [ -n "$UDC" ] || fail "no UDC after loading dummy_hcd"
    say "usb: $UDC speed=$SPEED"
}
# usb_dev_find VID:PID: print the sysfs path of that device on the dummy_hcd host (by sysfs path
# and ids, never by bus number: pitfall 10); status 1 if absent
usb_dev_find() {
    local vid=${1%:*} pid=${1#*:} d v p
    for d in /sys/devices/platform/dummy_hcd.*/usb*/*-*; do
        [ -f "$d/idVendor" ] || continue
        read -r v < "$d/idVendor"; read -r p < "$d/idProduct"
        [ "$v" = "$vid" ] && [ "$p" = "$pid" ] && { echo "$d"; return 0; }
    done
    return 1
}
_dev_present() { usb_dev_find "$1" >/dev/null; }
_dev_absent() { ! usb_dev_find "$1" >/dev/null; }
# wait_usb_dev VID:PID [T=30]: until enumerated; sets USB_DEV (sysfs path) and USB_PORT
wait_usb_dev() {
    wait_for "${2:-30}" _dev_present "$1" || return 1
    USB_DEV=$(usb_dev_find "$1")
    USB_PORT=$(readlink -f "$USB_DEV/port")
}
# wait_usb_gone VID:PID [T=30]
wait_usb_gone() { wait_for "${2:-30}" _dev_absent "$1"; }
# port_off [PORT]: power the host port off (default $USB_PORT, from wait_usb_dev)
port_off() { echo 1 > "${1:-$USB_PORT}/disable" || fail "cannot disable ${1:-$USB_PORT}"; }
port_on() { echo 0 > "${1:-$USB_PORT}/disable" || fail "cannot enable ${1:-$USB_PORT}"; }
# replug VID:PID [OFF_S=0.3] [T=30]: port power off -> device gone -> on -> device back.
# The supported replug on this kernel (pitfall 19: UDC unbind and soft_connect break).
# Sets REPLUG_GONE_MS (off -> gone from sysfs) and REPLUG_BACK_MS (on -> enumerated).
replug() {
    local id=$1 off=${2:-0.3} t=${3:-30} t0
    wait_usb_dev "$id" "$t" || fail "replug: $id not present"
    t0=$(now_ms); port_off
    wait_usb_gone "$id" "$t" || { port_on; fail "replug: $id still present after port off"; }
    REPLUG_GONE_MS=$(( $(now_ms) - t0 ))
    qsleep "$off"
    t0=$(now_ms); port_on
    wait_usb_dev "$id" "$t" || fail "replug: $id did not come back within $t s"
    REPLUG_BACK_MS=$(( $(now_ms) - t0 ))
}

# hotplug_up [NETNS...]: start the uevent relay (libusb/nusb hotplug: pitfall 18) into the root
# namespace and the given ones (default: wan and board when they exist)
hotplug_up() {
    local ns=("$@") n
    if [ ${#ns[@]} = 0 ]; then
        for n in wan board; do [ -e "/run/netns/$n" ] && ns+=("$n"); done
    fi
    rm -f "$QVM_RUN/relay.ready"
    bg uevent-relay "$PY" "$QVM_LIB/uevent-relay.py" "$QVM_RUN/relay.ready" "${ns[@]}"
    RELAY_PID=$BG_PID
    wait_file "$QVM_RUN/relay.ready" 60 || { cat "$QVM_RUN/uevent-relay.log"; fail "uevent relay did not start"; }
    say "hotplug: uevent relay up ($(<"$QVM_RUN/relay.ready"))"
}

# ------------------------------------------------------------------ namespaces
_ns_new() {
    local n=$1
    [ -e "/run/netns/$n" ] && ip netns del "$n"
    ip netns add "$n" || fail "ip netns add $n"
    ip -n "$n" link set lo up
    # new namespaces have ping_group_range "1 0": open it like a laptop does (pitfall 21)
    in_ns "$n" sysctl -qw net.ipv4.ping_group_range="0 2147483647"
    QVM_NETNS+=("$n")
}
QVM_NETNS=()
# netns_up: namespaces "board" (the qbkit board) and "wan" (the laptop and its internet)
netns_up() {
    _ns_new board
    _ns_new wan
    modprobe dummy
    ip -n wan link add wan0 type dummy || fail "dummy link in wan"
    ip -n wan addr add "$WAN_IP/24" dev wan0
    ip -n wan addr add "$WAN_IP6/64" dev wan0 nodad
    ip -n wan link set wan0 up
    say "netns: board, wan (wan0 $WAN_IP/24 $WAN_IP6/64)"
}

# wan_up: the test servers in wan (needs netns_up). Exports WAN_BIG_SHA256. The guest's
# /etc/resolv.conf (RAM overlay, never the build machine's) points at the wan DNS server, so a
# laptop-side program in wan resolves through it.
wan_up() {
    rm -f "$QVM_RUN/wan.ready"
    bg_ns wan wan-servers "$PY" "$QVM_LIB/wan-servers.py" "$QVM_RUN/wan.ready" "$QVM_RUN/www" "$WAN_BIG_MIB" "$WAN_IP" "$WAN_IP6"
    WAN_PID=$BG_PID
    bg_ns wan dnsmasq dnsmasq --keep-in-foreground --conf-file=/dev/null --no-resolv --no-hosts \
        --bind-interfaces --listen-address="$WAN_IP" --listen-address="$WAN_IP6" --user=root --group=root \
        --pid-file="$QVM_RUN/dnsmasq.pid" --address="/$WAN_DNS_NAME/$WAN_IP" --address="/$WAN_DNS_NAME/$WAN_IP6"
    DNS_PID=$BG_PID
    bg_ns wan iperf3 iperf3 -s -B "$WAN_IP" -p "$WAN_IPERF_PORT"
    IPERF_PID=$BG_PID
    rm -f /etc/resolv.conf
    printf 'nameserver %s\n' "$WAN_IP" > /etc/resolv.conf
    wait_listen "$DNS_PID" udp 53 60 || { cat "$QVM_RUN/dnsmasq.log"; fail "dnsmasq not listening"; }
    wait_listen "$IPERF_PID" tcp "$WAN_IPERF_PORT" 60 || { cat "$QVM_RUN/iperf3.log"; fail "iperf3 server not listening"; }
    wait_file "$QVM_RUN/wan.ready" 120 || { cat "$QVM_RUN/wan-servers.log"; fail "wan servers did not start"; }
    read -r WAN_BIG_SHA256 < "$QVM_RUN/wan.ready"
    export WAN_IP WAN_IP6 WAN_DNS_NAME WAN_HTTP_URL WAN_BIG_SHA256 WAN_UDP_ECHO_PORT WAN_IPERF_PORT
    say "wan: http $WAN_HTTP_URL (${WAN_BIG_MIB} MiB sha256 ${WAN_BIG_SHA256:0:16}...), dns $WAN_DNS_NAME, iperf3 :$WAN_IPERF_PORT, udp echo :$WAN_UDP_ECHO_PORT"
}

# iperf_mbit NS [iperf3 client args...]: one iperf3 run from NS to the wan server; prints the
# receiver's Mbit/s (-R for server->client)
# sshd_board DIR [NS]: the board's sshd (tests/lib/ssh-board.sh made DIR) in namespace NS (default
# `board`; its log is sshd.log, or sshd-NS.log); sets SSHD_PID once it listens on :22. The guest runs the build machine's userland, root's
# ~/.bashrc included, and Debian's bash sources it for every command sshd runs; a pyenv init there
# costs seconds of process starts under TCG. So sshd gets its own mount namespace with an empty
# file over it: nothing else in the guest sees that.
sshd_board() {
    local dir=$1 ns=${2:-board} rc log=sshd
    [ "$ns" = board ] || log=sshd-$ns
    : > "$dir/empty-bashrc"
    rc=$(getent passwd root | cut -d: -f6)/.bashrc
    bg_ns "$ns" "$log" unshare --mount --propagation private -- sh -c \
        '[ ! -e "$1" ] || mount --bind "$2" "$1" || exit 1; exec /usr/sbin/sshd -D -e -f "$3"' \
        sh "$rc" "$dir/empty-bashrc" "$dir/sshd_config"
    SSHD_PID=$BG_PID
    wait_listen "$SSHD_PID" tcp 22 60 || fail "sshd not listening in $ns: $(tail -5 "$QVM_RUN/$log.log")"
}

iperf_mbit() {
    local ns=$1; shift
    in_ns "$ns" iperf3 -c "$WAN_IP" -p "$WAN_IPERF_PORT" -J "$@" > "$QVM_RUN/iperf.json" || { cat "$QVM_RUN/iperf.json"; return 1; }
    "$PY" -c 'import json,sys; j=json.load(open(sys.argv[1])); print("%.1f" % (j["end"]["sum_received"]["bits_per_second"]/1e6))' "$QVM_RUN/iperf.json"
}
# median V...: median of numbers
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
# iperf_measure TAG [RUNS=$RUNS|3] [SECS=$DURATION|5]: RUNS x (up, down) iperf3 runs from board to
# the wan server (up = board -> wan); sets <TAG>_UP / <TAG>_DOWN to the medians (Mbit/s)
iperf_measure() {
    local tag=$1 runs=${2:-${RUNS:-3}} secs=${3:-${DURATION:-5}} i u d ups=() downs=()
    for ((i = 1; i <= runs; i++)); do
        u=$(iperf_mbit board -t "$secs" -O 1) || fail "$tag iperf3 up run $i"
        d=$(iperf_mbit board -t "$secs" -O 1 -R) || fail "$tag iperf3 down run $i"
        say "$tag run $i: up $u Mbit/s, down $d Mbit/s"
        ups+=("$u"); downs+=("$d")
    done
    printf -v "${tag}_UP" '%s' "$(median "${ups[@]}")"
    printf -v "${tag}_DOWN" '%s' "$(median "${downs[@]}")"
}
# ratio X Y: X / Y with 2 decimals ("-" when X is "-")
ratio() { [ "$1" = - ] && { echo -; return; }; awk -v q="$1" -v n="$2" 'BEGIN { printf "%.2f", q / n }'; }

# ------------------------------------------------------------------ kernel CDC-NCM baseline
# ncm_up: ConfigFS NCM gadget -> host cdc_ncm netdev; the gadget netdev goes to board
# ($BOARD_IP, default route via $GW_IP), the host netdev to wan ($GW_IP): the same path the
# product's traffic takes (board -> USB -> laptop -> wan servers). Sets NCM_GIF, NCM_HIF.
NCM_G=/sys/kernel/config/usb_gadget/qbkit-ncm
ncm_up() {
    # The kernel NCM link on dummy_hcd occasionally never passes traffic (seen once in ~30 boots:
    # both netdevs up, no reply for 30 s); that is the baseline's problem, not the product's, so
    # report what the links looked like and build the NCM gadget once more before failing.
    _ncm_try && return 0
    say "ncm: no traffic over NCM; links: board $(ip -n board -br link show "$NCM_GIF" 2>&1) / wan $(ip -n wan -br link show "$NCM_HIF" 2>&1); neighbours: $(ip -n board neigh 2>&1 | tr '\n' ' ')"
    ncm_down
    wait_usb_gone 1d6b:0104 30 || fail "NCM gadget still attached after removing it"
    say "ncm: second attempt"
    _ncm_try || fail "board cannot ping $WAN_IP over NCM (two attempts)"
}
_ncm_try() {
    local g=$NCM_G n d t0
    mkdir "$g" || fail "configfs gadget dir"
    QVM_GADGETS+=("$g")
    echo 0x1d6b > "$g/idVendor"; echo 0x0104 > "$g/idProduct"; echo 0x0200 > "$g/bcdUSB"
    mkdir "$g/strings/0x409"
    echo qbkit > "$g/strings/0x409/manufacturer"; echo "NCM baseline" > "$g/strings/0x409/product"
    mkdir "$g/functions/ncm.usb0"
    echo 02:00:00:00:47:02 > "$g/functions/ncm.usb0/dev_addr"
    echo 02:00:00:00:47:01 > "$g/functions/ncm.usb0/host_addr"
    mkdir -p "$g/configs/c.1/strings/0x409"
    echo NCM > "$g/configs/c.1/strings/0x409/configuration"
    ln -s "$g/functions/ncm.usb0" "$g/configs/c.1/"
    t0=$(now_ms)
    echo "$UDC" > "$g/UDC" || fail "bind NCM gadget to $UDC"
    wait_usb_dev 1d6b:0104 30 || fail "NCM gadget did not enumerate"
    NCM_HIF=
    _ncm_hif() {
        for n in /sys/class/net/*; do
            d=$(readlink -f "$n/device/driver" 2>/dev/null) || continue
            [ "${d##*/}" = cdc_ncm ] && { NCM_HIF=${n##*/}; return 0; }
        done
        return 1
    }
    wait_for 30 _ncm_hif || fail "no cdc_ncm netdev"
    read -r NCM_GIF < "$g/functions/ncm.usb0/ifname"
    say "ncm: bind -> host netdev $(( $(now_ms) - t0 )) ms; gadget $NCM_GIF, host $NCM_HIF"
    ip link set "$NCM_GIF" netns board && ip link set "$NCM_HIF" netns wan || fail "move NCM netdevs"
    ip -n board addr add "$BOARD_IP/24" dev "$NCM_GIF"; ip -n board link set "$NCM_GIF" up
    ip -n board route add default via "$GW_IP"
    ip -n wan addr add "$GW_IP/24" dev "$NCM_HIF"; ip -n wan link set "$NCM_HIF" up
    wait_for 20 in_ns board ping -n -c1 -W1 "$WAN_IP" >/dev/null
}
ncm_down() {
    _gadget_rm "$NCM_G"
    ip -n board route del default 2>/dev/null
    return 0
}
_gadget_rm() {
    local g=$1 f
    [ -d "$g" ] || return 0
    echo "" > "$g/UDC" 2>/dev/null
    for f in "$g"/configs/*/*.*; do [ -L "$f" ] && rm -f "$f"; done
    for f in "$g"/configs/*/strings/*; do [ -d "$f" ] && rmdir "$f"; done
    for f in "$g"/configs/* "$g"/functions/* "$g"/strings/*; do [ -d "$f" ] && rmdir "$f"; done
    rmdir "$g" 2>/dev/null
}

# ------------------------------------------------------------------ cleanup
qvm_cleanup() {
    local rc=$? p g n
    for ((i = ${#QVM_PIDS[@]} - 1; i >= 0; i--)); do
        p=${QVM_PIDS[i]}; kill "$p" 2>/dev/null
    done
    for p in "${QVM_PIDS[@]}"; do wait_for 3 _pid_gone "$p" || kill -9 "$p" 2>/dev/null; done
    for g in "${QVM_GADGETS[@]}"; do _gadget_rm "$g"; done
    for n in "${QVM_NETNS[@]}"; do ip netns del "$n" 2>/dev/null; done
    if [ $rc = 0 ]; then say "PASS ($(elapsed) s)"; else say "exit $rc; logs in $QVM_RUN:"; _dump_logs; fi
    return $rc
}
_dump_logs() {
    local f
    for f in "$QVM_RUN"/*.log; do
        [ -f "$f" ] || continue
        echo "----- ${f##*/} (last 30 lines)"
        tail -n 30 "$f"
    done
    echo "----- dmesg (last 20 lines)"; dmesg | tail -n 20
}

# wan_check [NS=board]: from NS, resolve $WAN_DNS_NAME, UDP echo, download $WAN_HTTP_URL and check
# its sha256 (one Python process); fails the scenario on any mismatch
# e2e TAG: the board reaches the wan through whatever qbkit-host runs now
e2e() {
    local tag=$1 t0 ans
    t0=$(now_ms)
    wait_for 90 in_ns board ping -n -c1 -W1 "$WAN_IP" >/dev/null || fail "$tag: board cannot reach $WAN_IP"
    say "$tag: link up ($(( $(now_ms) - t0 )) ms to the first ping)"
    in_ns board ping -n -c 3 -i 0.2 -W 3 "$WAN_IP" > "$QVM_RUN/ping-$tag.txt" || { cat "$QVM_RUN/ping-$tag.txt"; fail "$tag: ping"; }
    ans=$(in_ns board dig +short +time=3 +tries=2 @"$GW_IP" "$WAN_DNS_NAME" A) || fail "$tag: dig through the gateway"
    [ "$ans" = "$WAN_IP" ] || fail "$tag: DNS through the gateway answered '$ans', want $WAN_IP"
    wan_check board
    say "$tag: e2e ok ($(grep -E 'packets transmitted' "$QVM_RUN/ping-$tag.txt"); dns $ans)"
}
_is_sock() { [ -S "$1" ]; }
_exists() { [ -e "$1" ]; }
# as_nobody PID: the process runs as uid 65534
as_nobody() { local k v; while read -r k v _; do [ "$k" = Uid: ] && { [ "$v" = 65534 ]; return; }; done < "/proc/$1/status"; return 1; }
wan_check() {
    in_ns "${1:-board}" "$PY" "$QVM_LIB/wan-check.py" "$WAN_DNS_NAME" "$WAN_IP" "$WAN_HTTP_URL" \
        "$WAN_BIG_SHA256" "$WAN_UDP_ECHO_PORT" || fail "wan check from ${1:-board} failed"
}

trap qvm_cleanup EXIT
