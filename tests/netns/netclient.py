# Socket helpers shared by the netns clients (host-client.py, forward-client.py): bounded
# connects and reads, and the reset check. Imported from the clients' own directory.
import socket
import time


TIMEOUT = 20


def family(host):
    """AF_INET6 for an IPv6 literal, AF_INET otherwise."""
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def connect(host, port, timeout=TIMEOUT):
    return socket.create_connection((host, port), timeout=timeout)


def read_all(s, limit=1 << 31):
    chunks, n = [], 0
    while n < limit:
        d = s.recv(1 << 20)
        if not d:
            break
        chunks.append(d)
        n += len(d)
    return b"".join(chunks)


def reset(host, port):
    n = 0
    with connect(host, port) as s:
        try:
            while True:
                d = s.recv(65536)
                if not d:
                    print(f"expected a reset, got a clean EOF after {n} bytes")
                    return 1
                n += len(d)
        except ConnectionResetError:
            print(f"ECONNRESET after {n} bytes")
            return 0
        except socket.timeout:
            print(f"no reset within {TIMEOUT} s ({n} bytes)")
            return 1


def timed_connect(host, port):
    """Connects with a 5 s timeout: the OSError (None when it connected) and the time in ms."""
    s = socket.socket(family(host))
    s.settimeout(5)
    t = time.monotonic()
    try:
        s.connect((host, port))
        err = None
    except OSError as e:
        err = e
    return err, (time.monotonic() - t) * 1000


def refused(host, port):
    e, ms = timed_connect(host, port)
    if isinstance(e, ConnectionRefusedError):
        print(f"ECONNREFUSED after {ms:.1f} ms")
        return 0
    if e is not None:
        print(f"expected ECONNREFUSED, got {e!r} after {ms:.1f} ms")
        return 1
    print("expected ECONNREFUSED, but the connect succeeded")
    return 1
