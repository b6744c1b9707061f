#!/usr/bin/python3
"""uevent-relay.py - stand-in for systemd-udevd's event broadcast inside the test VM (pitfall 18).

The guest has no udevd, and libusb (udev backend) and nusb both listen for hotplug events on the
netlink group udevd re-broadcasts to (NETLINK_KOBJECT_UEVENT group 2, "libudev" header), not on
the kernel's own group 1. Flow: receive each kernel uevent (group 1; the kernel sends untagged
device uevents to every network namespace) -> rebuild it as a libudev monitor message (header with
magic 0xfeedcafe and the murmur2 subsystem/devtype hashes libudev's BPF filter checks, then the
NUL-separated KEY=VALUE properties) -> send it to group 2 in the root network namespace and in each
namespace named on the command line (a sending socket is opened in each with setns).

Usage: uevent-relay.py READY_FILE [NETNS_NAME...]   (root; runs until killed)
"""
import ctypes
import os
import socket
import struct
import sys

NETLINK_KOBJECT_UEVENT = 15
CLONE_NEWNET = 0x40000000
MAGIC = 0xFEEDCAFE
HEADER = struct.Struct("=8sIIIIIIII")   # prefix, magic(be), header_size, props_off, props_len,
                                        # subsystem hash(be), devtype hash(be), bloom hi, bloom lo


def murmur2(data: bytes, seed: int = 0) -> int:
    """systemd's string_hash32 (MurmurHash2, little-endian word reads as on x86)."""
    m, h, n, i = 0x5BD1E995, (seed ^ len(data)) & 0xFFFFFFFF, len(data), 0
    while n >= 4:
        k = int.from_bytes(data[i:i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> 24
        k = (k * m) & 0xFFFFFFFF
        h = ((h * m) & 0xFFFFFFFF) ^ k
        i += 4
        n -= 4
    if n == 3:
        h ^= data[i + 2] << 16
    if n >= 2:
        h ^= data[i + 1] << 8
    if n >= 1:
        h ^= data[i]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h


def to_libudev(kmsg: bytes):
    parts = kmsg.split(b"\0")
    if not parts or b"@" not in parts[0]:
        return None                     # not a kernel uevent (e.g. another relay's message)
    props = [p for p in parts[1:] if b"=" in p]
    kv = dict(p.split(b"=", 1) for p in props)
    if b"SUBSYSTEM" not in kv or b"ACTION" not in kv or b"SEQNUM" not in kv:
        return None
    body = b"\0".join(props) + b"\0"
    sub = murmur2(kv[b"SUBSYSTEM"])
    devtype = murmur2(kv[b"DEVTYPE"]) if b"DEVTYPE" in kv else 0
    hdr = HEADER.pack(b"libudev\0", socket.htonl(MAGIC), HEADER.size, HEADER.size, len(body),
                      socket.htonl(sub), socket.htonl(devtype), 0, 0)
    return hdr + body


def sender_in(netns: str):
    libc = ctypes.CDLL(None, use_errno=True)
    own = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        if libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {netns}")
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_KOBJECT_UEVENT)
        s.bind((0, 0))
    finally:
        libc.setns(own, CLONE_NEWNET)
        os.close(own)
        os.close(target)
    return s


def main():
    ready, names = sys.argv[1], sys.argv[2:]
    rx = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_KOBJECT_UEVENT)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    rx.bind((0, 1))
    root = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_KOBJECT_UEVENT)
    root.bind((0, 0))
    senders = [("root", root)] + [(n, sender_in(n)) for n in names]
    # libudev only listens on group 2 when it believes udevd runs (or /dev is devtmpfs)
    os.makedirs("/run/udev", exist_ok=True)
    open("/run/udev/control", "a").close()
    with open(ready, "w") as f:
        f.write("relaying to " + " ".join(n for n, _ in senders) + "\n")
    print("uevent-relay: ready, netns:", " ".join(n for n, _ in senders), flush=True)
    while True:
        data, (pid, _groups) = rx.recvfrom(65536)
        if pid != 0:
            continue                    # only the kernel
        msg = to_libudev(data)
        if msg is None:
            continue
        for name, s in senders:
            try:
                s.sendto(msg, (0, 2))
            except OSError as e:
                print(f"uevent-relay: send to {name}: {e}", flush=True)


if __name__ == "__main__":
    main()
