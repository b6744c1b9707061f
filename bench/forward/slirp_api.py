#!/usr/bin/env python3
"""slirp_api.py SOCKET add_hostfwd HOST_ADDR HOST_PORT GUEST_PORT -- one slirp4netns API request
(`slirp4netns --api-socket`): forward tcp HOST_ADDR:HOST_PORT (in slirp4netns's namespace) to the
guest's 10.0.2.100:GUEST_PORT. Prints the JSON reply; exit status 1 if it is an error.
       slirp_api.py SOCKET list_hostfwd
"""
import json, socket, sys


def request(path, req):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(path)
    s.sendall(json.dumps(req).encode())
    s.shutdown(socket.SHUT_WR)  # slirp4netns reads one request up to EOF, answers, closes
    out = b""
    while True:
        b = s.recv(4096)
        if not b:
            break
        out += b
    s.close()
    return json.loads(out or b"{}")


if __name__ == "__main__":
    path, cmd = sys.argv[1], sys.argv[2]
    if cmd == "add_hostfwd":
        host_addr, host_port, guest_port = sys.argv[3:6]
        req = {"execute": "add_hostfwd", "arguments": {"proto": "tcp", "host_addr": host_addr,
               "host_port": int(host_port), "guest_addr": "10.0.2.100", "guest_port": int(guest_port)}}
    elif cmd == "list_hostfwd":
        req = {"execute": "list_hostfwd"}
    else:
        sys.exit(__doc__)
    rep = request(path, req)
    print(json.dumps(rep))
    sys.exit(1 if "error" in rep else 0)
