#!/usr/bin/env python3
"""client.py -- benchmark clients run inside a `board` namespace (stdlib only).

Every subcommand prints one JSON object on stdout; errors are reported in it, never hang:
every loop is bounded by its count and by MAXSEC (env, default 60 s), every socket has a timeout.
HOST is an IPv4 or IPv6 literal.

  seqconn HOST PORT N        N sequential HTTP-like connections: connect, send a request, read the
                             whole 71-byte response (Content-Length, like wrk), close; times from
                             the start of connect() to its return ("connect"), to the response's
                             first byte ("first_byte") and to the end ("transaction")
  tcppp   HOST PORT N SIZE   N request/response round trips of SIZE bytes over one TCP connection
                             (TCP_NODELAY); p50/p99 in microseconds
  hold    HOST PORT N SECS   open N concurrent connections to an echo server, check each with a
                             1-byte echo, print "HOLDING k" on stderr, hold them SECS seconds (or until
                             the file named by HOLD_UNTIL_GONE disappears), check again, close
Adapted from shared/baselines/nbclient.py (same request, same percentile method).
"""
import json, os, socket, statistics, sys, time

MAXSEC = float(os.environ.get("MAXSEC", "60"))
REQ = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


def family(host):
    """AF_INET6 for an IPv6 literal (bench/nat/run's IPv6 phase), else AF_INET."""
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def pct(v, p):
    v = sorted(v)
    if not v:
        return None
    k = (len(v) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def stats_us(ns):
    us = [x / 1000.0 for x in ns]
    if not us:
        return {}
    return {"n": len(us), "mean_us": round(statistics.fmean(us), 1), "p50_us": round(pct(us, 50), 1),
            "p99_us": round(pct(us, 99), 1), "max_us": round(max(us), 1)}


def seqconn(host, port, n):
    port, n = int(port), int(n)
    ok, errs, tot, conn, first = 0, 0, [], [], []
    t_start = time.perf_counter()
    for _ in range(n):
        if time.perf_counter() - t_start > MAXSEC:
            break
        t0 = time.perf_counter_ns()
        s = socket.socket(family(host), socket.SOCK_STREAM)
        try:
            s.settimeout(5)
            s.connect((host, port))
            t1 = time.perf_counter_ns()
            s.sendall(REQ)
            got, t2 = b"", None
            while not got.endswith(b"\r\n\r\nok"):
                b = s.recv(4096)
                if not b:
                    break
                t2 = t2 or time.perf_counter_ns()
                got += b
            if not got.startswith(b"HTTP/1.1 200"):
                errs += 1
                continue
        except OSError:
            errs += 1
            continue
        finally:
            s.close()
        ok += 1
        conn.append(t1 - t0)
        first.append(t2 - t0)
        tot.append(time.perf_counter_ns() - t0)
    wall = time.perf_counter() - t_start
    return {"test": "seqconn", "ok": ok, "errors": errs, "wall_s": round(wall, 3),
            "conn_per_s": round(ok / wall, 1) if wall > 0 else None,
            "connect": stats_us(conn), "first_byte": stats_us(first), "transaction": stats_us(tot)}


def tcppp(host, port, n, size):
    port, n, size = int(port), int(n), int(size)
    s = socket.socket(family(host), socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.settimeout(5)
    s.connect((host, port))
    msg = b"x" * size

    def rt():
        s.sendall(msg)
        got = 0
        while got < size:
            b = s.recv(size - got)
            if not b:
                raise OSError("eof")
            got += len(b)

    for _ in range(200):  # warm-up
        rt()
    lat = []
    t_start = time.perf_counter()
    for _ in range(n):
        if time.perf_counter() - t_start > MAXSEC:
            break
        t0 = time.perf_counter_ns()
        rt()
        lat.append(time.perf_counter_ns() - t0)
    s.close()
    wall = time.perf_counter() - t_start
    return {"test": "tcppp", "size": size, "rt_per_s": round(len(lat) / wall, 1), **stats_us(lat)}


def hold(host, port, n, secs):
    port, n, secs = int(port), int(n), float(secs)
    socks, fails = [], 0
    t0 = time.perf_counter()
    for _ in range(n):
        if time.perf_counter() - t0 > MAXSEC:
            break
        s = socket.socket(family(host), socket.SOCK_STREAM)
        try:
            s.settimeout(3)
            s.connect((host, port))
            s.sendall(b"x")
            if s.recv(1) != b"x":
                raise OSError("no echo")
            socks.append(s)
        except OSError:
            fails += 1
            s.close()
    t_open = time.perf_counter() - t0
    sys.stderr.write("HOLDING %d\n" % len(socks))
    sys.stderr.flush()
    until = os.environ.get("HOLD_UNTIL_GONE")
    t1 = time.perf_counter()
    while time.perf_counter() - t1 < secs:
        if until and not os.path.exists(until):
            break
        time.sleep(0.05)
    alive = 0
    for s in socks:  # still working after the hold?
        try:
            s.sendall(b"y")
            alive += s.recv(1) == b"y"
        except OSError:
            pass
        s.close()
    return {"test": "hold", "requested": n, "opened": len(socks), "failed": fails,
            "open_s": round(t_open, 2), "alive_after_hold": alive}


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    try:
        out = {"seqconn": seqconn, "tcppp": tcppp, "hold": hold}[cmd](*args)
    except Exception as e:  # report, never hang
        out = {"test": cmd, "error": repr(e)}
    print(json.dumps(out))
