#!/usr/bin/python3
"""wan-servers.py - the "internet" test servers of the VM's wan namespace (run inside it).

Flow: write a 20 MiB file of random bytes into WWW_DIR and its sha256 into WWW_DIR/big.bin.sha256
-> serve WWW_DIR over HTTP on port 80 of each given address (threaded) -> answer UDP echo on port 7
of each address -> write READY_FILE. Runs until killed. DNS (dnsmasq) and iperf3 are separate
processes started by lib/guest.sh.

Usage: wan-servers.py READY_FILE WWW_DIR SIZE_MIB ADDR [ADDR...]
"""
import functools
import hashlib
import http.server
import os
import socket
import sys
import threading


class Quiet(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass


def http_server(addr, www):
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    cls = type("Srv", (http.server.ThreadingHTTPServer,), {"address_family": family})
    srv = cls((addr, 80), functools.partial(Quiet, directory=www))
    threading.Thread(target=srv.serve_forever, daemon=True).start()


def udp_echo(addr):
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.bind((addr, 7))

    def loop():
        while True:
            data, peer = s.recvfrom(65535)
            s.sendto(data, peer)
    threading.Thread(target=loop, daemon=True).start()


def main():
    ready, www, size_mib, addrs = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
    os.makedirs(www, exist_ok=True)
    h = hashlib.sha256()
    with open(os.path.join(www, "big.bin"), "wb") as f:
        for _ in range(size_mib):
            b = os.urandom(1 << 20)
            h.update(b)
            f.write(b)
    with open(os.path.join(www, "big.bin.sha256"), "w") as f:
        f.write(h.hexdigest() + "\n")
    with open(os.path.join(www, "index.html"), "w") as f:
        f.write("<html><body>qbkit wan test server</body></html>\n")
    for a in addrs:
        http_server(a, www)
        udp_echo(a)
    with open(ready, "w") as f:
        f.write(h.hexdigest() + "\n")
    print("wan-servers: ready on", " ".join(addrs), flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
