# bench/lib/harness.sh -- shared shell part of bench/nat/run and bench/forward/run (source it).
#
# What it gives: logging and pid tracking; kill_tree; a watchdog; the EXIT trap that kills what was
# started (by pid, leaves first) and deletes the run's namespaces (by exact name); the `wan`
# namespace with its nftables guard; bringing each stack (qbkit, slirp4netns, pasta, pasta-tap) up and down
# against a board namespace; the per-step monitor and the results.jsonl emitter.
#
# The caller sets, before sourcing: OUT (run directory), WAN (wan namespace name), BOARD_PREFIX
# (board namespaces are BOARD_PREFIX<stack>), SRV (server address in wan), STACKS, BIN, MAXRUN,
# and defines stack_check STACK (run after a stack is up; non-zero = unusable). Optional: SRV6 (the
# servers' IPv6 address: wan gets IPv6 too and slirp4netns runs with --enable-ipv6). Optional arrays
# with extra arguments per stack: SLIRP_EXTRA, PASTA_PORTS (default: no forwards), PASTA_TAP_PORTS
# (the stack pasta-tap's: a second pasta, for forwards its clients reach on a non-loopback address),
# QBKIT_EXTRA, QBKIT_BASE_EXTRA (the stack qbkit-base's, when not empty; else it gets QBKIT_EXTRA).
# After `harness_init`: S (state dir), RES (results.jsonl), GADGET, HOSTBIN.

harness_init() {
  S=$OUT/state
  mkdir -p "$OUT/raw" "$S"
  RES=$OUT/results.jsonl
  : > "$RES"
  : > "$S/pids"
  GADGET=$BIN/qbkit-gadget
  HOSTBIN=$BIN/qbkit-host
  CLEANED=0 WATCHDOG=
  trap cleanup EXIT
  trap 'exit 130' INT TERM
  # watchdog: exits quietly on TERM (cleanup), else stops the whole run after MAXRUN seconds
  ( trap 'kill $SL 2>/dev/null; exit 0' TERM; sleep "$MAXRUN" & SL=$!; wait $SL || exit 0
    log "watchdog: run exceeded ${MAXRUN}s, stopping"; kill -TERM $$ ) & WATCHDOG=$!
}

log() { echo "[$(date +%H:%M:%S)] $*" >&2; }
track() { echo "$1" >> "$S/pids"; }
board_ns() { echo "$BOARD_PREFIX$1"; }

