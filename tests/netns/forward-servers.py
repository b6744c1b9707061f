# Servers for tests/netns/forward-e2e, run in the `board` namespace (not executable on purpose:
# run-all runs every executable file). One asyncio process, every behaviour on its own port, all
# on 0.0.0.0 (or BIND, e.g. :: for tests/netns/ipv6-e2e) of the board namespace, which the laptop
# reaches only through qbkit-host's forwards and `connect`:
#
#   7000 half-close echo: read to EOF, then send everything back and close
#   7001 whoami: send "LOCAL_PORT PEER_IP:PEER_PORT\n" and close (range mapping, source address)
#   7002 whoami (the same, so a range maps each port onto its own)
#   7003 board half-closes first: send 1 MiB, shut down writing, read to EOF, write
#        "SHA256 LENGTH" of what arrived to STATEDIR/board-first.sha256, close
#   7004 send 64 KiB, then RST (SO_LINGER 0)
#   5353 UDP echo: reply PAYLOAD + b"|PEER_IP:PEER_PORT" (each laptop peer needs its own flow)
#
# Writes STATEDIR/servers.ready when every socket is bound.
# usage: python3 forward-servers.py STATEDIR [BIND]
import asyncio
import hashlib
import os
import socket
import struct
import sys

STATE = sys.argv[1]
BIND = sys.argv[2] if len(sys.argv) > 2 else "0.0.0.0"
PATTERN = bytes(range(256)) * 4096  # 1 MiB


async def half_close_echo(r, w):
    try:
        data = bytearray()
        while d := await r.read(1 << 16):
            data += d
        w.write(bytes(data))
        await w.drain()
    finally:
        w.close()


async def whoami(r, w):
    try:
        local = w.get_extra_info("sockname")
        peer = w.get_extra_info("peername")
        w.write(f"{local[1]} {peer[0]}:{peer[1]}\n".encode())
        await w.drain()
    finally:
        w.close()


async def board_first(r, w):
    try:
        w.write(PATTERN)
        await w.drain()
        w.write_eof()
        h, n = hashlib.sha256(), 0
        while d := await r.read(1 << 16):
            h.update(d)
            n += len(d)
        tmp = os.path.join(STATE, "board-first.sha256.tmp")
        with open(tmp, "w") as f:
            f.write(f"{h.hexdigest()} {n}\n")
        os.rename(tmp, os.path.join(STATE, "board-first.sha256"))
    finally:
        w.close()


async def rst(r, w):
    w.write(PATTERN[: 64 * 1024])
    await w.drain()
    await asyncio.sleep(0.2)
    sock = w.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    w.transport.abort()


class UdpEcho(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.t = transport

    def datagram_received(self, data, addr):
        self.t.sendto(data + f"|{addr[0]}:{addr[1]}".encode(), addr)


async def main():
    servers = [
        await asyncio.start_server(half_close_echo, BIND, 7000, reuse_address=True),
        await asyncio.start_server(whoami, BIND, 7001, reuse_address=True),
        await asyncio.start_server(whoami, BIND, 7002, reuse_address=True),
        await asyncio.start_server(board_first, BIND, 7003, reuse_address=True),
        await asyncio.start_server(rst, BIND, 7004, reuse_address=True),
    ]
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(UdpEcho, local_addr=(BIND, 5353))
    with open(os.path.join(STATE, "servers.ready"), "w") as f:
        f.write("ready\n")
    await asyncio.gather(*(s.serve_forever() for s in servers))


if __name__ == "__main__":
    asyncio.run(main())
