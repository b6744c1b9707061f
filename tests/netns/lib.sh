# tests/netns/lib.sh: helpers for the root end-to-end tests in network namespaces (sourced).
#
# Every test gets a unique prefix (qbk-<test>-<pid>), creates namespaces only under it, records
# every background pid and every /etc/netns/<ns> directory it made, and removes exactly those on
# exit (trap). Nothing here touches namespaces or processes it did not create.
#
#   qbk_require_root              skip (exit 0) unless root; with QBKIT_TEST_PRIVILEGED=1 fail instead
#   qbk_init NAME                 prefix, temp dir $QBK_TMP, cleanup trap
#   qbk_ns_add VAR SUFFIX         create namespace <prefix>-SUFFIX with lo up; its name goes to $VAR
#                                 (not printed: a $(...) subshell would lose the cleanup record)
#   qbk_ns_resolv NS TEXT         /etc/netns/NS/resolv.conf (ip netns exec bind-mounts it)
#   qbk_bg NS LOG CMD...          run CMD in NS in the background, output to $QBK_TMP/LOG; sets QBK_PID
#   qbk_stop PID                  stop one background pid of this test now (TERM, then KILL) and
#                                 forget it, so the cleanup never signals a reused pid
#   qbk_wait DESC SECS CMD...     poll CMD (every 0.1 s) until it succeeds, or fail after SECS
#   qbk_check DESC CMD...         run one check, print ok/FAIL, count failures in QBK_FAILS
#   qbk_finish                    print the summary and exit non-zero if any check failed
#   qbk_wan_servers NS SRV MIB    the servers side of the host e2e tests in NS (see below)
#   qbk_boards_up WAN N [ARGS...] one qbkit-host on a unix-listen:// link in WAN with N boards
#   qbk_boards_down               stop what qbk_boards_up started (see below)

QBK_LIB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
QBK_PIDS=()
QBK_NSES=()
QBK_ETC_DIRS=()
QBK_FAILS=0
QBK_CHECKS=0

qbk_require_root() {
  if [ "$(id -u)" -ne 0 ] || ! command -v ip >/dev/null 2>&1; then
    if [ "${QBKIT_TEST_PRIVILEGED:-0}" = 1 ]; then
      echo "FATAL: $0 needs root and iproute2 (run by scripts/test)" >&2
      exit 1
    fi
    echo "SKIP: $0 needs root and network namespaces (run it through sudo scripts/test netns)"
    exit 0
  fi
}