# TERM a process and its descendants (leaves first), KILL what survives 1 s.
kill_tree() {
  local pid=$1 k
  [ -d "/proc/$pid" ] || return 0
  for k in $(cat /proc/"$pid"/task/*/children 2>/dev/null); do kill_tree "$k"; done
  kill -TERM "$pid" 2>/dev/null
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    [ -d "/proc/$pid" ] && [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ] || break
    sleep 0.1
  done
  [ -d "/proc/$pid" ] && [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ] && kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null || true
}

del_namespaces() { # our namespaces, by exact name only
  local st
  for st in qbkit qbkit-base slirp4netns pasta pasta-tap; do ip netns del "$(board_ns "$st")" 2>/dev/null; done
  ip netns del "$WAN" 2>/dev/null
}

cleanup() {
  [ "$CLEANED" = 1 ] && return; CLEANED=1
  log "cleanup"
  local p
  kill -TERM "$WATCHDOG" 2>/dev/null; wait "$WATCHDOG" 2>/dev/null
  if ip netns list 2>/dev/null | grep -qx "$WAN\( .*\)\?"; then
    ip netns exec "$WAN" nft list table inet qbk_bench_guard 2>/dev/null | grep counter > "$OUT/wan_guard_counters.txt"
  fi
  for p in $(tac "$S/pids" 2>/dev/null); do kill_tree "$p"; done
  del_namespaces
  rm -rf "/etc/netns/$WAN"
  true
}

# install_missing CMD:PACKAGE... -- apt-get install the packages whose command is missing
install_missing() {
  local m= c
  for c in "$@"; do command -v "${c%%:*}" >/dev/null || m="$m ${c#*:}"; done
  [ -z "$m" ] && return 0
  log "installing:$m"
  timeout 600 apt-get install -y $m >"$OUT/apt.log" 2>&1 || { log "apt-get failed, see $OUT/apt.log"; return 1; }
}

# wan_up: the `wan` namespace: veth pair with BOTH ends inside it, wan0 198.51.100.1/25 (default route
# via .126, which does not exist) and wan1 $SRV/25; with SRV6 also wan0 2001:db8:1::1/64 (default
# route via 2001:db8:1::fe, which does not exist) and wan1 $SRV6/64 (documentation prefix, no DAD);
# nftables counts and drops any output that is not loopback, 198.51.100.0/24 or 2001:db8::/32 (and
# link-local/all-nodes IPv6); no other interface may exist in it.
wan_up() {
  del_namespaces   # leftovers of an earlier run of the same script
  ip netns add "$WAN"
  mkdir -p "/etc/netns/$WAN"   # `ip netns exec` bind-mounts this over /etc/resolv.conf: DNS stays inside
  echo "nameserver $SRV" > "/etc/netns/$WAN/resolv.conf"
  ip -n "$WAN" link set lo up
  ip -n "$WAN" link add wan0 type veth peer name wan1   # created inside wan: both ends stay there
  ip -n "$WAN" addr add 198.51.100.1/25 dev wan0
  ip -n "$WAN" addr add "$SRV/25" dev wan1
  ip -n "$WAN" link set wan0 up
  ip -n "$WAN" link set wan1 up
  ip -n "$WAN" route add default via 198.51.100.126 dev wan0   # pasta copies the default-route interface
  if [ -n "${SRV6:-}" ]; then
    ip -n "$WAN" addr add 2001:db8:1::1/64 dev wan0 nodad
    ip -n "$WAN" addr add "$SRV6/64" dev wan1 nodad
    ip -n "$WAN" -6 route add default via 2001:db8:1::fe dev wan0   # pasta copies this one for IPv6
  fi
  ip netns exec "$WAN" sysctl -qw net.ipv4.ping_group_range="0 2147483647"
  ip netns exec "$WAN" nft -f - <<'NFT' || return 1
table inet qbk_bench_guard {
  chain out {
    type filter hook output priority 0; policy accept;
    oif lo accept
    ip daddr 198.51.100.0/24 accept
    ip6 daddr 2001:db8::/32 accept
    ip6 daddr { fe80::/10, ff02::/16 } accept
    counter drop
  }
}
NFT
  local extra
  extra=$(ip -n "$WAN" -o link show | awk -F': ' '{sub(/@.*/,"",$2); print $2}' | grep -vxE 'lo|wan0|wan1')
  [ -z "$extra" ] || { log "unexpected interfaces in $WAN: $extra"; return 1; }
}

meta_common() { # machine and tool versions, one "key: value" a line
  local root=$1
  echo "date: $(date -Is)"
  echo "uname: $(uname -srm)"
  echo "nproc: $(nproc)"
  echo "cpu: $(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo)"
  echo "mem: $(awk '/MemTotal/{print $2" kB"}' /proc/meminfo)"
  echo "slirp4netns: $(slirp4netns --version 2>/dev/null | head -1 | awk '{print $3}') (libslirp $(slirp4netns --version 2>/dev/null | awk '/libslirp/{print $2}'))"
  echo "passt: $(dpkg-query -W -f='${Version}' passt 2>/dev/null)"
  echo "qbkit: $(git -C "$root" log -1 --format='%h %cd' --date=short 2>/dev/null) $([ -n "$(git -C "$root" status --porcelain -- host gadget link shared-frame 2>/dev/null)" ] && echo '(+ uncommitted changes in the work tree)')"
  echo "qbkit-host: $("$HOSTBIN" --version 2>/dev/null), binaries built $(date -r "$HOSTBIN" +%H:%M) (host) / $(date -r "$GADGET" +%H:%M) (gadget) from the work tree"
  echo "iperf3: $(iperf3 --version | head -1)"
  echo "python: $(python3 --version 2>&1)"
  # the price of one hop between processes on this machine (bench/lib/wakeup.c)
  cc -O2 -o "$S/wakeup" "$root/bench/lib/wakeup.c" && timeout 60 "$S/wakeup"
  echo "uptime_before: $(uptime)"
}

