# Clients for tests/netns/host-e2e, run in the `board` namespace against host-servers.py.
# Each subcommand checks one behaviour, prints one summary line and exits 0 on success.
# Every wait has a timeout; nothing loops without a bound.
#
# usage: python3 host-client.py CMD HOST PORT [ARGS]
import concurrent.futures
import errno
import hashlib
import os
import socket
import sys
import time

from netclient import TIMEOUT, connect, family, read_all, refused, reset, timed_connect  # noqa: F401


PATTERN = bytes(range(256)) * 4096  # 1 MiB, as the servers send it


def denied(host, port, accept=(errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EACCES)):
    """A connect that must fail fast (within 2 s) with one of `accept`, not time out or succeed."""
    e, ms = timed_connect(host, port)
    if e is not None:
        ok = e.errno in accept and ms < 2000
        print(f"{errno.errorcode.get(e.errno, e)} after {ms:.1f} ms")
        return 0 if ok else 1
    print(f"connect to {host}:{port} succeeded, but it must be denied")
    return 1


def prohibited(host, port):
    """Denied by the NAT's policy: ICMP administratively prohibited, EHOSTUNREACH at once (a closed
    port would say ECONNREFUSED instead)."""
    return denied(host, port, (errno.EHOSTUNREACH,))


def refused_fast(host, port):
    """A closed port: ECONNREFUSED (the NAT's RST) within the 2 s bound, not a timeout."""
    return denied(host, port, (errno.ECONNREFUSED,))


def unreachable(host, port):
    """No route on the laptop's side: ENETUNREACH at once (ICMP(v6) unreachable from the NAT)."""
    return denied(host, port, (errno.ENETUNREACH,))


def one_echo(host, port, i):
    data = os.urandom(65536)
    with connect(host, port) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        back = read_all(s)
    if back != data:
        raise RuntimeError(f"connection {i}: echo mismatch ({len(back)} bytes back)")
    return len(back)


def parallel(host, port, n):
    n = int(n)
    with concurrent.futures.ThreadPoolExecutor(max_workers=n) as ex:
        total = sum(ex.map(lambda i: one_echo(host, port, i), range(n)))
    print(f"{n} parallel connections echoed {total} bytes")
    return 0


def half_close(host, port):
    data = os.urandom(1 << 20)
    with connect(host, port) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        reply = read_all(s)
    if reply[:32] != hashlib.sha256(data).digest() or reply[32:] != PATTERN:
        print(f"bad reply after half-close: {len(reply)} bytes")
        return 1
    print(f"sent 1 MiB, half-closed, got digest + {len(reply) - 32} bytes and EOF")
    return 0


def server_close(host, port):
    with connect(host, port) as s:
        got = read_all(s)
    if got != PATTERN[: 256 * 1024]:
        print(f"expected 256 KiB then EOF, got {len(got)} bytes")
        return 1
    print("256 KiB then the server's FIN")
    return 0


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def slow_reader(host, port, pid, stall_s, max_growth_mib):
    pid, stall_s, max_growth = int(pid), float(stall_s), int(max_growth_mib) * 1024
    s = connect(host, port)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    base = rss_kib(pid)
    peak = base
    end = time.monotonic() + stall_s
    while time.monotonic() < end:  # read nothing; watch the NAT's memory
        peak = max(peak, rss_kib(pid))
        time.sleep(0.1)
    # Then read 64 MiB and check the bytes are the server's pattern, in order.
    got = 0
    buf = bytearray()
    while got < 64 << 20:
        d = s.recv(1 << 20)
        if not d:
            break
        buf += d
        while len(buf) >= len(PATTERN):
            if bytes(buf[: len(PATTERN)]) != PATTERN:
                print("data corrupted after the stall")
                return 1
            del buf[: len(PATTERN)]
            got += len(PATTERN)
        peak = max(peak, rss_kib(pid))
    s.close()
    growth = peak - base
    print(f"stalled {stall_s:.0f} s then read {got >> 20} MiB; qbkit-host RSS {base // 1024} -> peak {peak // 1024} MiB")
    return 0 if got >= 64 << 20 and growth <= max_growth else 1


def udp(host, port):
    s = socket.socket(family(host), socket.SOCK_DGRAM)
    s.settimeout(2)
    s.connect((host, port))
    ok = 0
    for i in range(20):
        msg = os.urandom(64 + i * 50)
        for _ in range(3):  # UDP may drop: 3 tries each
            s.send(msg)
            try:
                if s.recv(65536) == msg:
                    ok += 1
                    break
            except socket.timeout:
                continue
    print(f"{ok}/20 datagrams echoed")
    return 0 if ok == 20 else 1


def hold(host, port, n, ready_file, secs):
    n, secs = int(n), float(secs)
    socks = []
    for _ in range(n):
        socks.append(connect(host, port))
    with open(ready_file, "w") as f:
        f.write(f"{len(socks)}\n")
    end = time.monotonic() + secs
    while time.monotonic() < end and not os.path.exists(ready_file + ".done"):
        time.sleep(0.1)
    for s in socks:
        s.close()
    print(f"held {n} connections")
    return 0


CMDS = {
    "refused": refused, "refusedfast": refused_fast, "unreachable": unreachable, "denied": denied,
    "prohibited": prohibited, "parallel": parallel, "halfclose": half_close,
    "serverclose": server_close, "reset": reset, "slow": slow_reader, "udp": udp, "hold": hold,
}


if __name__ == "__main__":
    cmd, host, port, *rest = sys.argv[1:]
    sys.exit(CMDS[cmd](host, int(port), *rest))