qbk_cleanup() {
  local rc=$? pid ns d i
  for ((i = ${#QBK_PIDS[@]} - 1; i >= 0; i--)); do
    pid=${QBK_PIDS[i]}
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${QBK_PIDS[@]}"; do qbk_reap "$pid"; done
  for ns in "${QBK_NSES[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
  for d in "${QBK_ETC_DIRS[@]}"; do rm -rf -- "$d"; done
  if [ -n "${QBK_TMP:-}" ] && [ -d "$QBK_TMP" ]; then
    if [ "$rc" -ne 0 ] || [ "$QBK_FAILS" -ne 0 ]; then
      echo "logs kept in $QBK_TMP" >&2
      # Keep only the logs: large data files are not worth keeping.
      find "$QBK_TMP" -type f -size +1M -delete 2>/dev/null || true
    else
      rm -rf -- "$QBK_TMP"
    fi
  fi
  return "$rc"
}

qbk_init() {
  QBK_PREFIX="qbk-$1-$$"
  QBK_TMP=$(mktemp -d "/tmp/$QBK_PREFIX.XXXXXX")
  trap qbk_cleanup EXIT
  trap 'exit 130' INT TERM
}

qbk_ns_add() {
  local ns="$QBK_PREFIX-$2"
  ip netns add "$ns"
  QBK_NSES+=("$ns")
  ip -n "$ns" link set lo up
  printf -v "$1" '%s' "$ns"
}

qbk_ns_resolv() {
  local d="/etc/netns/$1"
  mkdir -p "$d"
  QBK_ETC_DIRS+=("$d")
  printf '%s\n' "$2" > "$d/resolv.conf"
}

qbk_bg() {
  local ns=$1 log=$2
  shift 2
  ip netns exec "$ns" "$@" > "$QBK_TMP/$log" 2>&1 &
  QBK_PID=$!
  QBK_PIDS+=("$QBK_PID")
}

# Gives a signalled pid 3 s to exit, then kills it, and reaps it.
qbk_reap() {
  for _ in $(seq 30); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

qbk_stop() {
  local pid=$1 p keep=()
  kill -TERM "$pid" 2>/dev/null || true
  qbk_reap "$pid"
  for p in "${QBK_PIDS[@]}"; do [ "$p" = "$pid" ] || keep+=("$p"); done
  QBK_PIDS=("${keep[@]}")
}

qbk_wait() {
  local desc=$1 secs=$2 i
  shift 2
  for ((i = 0; i < secs * 10; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "TIMEOUT waiting for: $desc" >&2
  return 1
}

qbk_check() {
  local desc=$1 out rc
  shift
  QBK_CHECKS=$((QBK_CHECKS + 1))
  out=$("$@" 2>&1) && rc=0 || rc=$?
  if [ "$rc" -eq 0 ]; then
    printf 'ok   %s%s\n' "$desc" "${out:+ ($(tail -n 1 <<<"$out"))}"
  else
    QBK_FAILS=$((QBK_FAILS + 1))
    printf 'FAIL %s (exit %s)\n' "$desc" "$rc"
    sed 's/^/     | /' <<<"$out" | tail -n 20
  fi
}

qbk_finish() {
  echo "$QBK_CHECKS checks, $QBK_FAILS failed"
  [ "$QBK_FAILS" -eq 0 ]
}

# The servers side of the host e2e tests (host-e2e, wine-e2e), in namespace $1: veth qbkw0
# 198.51.100.1/24 <-> qbkw1 $2 (SRV); unprivileged ping allowed (the NAT pings from here);
# dnsmasq on 127.0.0.1:53 (qbkit.test -> SRV) as the namespace's resolver; python http.server on
# SRV:8080 serving $QBK_TMP/www (index.html, and big.bin of $3 MiB whose sha256 goes to BIG_SHA);
# host-servers.py on SRV (see its header) with echo on 127.0.0.1:9008. Returns once all listen.
qbk_wan_servers() {
  local ns=$1 srv=$2 mib=$3
  ip -n "$ns" link add qbkw0 type veth peer name qbkw1
  ip -n "$ns" addr add 198.51.100.1/24 dev qbkw0
  ip -n "$ns" addr add "$srv/24" dev qbkw1
  ip -n "$ns" link set qbkw0 up
  ip -n "$ns" link set qbkw1 up
  ip netns exec "$ns" sysctl -qw net.ipv4.ping_group_range="0 2147483647"
  qbk_ns_resolv "$ns" "nameserver 127.0.0.1"
  qbk_bg "$ns" dnsmasq.log dnsmasq --keep-in-foreground --conf-file=/dev/null --no-resolv --no-hosts \
    --listen-address=127.0.0.1 --bind-interfaces --user=root --pid-file= \
    --address=/qbkit.test/"$srv" --log-facility=-
  mkdir -p "$QBK_TMP/www"
  head -c $((mib << 20)) /dev/urandom > "$QBK_TMP/www/big.bin"
  echo "hello from wan" > "$QBK_TMP/www/index.html"
  BIG_SHA=$(sha256sum < "$QBK_TMP/www/big.bin" | cut -d' ' -f1)
  qbk_bg "$ns" http.log python3 -m http.server 8080 --bind "$srv" --directory "$QBK_TMP/www"
  qbk_bg "$ns" servers.log python3 "$QBK_LIB_DIR/host-servers.py" "$srv" "$QBK_TMP" 9008
  qbk_wait "servers" 10 test -f "$QBK_TMP/servers.ready" || return 1
  qbk_wait "HTTP server" 10 ip netns exec "$ns" curl -sf "http://$srv:8080/index.html"
}

# Several boards on one qbkit-host (issue 20; multi-board-e2e, bench/multi/run): `qbkit-host run
# --transport unix-listen://$QBK_TMP/link.sock --control $QBK_TMP/host.sock ARGS...` in namespace
# $1 (WAN), then boards 1..$2 (N), each a namespace b<i> (made on first use, kept for a later call)
# running `qbkit-gadget run --link unix://… --serial qbk-b<i> --tun qbk0`. Returns once every board
# has 10.47.0.2 and its default route on qbk0 (the logs of the host and a late board printed when
# not). Needs $BIN (the release binaries). Sets QBK_HOST_PID, QBK_BOARDS (namespaces, board i at
# index i-1) and QBK_GADGETS (pids); logs host.log, gadget<i>.log.
QBK_BOARDS=()
qbk_boards_up() {
  local wan=$1 n=$2 i bns
  shift 2
  rm -f "$QBK_TMP/link.sock" "$QBK_TMP/host.sock"
  qbk_bg "$wan" host.log env RUST_LOG=info "$BIN/qbkit-host" run \
    --transport "unix-listen://$QBK_TMP/link.sock" --control "$QBK_TMP/host.sock" "$@"
  QBK_HOST_PID=$QBK_PID
  qbk_wait "qbkit-host control socket" 10 test -S "$QBK_TMP/host.sock" || { cat "$QBK_TMP/host.log"; return 1; }
  QBK_GADGETS=()
  for i in $(seq "$n"); do
    if [ "${#QBK_BOARDS[@]}" -lt "$i" ]; then
      qbk_ns_add bns "b$i"
      QBK_BOARDS+=("$bns")
    fi
    qbk_bg "${QBK_BOARDS[i - 1]}" "gadget$i.log" env RUST_LOG=info "$BIN/qbkit-gadget" run \
      --link "unix://$QBK_TMP/link.sock" --serial "qbk-b$i" --tun qbk0 --dns off \
      --control-socket "$QBK_TMP/gadget$i.sock"
    QBK_GADGETS+=("$QBK_PID")
  done
  for i in $(seq "$n"); do
    bns=${QBK_BOARDS[i - 1]}
    qbk_wait "board $i address and default route" 20 \
      sh -c "ip -n $bns route show default | grep -q qbk0 && ip -n $bns addr show qbk0 | grep -q 10.47.0.2" \
      || { cat "$QBK_TMP/host.log" "$QBK_TMP/gadget$i.log"; return 1; }
  done
}

qbk_boards_down() {
  local pid
  for pid in "${QBK_GADGETS[@]}"; do qbk_stop "$pid"; done
  qbk_stop "$QBK_HOST_PID"
  QBK_GADGETS=()
}
