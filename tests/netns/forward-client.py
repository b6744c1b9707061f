# Clients for tests/netns/forward-e2e, run in the `wan` namespace (where qbkit-host and its
# forward listeners live) against forward-servers.py on the board. Each subcommand checks one
# behaviour, prints one summary line and exits 0 on success. Every wait has a timeout.
#
# usage: python3 forward-client.py CMD HOST PORT [ARGS]
import errno
import hashlib
import os
import socket
import sys
import time

from netclient import TIMEOUT, connect, read_all, refused, reset  # noqa: F401


PATTERN = bytes(range(256)) * 4096  # 1 MiB, as forward-servers.py sends it


def half_close(host, port, size="1048576"):
    """Send SIZE bytes, shut down writing; the board echoes all of it after our EOF."""
    data = os.urandom(int(size))
    with connect(host, port) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        back = read_all(s)
    if back != data:
        same = next((i for i, (a, b) in enumerate(zip(back, data)) if a != b), min(len(back), len(data)))
        print(f"sent {len(data)} bytes, got {len(back)} back, first difference at {same}")
        return 1
    print(f"sent {len(data)} bytes, half-closed, got all {len(back)} back and EOF")
    return 0


def whoami(host, port, want_port, want_peer):
    """The board's port that answered and the source address the board saw."""
    with connect(host, port) as s:
        line = read_all(s, 4096).decode(errors="replace").strip()
    try:
        bport, peer = line.split()
    except ValueError:
        print(f"unexpected answer {line!r}")
        return 1
    ok = bport == want_port and peer.rsplit(":", 1)[0] == want_peer
    print(f"laptop port {port} -> board port {bport}, board saw {peer}")
    return 0 if ok else 1


def board_first(host, port, result_file):
    """The board sends 1 MiB and shuts down writing first; we then send 256 KiB and EOF."""
    data = os.urandom(256 * 1024)
    with connect(host, port) as s:
        got = read_all(s)
        if got != PATTERN:
            print(f"expected 1 MiB then the board's FIN, got {len(got)} bytes")
            return 1
        s.sendall(data)  # our direction must still be open after the board's FIN
        s.shutdown(socket.SHUT_WR)
        end = time.monotonic() + 10
        while time.monotonic() < end and not os.path.exists(result_file):
            time.sleep(0.05)
    try:
        with open(result_file) as f:
            sha, n = f.read().split()
    except OSError:
        print("got 1 MiB and the board's FIN, but the board never saw our data end")
        return 1
    if sha != hashlib.sha256(data).hexdigest() or int(n) != len(data):
        print(f"board received {n} bytes with another digest")
        return 1
    print(f"board sent 1 MiB + FIN; then {len(data)} bytes reached the board intact")
    return 0


def closed(host, port, goal_ms="200", limit_ms="1000"):
    """Forward to a closed board port: the connection must end at once (reset or EOF)."""
    goal, limit = float(goal_ms), float(limit_ms)
    s = socket.socket()
    s.settimeout(5)
    t = time.monotonic()
    try:
        s.connect((host, port))
        d = s.recv(4096)
        what = "EOF" if not d else f"{len(d)} bytes of data"
    except socket.timeout:
        print(f"still open after {(time.monotonic() - t) * 1000:.0f} ms: the connection hangs")
        return 1
    except OSError as e:
        what = errno.errorcode.get(e.errno, repr(e))
    finally:
        s.close()
    ms = (time.monotonic() - t) * 1000
    note = "" if ms < goal else f" (over the {goal:.0f} ms goal)"
    print(f"{what} after {ms:.1f} ms{note}")
    return 0 if what in ("EOF", "ECONNRESET", "ECONNREFUSED") and ms < limit else 1


def udp2(host, port, want_peer):
    """Two client sockets, interleaved: each gets only its own replies; the board sees two peers."""
    socks = []
    for _ in range(2):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(1)
        s.connect((host, port))
        socks.append(s)
    ok, peers = [0, 0], [set(), set()]
    for i in range(10):
        for k, s in enumerate(socks):
            msg = f"client{k} msg{i} ".encode() + os.urandom(32).hex().encode()
            for _ in range(3):  # UDP may drop: 3 tries each
                s.send(msg)
                try:
                    reply = s.recv(65536)
                except socket.timeout:
                    continue
                payload, _, peer = reply.rpartition(b"|")
                if payload != msg:
                    print(f"client {k} got a reply that is not its own: {reply[:40]!r}")
                    return 1
                peers[k].add(peer.decode())
                ok[k] += 1
                break
    for s in socks:
        s.close()
    seen = sorted(peers[0] | peers[1])
    print(f"{ok[0]}/10 + {ok[1]}/10 datagrams echoed; board saw {', '.join(seen)}")
    good = ok == [10, 10] and len(peers[0]) == 1 and len(peers[1]) == 1 and peers[0] != peers[1]
    return 0 if good and all(p.rsplit(":", 1)[0] == want_peer for p in seen) else 1


def hold(host, port, ready_file, secs):
    """One connection open (some bytes sent, no EOF) until READY.done appears or SECS pass."""
    s = connect(host, port)
    s.sendall(b"held\n")
    with open(ready_file, "w") as f:
        f.write("1\n")
    end = time.monotonic() + float(secs)
    while time.monotonic() < end and not os.path.exists(ready_file + ".done"):
        time.sleep(0.1)
    s.close()
    print("held 1 connection")
    return 0


CMDS = {
    "halfclose": half_close, "whoami": whoami, "boardfirst": board_first, "reset": reset,
    "closed": closed, "refused": refused, "udp2": udp2, "hold": hold,
}


if __name__ == "__main__":
    cmd, host, port, *rest = sys.argv[1:]
    sys.exit(CMDS[cmd](host, int(port), *rest))
