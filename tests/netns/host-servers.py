# Servers for tests/netns/host-e2e, run in the `wan` namespace (not executable on purpose:
# run-all runs every executable file). One asyncio process, every behaviour on its own port:
#
#   9000 echo                      9004 send 256 KiB, then close (server-side FIN)
#   9001 half-close: read to EOF,  9005 endless source (slow reader test)
#        reply sha256 + 1 MiB      9006 hold: accept, read until EOF (idle flows)
#   9002 upload sink: sha256 of    9007 UDP echo
#        everything to STATEDIR/upload.sha256
#   9003 send 64 KiB, then RST
#
# usage: python3 host-servers.py ADDR STATEDIR [LOOPBACK_PORT]
# LOOPBACK_PORT: also serve echo on 127.0.0.1 (::1 when ADDR is IPv6), to prove the board cannot
# reach it.
import asyncio
import hashlib
import os
import socket
import struct
import sys

ADDR, STATE = sys.argv[1], sys.argv[2]
LOOP_PORT = int(sys.argv[3]) if len(sys.argv) > 3 else None
PATTERN = bytes(range(256)) * 4096  # 1 MiB


async def echo(r, w):
    try:
        while data := await r.read(65536):
            w.write(data)
            await w.drain()
    finally:
        w.close()


async def half_close(r, w):
    h = hashlib.sha256()
    while data := await r.read(65536):
        h.update(data)
    w.write(h.digest())
    w.write(PATTERN)
    await w.drain()
    w.close()


async def upload(r, w):
    h = hashlib.sha256()
    n = 0
    while data := await r.read(1 << 20):
        h.update(data)
        n += len(data)
    with open(os.path.join(STATE, "upload.sha256"), "w") as f:
        f.write(f"{h.hexdigest()} {n}\n")
    w.close()


async def reset(r, w):
    w.write(PATTERN[:65536])
    await w.drain()
    await asyncio.sleep(0.2)
    sock = w.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    w.transport.abort()


async def server_close(r, w):
    w.write(PATTERN[: 256 * 1024])
    await w.drain()
    w.close()


async def source(r, w):
    try:
        for _ in range(4096):  # at most 4 GiB, bounded
            w.write(PATTERN)
            await w.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        w.close()


async def hold(r, w):
    try:
        while await r.read(65536):
            pass
    finally:
        w.close()


class UdpEcho(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.t = transport

    def datagram_received(self, data, addr):
        self.t.sendto(data, addr)


async def main():
    handlers = {9000: echo, 9001: half_close, 9002: upload, 9003: reset,
                9004: server_close, 9005: source, 9006: hold}
    servers = [await asyncio.start_server(h, ADDR, port, backlog=1024, reuse_address=True)
               for port, h in handlers.items()]
    if LOOP_PORT:
        lo = "::1" if ":" in ADDR else "127.0.0.1"
        servers.append(await asyncio.start_server(echo, lo, LOOP_PORT, reuse_address=True))
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(UdpEcho, local_addr=(ADDR, 9007))
    with open(os.path.join(STATE, "servers.ready"), "w") as f:
        f.write("ready\n")
    await asyncio.gather(*(s.serve_forever() for s in servers))


asyncio.run(main())
