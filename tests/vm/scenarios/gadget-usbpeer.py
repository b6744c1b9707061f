#!/usr/bin/python3
"""pyusb stand-in for qbkit-host in the gadget VM scenarios (tests/vm/scenarios/gadget-hs).

check:  prints the interface and reads the MS OS 1.0 descriptors: string 0xEE ("MSFT100" + vendor
        code), extended compat id (WINUSB) and extended properties (DeviceInterfaceGUID).
peer HANDSHAKE SECONDS: claims the interface, sends the Hello + LinkConfig bundle (made by
        gadget-test-peer --dump-handshake) every second as keepalive, answers ICMP echo requests to
        10.47.0.1 and prints "HELLO" once the board's Hello arrives and "PING <seq>" per echo.
"""
import struct
import sys
import time

import usb.core
import usb.util

VID, PID = 0x1209, 0x0001


def find():
    dev = usb.core.find(idVendor=VID, idProduct=PID)
    if dev is None:
        sys.exit("device 1209:0001 not found")
    return dev


def check():
    dev = find()
    intf = dev.get_active_configuration()[(0, 0)]
    print(f"INTERFACE class={intf.bInterfaceClass:#04x} sub={intf.bInterfaceSubClass:#04x} "
          f"proto={intf.bInterfaceProtocol:#04x} eps={[hex(e.bEndpointAddress) for e in intf]} "
          f"mps={[e.wMaxPacketSize for e in intf]}")
    print(f"BCDUSB {dev.bcdUSB:#06x} BCDDEVICE {dev.bcdDevice:#06x} SERIAL {dev.serial_number}")
    raw = dev.ctrl_transfer(0x80, 6, 0x03EE, 0, 18)  # GET_DESCRIPTOR string 0xEE
    sig = bytes(raw[2:16]).decode("utf-16-le")
    vendor = raw[16]
    print(f"MSOS_STRING {sig} vendor_code={vendor:#04x}")
    compat = bytes(dev.ctrl_transfer(0xC0, vendor, 0, 4, 40))
    cid = compat[18:26].rstrip(b"\0").decode()
    print(f"COMPAT_ID {cid}")
    props = bytes(dev.ctrl_transfer(0xC1, vendor, 0, 5, 512))
    count = struct.unpack_from("<H", props, 8)[0]
    off = 10
    for _ in range(count):
        size, typ, nlen = struct.unpack_from("<IIH", props, off)
        name = props[off + 10:off + 10 + nlen].decode("utf-16-le").rstrip("\0")
        dlen = struct.unpack_from("<I", props, off + 10 + nlen)[0]
        data = props[off + 14 + nlen:off + 14 + nlen + dlen].decode("utf-16-le").rstrip("\0")
        print(f"EXT_PROP {name}={data} type={typ}")
        off += size


def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while s > 0xFFFF:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def echo_reply(p):
    if len(p) < 28 or p[0] >> 4 != 4 or p[9] != 1 or p[16:20] != bytes([10, 47, 0, 1]):
        return None
    ihl = (p[0] & 15) * 4
    if p[ihl] != 8:
        return None
    r = bytearray(p)
    r[12:16], r[16:20] = p[16:20], p[12:16]
    r[10:12] = b"\0\0"
    r[10:12] = struct.pack("!H", csum(bytes(r[:ihl])))
    r[ihl] = 0
    r[ihl + 2:ihl + 4] = b"\0\0"
    r[ihl + 2:ihl + 4] = struct.pack("!H", csum(bytes(r[ihl:])))
    return bytes(r), struct.unpack_from("!H", p, ihl + 6)[0]


def bundle_of(packets):
    body = b""
    for p in packets:
        rec = struct.pack("<BBH", 1, 0, len(p)) + p
        body += rec + b"\0" * (-len(rec) % 4)
    return b"QK\x01\x00" + struct.pack("<I", 8 + len(body)) + body


def records(b):
    if len(b) < 8 or b[:2] != b"QK":
        return
    total = struct.unpack_from("<I", b, 4)[0]
    off = 8
    while off + 4 <= total:
        kind, _ch, ln = struct.unpack_from("<BBH", b, off)
        yield kind, b[off + 4:off + 4 + ln]
        off += (4 + ln + 3) & ~3


def peer(handshake_file, seconds):
    hs = open(handshake_file, "rb").read()
    dev = find()
    intf = dev.get_active_configuration()[(0, 0)]
    usb.util.claim_interface(dev, 0)
    ep_out = usb.util.find_descriptor(intf, custom_match=lambda e: e.bEndpointAddress & 0x80 == 0)
    ep_in = usb.util.find_descriptor(intf, custom_match=lambda e: e.bEndpointAddress & 0x80)
    mps = ep_out.wMaxPacketSize

    def send(b):
        if len(b) % mps == 0:  # never end a transfer on wMaxPacketSize (no ZLP needed)
            b += b"\0" * 4
        ep_out.write(b, timeout=1000)

    deadline = time.time() + seconds
    next_ka = 0
    hello = False
    while time.time() < deadline:
        if time.time() >= next_ka:
            send(hs)
            next_ka = time.time() + 1
        try:
            data = bytes(ep_in.read(65536, timeout=200))
        except usb.core.USBTimeoutError:
            continue
        replies = []
        for kind, payload in records(data):
            if kind == 2 and payload[:1] == b"\x01" and not hello:
                hello = True
                print("HELLO", flush=True)
            if kind == 1:
                r = echo_reply(payload)
                if r:
                    replies.append(r[0])
                    print(f"PING {r[1]}", flush=True)
        if replies:
            send(bundle_of(replies))


if __name__ == "__main__":
    if sys.argv[1] == "check":
        check()
    else:
        peer(sys.argv[2], float(sys.argv[3]))
