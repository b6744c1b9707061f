# Throughput and memory of qbkit-host through the whole path (root; not executable on purpose, so
# tests/netns/run-all does not run it): iperf3 in `board` → qbkit-gadget → unix-socket stream link
# → qbkit-host → iperf3 server in `wan`, the same topology as host-e2e.
#
#   bash tests/netns/host-bench.sh            # MTUs 16384 65520, 5 s per run, 3 reps
#   MTUS="1500 16384" DUR=10 REPS=5 PERF=1 bash tests/netns/host-bench.sh
#
# Prints one line per run: direction, MTU, Gbit/s, CPU seconds of qbkit-host and of qbkit-gadget,
# and qbkit-host CPU seconds per GiB moved; then the medians; then RSS at 1000 idle flows.
# PERF=1 also records a perf profile of qbkit-host during one download (perf.data in the temp dir).
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
source "$HERE/lib.sh"
qbk_require_root
BIN=${QBKIT_BIN_DIR:-$HERE/../../target/release}
MTUS=${MTUS:-"16384 65520"}
DUR=${DUR:-5}
REPS=${REPS:-3}
ulimit -n 65536 2>/dev/null || true

qbk_init hostbench
qbk_ns_add BOARD board
qbk_ns_add WAN wan
T=$QBK_TMP
SRV=198.51.100.2
ip -n "$WAN" link add qbkw0 type veth peer name qbkw1
ip -n "$WAN" addr add 198.51.100.1/24 dev qbkw0
ip -n "$WAN" addr add "$SRV/24" dev qbkw1
ip -n "$WAN" link set qbkw0 up
ip -n "$WAN" link set qbkw1 up
qbk_bg "$WAN" iperf3.log iperf3 -s -B "$SRV" -p 5201
qbk_bg "$WAN" servers.log python3 "$HERE/host-servers.py" "$SRV" "$T"
qbk_wait "servers" 10 test -f "$T/servers.ready" || exit 1

cpu_s() { awk '{printf "%.3f", ($14 + $15) / 100}' "/proc/$1/stat"; }

start_pair() { # MTU
  qbk_bg "$WAN" "host-$1.log" "$BIN/qbkit-host" run --mtu "$1" --dns 127.0.0.1 \
    --transport "unix-listen://$T/link-$1.sock" --control "$T/host-$1.sock"
  HOST_PID=$QBK_PID
  qbk_wait "qbkit-host" 10 test -S "$T/host-$1.sock" || exit 1
  qbk_bg "$BOARD" "gadget-$1.log" "$BIN/qbkit-gadget" run --link "unix://$T/link-$1.sock" --tun qbk0 \
    --dns off --control-socket "$T/gadget-$1.sock"
  GADGET_PID=$QBK_PID
  qbk_wait "board link" 15 sh -c "ip -n $BOARD route show default | grep -q qbk0" || exit 1
  qbk_wait "iperf3 reachable" 10 ip netns exec "$BOARD" python3 -c "import socket; socket.create_connection(('$SRV', 5201), 2).close()" || exit 1
}

stop_pair() {
  kill -TERM "$GADGET_PID" "$HOST_PID" 2>/dev/null
  wait "$GADGET_PID" "$HOST_PID" 2>/dev/null
  qbk_wait "tun gone" 10 sh -c "! ip -n $BOARD link show qbk0" || true
}

declare -A RES
for mtu in $MTUS; do
  start_pair "$mtu"
  for rep in $(seq "$REPS"); do
    for dir in down up; do
      flag=""; [ "$dir" = down ] && flag="-R"
      h0=$(cpu_s "$HOST_PID"); g0=$(cpu_s "$GADGET_PID")
      if [ "${PERF:-0}" = 1 ] && [ "$rep" = 1 ] && [ "$dir" = down ]; then
        perf record -F 999 -g -o "$T/perf-$mtu.data" -p "$HOST_PID" -- sleep "$DUR" >/dev/null 2>&1 &
        PERF_PID=$!
      fi
      json=$(ip netns exec "$BOARD" iperf3 -c "$SRV" -t "$DUR" $flag -J)
      [ -n "${PERF_PID:-}" ] && { wait "$PERF_PID"; PERF_PID=; }
      h1=$(cpu_s "$HOST_PID"); g1=$(cpu_s "$GADGET_PID")
      line=$(python3 -c '
import json, sys
j = json.loads(sys.argv[1]); e = j["end"]["sum_received"]
bps = e["bits_per_second"]; gib = e["bytes"] / 2**30
hc, gc = float(sys.argv[3]) - float(sys.argv[2]), float(sys.argv[5]) - float(sys.argv[4])
retr = j["end"]["sum_sent"].get("retransmits", 0)
print(f"{bps/1e9:.2f} {hc:.2f} {gc:.2f} {hc/gib:.2f} {retr}")
' "$json" "$h0" "$h1" "$g0" "$g1")
      read -r gbps hc gc perg retr <<<"$line"
      echo "RUN dir=$dir mtu=$mtu rep=$rep gbit_s=$gbps host_cpu_s=$hc gadget_cpu_s=$gc host_cpu_s_per_gib=$perg retransmits=$retr"
      RES[$dir-$mtu]+="$gbps:$perg "
    done
  done
  if [ "$mtu" = "$(echo "$MTUS" | awk '{print $1}')" ]; then
    rm -f "$T/hold.ready"
    rss0=$(awk '/VmRSS/ {print $2}' "/proc/$HOST_PID/status")
    qbk_bg "$BOARD" hold.log python3 "$HERE/host-client.py" hold "$SRV" 9006 1000 "$T/hold.ready" 60
    HOLD=$QBK_PID
    qbk_wait "1000 flows" 60 test -s "$T/hold.ready" && sleep 1
    rss1=$(awk '/VmRSS/ {print $2}' "/proc/$HOST_PID/status")
    touch "$T/hold.ready.done"; wait "$HOLD" 2>/dev/null
    echo "RSS mtu=$mtu idle_kib=$rss0 with_1000_idle_flows_kib=$rss1"
  fi
  stop_pair
done
for k in "${!RES[@]}"; do
  python3 -c '
import statistics, sys
vals = [tuple(map(float, x.split(":"))) for x in sys.argv[2].split()]
g = [v[0] for v in vals]; c = [v[1] for v in vals]
print(f"MEDIAN {sys.argv[1]} gbit_s={statistics.median(g):.2f} [{min(g):.2f}..{max(g):.2f}] host_cpu_s_per_gib={statistics.median(c):.2f}")
' "$k" "${RES[$k]}"
done | sort
if [ "${PERF:-0}" = 1 ]; then
  for f in "$T"/perf-*.data; do
    echo "PERF $f (qbkit-host, one download; self time by shared object, then top symbols)"
    perf report -i "$f" --no-children --sort dso --stdio 2>/dev/null | grep -v '^#' | grep -v '^$' | head -n 12
    perf report -i "$f" --no-children --sort sym --stdio -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -n 40
  done
fi
exit 0
