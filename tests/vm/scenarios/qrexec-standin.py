#!/usr/bin/python3
"""qrexec stand-in for the transports scenario: the two ends of a qrexec service call, with a
unix socket where the vchan between the qubes would be.

  agent SOCK MAX SERVICE [ARG...]  the agent in the USB qube: accepts up to MAX connections on
                                   SOCK (mode 0666, so an unprivileged AppVM user can call) and
                                   runs SERVICE ARG... as root with the connection as its stdin
                                   AND stdout, like qrexec-agent in single-socket mode (the mode
                                   qubes.USB switches to with SIGUSR1 so usb-export can hand
                                   fd 0 to the kernel)
  client SOCK                      qrexec-client-vm in the AppVM: copies stdin -> SOCK and
                                   SOCK -> stdout until either side ends

Data flow: qbkit-host --transport qubes-usb:'client SOCK' -> pipes -> client -> SOCK -> agent ->
SERVICE's fd 0/1 (a stream socket the kernel's usbip-host accepts through usbip_sockfd).
Bounded: the agent exits after MAX connections; every copy ends at EOF.
"""
import os
import socket
import subprocess
import sys
import threading

BUF = 1 << 16


def log(msg):
    print(f"qrexec-standin[{os.getpid()}]: {msg}", file=sys.stderr, flush=True)


def agent(path, max_conns, service):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    os.chmod(path, 0o666)
    srv.listen(4)
    log(f"agent listening on {path}, service {' '.join(service)}")
    children = []
    for n in range(max_conns):
        conn, _ = srv.accept()
        log(f"call {n + 1}: running the service")
        children.append(subprocess.Popen(service, stdin=conn.fileno(), stdout=conn.fileno(), close_fds=True))
        conn.close()
        # Reap finished services so they do not pile up as zombies.
        children = [c for c in children if c.poll() is None]
    for c in children:
        c.wait()
    log("agent done")


def pump(src, dst, on_eof):
    while True:
        b = os.read(src, BUF)
        if not b:
            break
        view = memoryview(b)
        while view:
            view = view[os.write(dst, view):]
    on_eof()


def client(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    fd = s.fileno()
    up = threading.Thread(target=pump, args=(0, fd, lambda: s.shutdown(socket.SHUT_WR)), daemon=True)
    up.start()
    # The service's output ending ends the call, like qrexec-client-vm.
    pump(fd, 1, lambda: None)


def main():
    if len(sys.argv) >= 5 and sys.argv[1] == "agent":
        agent(sys.argv[2], int(sys.argv[3]), sys.argv[4:])
    elif len(sys.argv) == 3 and sys.argv[1] == "client":
        client(sys.argv[2])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