# ------------------------------------------------------------------ stacks
holder() { # holder NS -> pid of a process sitting in NS (slirp4netns/pasta attach to it)
  ip netns exec "$1" sleep 86400 >/dev/null 2>&1 & local h=$!
  track $h
  echo $h
}
wait_until() { # wait_until SECONDS CMD... (polls every 0.1 s)
  local n=$(( $1 * 10 )); shift
  for _ in $(seq "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  return 1
}
board_has() { ip -n "$1" -4 -o addr show | grep -q "$2"; }

# stack_up NAME MTU -> $S/NAME.env: B (board netns), PIDS (the NAT process: RSS/CPU metrics),
# EXTRA (other processes of the stack, reported separately), MTU (link MTU the board sees);
# pids written to $S/NAME.more (e.g. board servers started by stack_check) die with the stack.
stack_up() {
  local st=$1 mtu=$2 b h w g ifc lmtu
  b=$(board_ns "$st")
  ip netns del "$b" 2>/dev/null
  ip netns add "$b"; ip -n "$b" link set lo up
  : > "$S/$st.more"
  case $st in
  slirp4netns)
    h=$(holder "$b")
    local v6=(); [ -n "${SRV6:-}" ] && v6=(--enable-ipv6)   # the board takes fd00::/64 from its RA
    ip netns exec "$WAN" slirp4netns --configure --mtu="$mtu" --disable-host-loopback "${v6[@]}" "${SLIRP_EXTRA[@]}" "$h" tap0 \
      >"$S/slirp4netns.$mtu.log" 2>&1 & w=$!; track $w
    wait_until 10 board_has "$b" 'inet 10.0.2.100' || { log "slirp4netns did not come up"; return 1; }
    echo "B=$b; PIDS=$w; EXTRA=; HOLDER=$h; MTU=$mtu" > "$S/$st.env"
    ;;
  pasta|pasta-tap)
    h=
    # -t/-u/-T/-U none (default PASTA_PORTS): no port forwards, no loopback splice (all traffic
    # through the tap path); --no-map-gw: the gateway is not host loopback. --netns NAME (it quits
    # with it) and --runas 0: as nobody it may not setns into a root-owned netns. pasta-tap: the
    # same program with PASTA_TAP_PORTS.
    local ports=(-t none -u none -T none -U none)
    if [ "$st" = pasta-tap ]; then
      [ ${#PASTA_TAP_PORTS[@]} -gt 0 ] && ports=("${PASTA_TAP_PORTS[@]}")
    else
      [ ${#PASTA_PORTS[@]} -gt 0 ] && ports=("${PASTA_PORTS[@]}")
    fi
    ip netns exec "$WAN" pasta -f -q --config-net -m "$mtu" "${ports[@]}" --no-map-gw \
      --runas 0 --netns "$b" \
      >"$S/$st.$mtu.log" 2>&1 & w=$!; track $w
    wait_until 10 board_has "$b" 'inet 198.51.100.1/' || { log "$st did not come up"; cat "$S/$st.$mtu.log" >&2; return 1; }
    ifc=$(ip -n "$b" -o link show | awk -F': ' '$2!="lo"{print $2; exit}')
    ip -n "$b" link set "$ifc" mtu "$mtu"
    echo "B=$b; PIDS=$w; EXTRA=; HOLDER=$h; MTU=$mtu" > "$S/$st.env"
    ;;
  qbkit|qbkit-base)
    # qbkit-base: a second qbkit from $QBKIT_BASE_DIR (the binaries before a change), run
    # interleaved with the work tree's so both see the same load; its files are $S/base.*
    local gad=$GADGET hb=$HOSTBIN sock=$S/qbk.sock gctl=$S/qg.ctl hctl=$S/qh.ctl
    if [ "$st" = qbkit-base ]; then
      gad=${QBKIT_BASE_DIR:-}/qbkit-gadget hb=${QBKIT_BASE_DIR:-}/qbkit-host
      sock=$S/base.sock gctl=$S/base.g.ctl hctl=$S/base.h.ctl
    fi
    [ -x "$gad" ] && [ -x "$hb" ] || { log "$st: qbkit binaries missing ($hb)"; return 1; }
    rm -f "$sock" "$gctl" "$hctl"
    # same wiring as tests/netns/host-e2e: the host listens on the unix socket, the gadget dials it
    local mtuarg=(); [ "$mtu" != default ] && mtuarg=(--mtu "$mtu")
    local extra=("${QBKIT_EXTRA[@]}")
    [ "$st" = qbkit-base ] && [ ${#QBKIT_BASE_EXTRA[@]} -gt 0 ] && extra=("${QBKIT_BASE_EXTRA[@]}")
    ip netns exec "$WAN" env RUST_LOG=warn "$hb" run --transport "unix-listen://$sock" \
      --control "$hctl" --dns "$SRV:53" "${mtuarg[@]}" "${extra[@]}" >"$S/$st-host.$mtu.log" 2>&1 & w=$!; track $w
    wait_until 10 test -S "$sock" || { log "$st-host did not listen"; tail -5 "$S/$st-host.$mtu.log" >&2; return 1; }
    ip netns exec "$b" env RUST_LOG=warn "$gad" run --link "unix://$sock" \
      --control-socket "$gctl" --dns off >"$S/$st-gadget.$mtu.log" 2>&1 & g=$!; track $g
    if ! wait_until 15 sh -c "ip -n $b -4 route show default | grep -q 'dev qbkit0'"; then
      log "$st link did not come up; host log:"; tail -5 "$S/$st-host.$mtu.log" >&2
      return 1
    fi
    lmtu=$(ip -n "$b" -o link show dev qbkit0 | sed -n 's/.* mtu \([0-9]*\).*/\1/p')
    echo "B=$b; PIDS=$w; EXTRA=$g; HOLDER=; MTU=$lmtu" > "$S/$st.env"
    ;;
  *) log "unknown stack $st"; return 1;;
  esac
  stack_check "$st"
}

stack_down() {
  local st=$1 B PIDS EXTRA HOLDER MTU p
  [ -f "$S/$st.env" ] || return 0
  . "$S/$st.env"
  for p in $(cat "$S/$st.more" 2>/dev/null) $PIDS $EXTRA $HOLDER; do kill_tree "$p"; done
  ip netns del "$B" 2>/dev/null
  rm -f "$S/$st.env" "$S/$st.more"
}

bring_up() { # bring_up PHASE MTU_FOR_OTHERS MTU_FOR_QBKIT -> $UP = the stacks that came up
  local st m
  UP=
  for st in $STACKS; do
    m=$2; case $st in qbkit*) m=$3;; esac
    if stack_up "$st" "$m"; then UP="$UP $st"; else log "$st unavailable in phase $1"; stack_down "$st"; fi
  done
  log "phase $1: stacks up:$UP"
}

rotate() { local n=$1; shift; local a=("$@") k=$# i; for ((i = 0; i < k; i++)); do echo -n "${a[$(((i + n) % k))]} "; done; }

# ------------------------------------------------------------------ measurements
rss_kib() { awk '/^VmRSS:/{print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
# The anonymous part of it: what the process allocated, without the pages of its binary and
# libraries that are mapped from the page cache (shared, and a larger binary maps more of them).
rss_anon_kib() { awk '/^RssAnon:/{print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
load1() { cut -d' ' -f1 /proc/loadavg; }
emit() { # emit PHASE REP TEST STACK MTU RES_JSON MON_JSON
  echo "{\"phase\":\"$1\",\"rep\":$2,\"test\":\"$3\",\"stack\":\"$4\",\"mtu\":${5:-0},\"load1\":$(load1),\"res\":${6:-null},\"mon\":${7:-null}}" >> "$RES"
}

MONPID=
mon_start() { # mon_start PID[,PID...]: RSS/CPU of the stack around one step (bench/nat/mon.py)
  rm -f "$S/mon.ready"
  MON_READY=$S/mon.ready python3 "$HARNESS_DIR/../nat/mon.py" "$1" > "$S/mon.tmp" & MONPID=$!
  wait_until 10 test -e "$S/mon.ready"
}
mon_stop() { kill -TERM "$MONPID" 2>/dev/null; wait "$MONPID" 2>/dev/null; MONPID=; }
mon_json() { local m; m=$(cat "$S/mon.tmp" 2>/dev/null); echo "${m:-null}"; }
json_or() { # json_or DEFAULT TEXT: TEXT if it is one JSON value, else DEFAULT
  python3 -c 'import json,sys; json.loads(sys.argv[1])' "$2" 2>/dev/null && echo "$2" || echo "$1"
}

HARNESS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
[ -v SLIRP_EXTRA ] || SLIRP_EXTRA=()
[ -v PASTA_PORTS ] || PASTA_PORTS=()
[ -v PASTA_TAP_PORTS ] || PASTA_TAP_PORTS=()
[ -v QBKIT_EXTRA ] || QBKIT_EXTRA=()
[ -v QBKIT_BASE_EXTRA ] || QBKIT_BASE_EXTRA=()
