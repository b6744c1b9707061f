#!/usr/bin/python3
"""wan-check.py - from the board's namespace, check the wan test servers through whatever link the
scenario set up (kernel NCM, or the product): DNS name -> address, UDP echo, HTTP download of the
20 MiB file with its sha256. One process for all three (process start-up is slow under TCG).

Usage: wan-check.py NAME EXPECT_IP HTTP_URL SHA256 UDP_PORT
Prints one "wan-check: ..." line per check and a summary with the download rate; exit 1 on failure.
"""
import hashlib
import socket
import sys
import time
import urllib.request


def main():
    name, want_ip, url, sha, port = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
    ok = True
    addrs = sorted({ai[4][0] for ai in socket.getaddrinfo(name, None, socket.AF_INET)})
    good = want_ip in addrs
    ok &= good
    print(f"wan-check: dns {name} -> {addrs} {'ok' if good else 'FAIL'}", flush=True)

    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(5)
    msg = b"qbkit udp echo %d" % time.time_ns()
    got = b""
    for _ in range(3):
        s.sendto(msg, (want_ip, port))
        try:
            got = s.recv(2048)
            break
        except socket.timeout:
            continue
    good = got == msg
    ok &= good
    print(f"wan-check: udp echo {'ok' if good else 'FAIL'}", flush=True)

    t0 = time.monotonic()
    h, n = hashlib.sha256(), 0
    with urllib.request.urlopen(url, timeout=60) as r:
        while True:
            b = r.read(1 << 16)
            if not b:
                break
            h.update(b)
            n += len(b)
    dt = time.monotonic() - t0
    good = h.hexdigest() == sha
    ok &= good
    print(f"wan-check: http {url} {n} bytes in {dt:.1f}s ({n * 8 / dt / 1e6:.1f} Mbit/s) sha256 {'ok' if good else 'FAIL ' + h.hexdigest()}", flush=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
