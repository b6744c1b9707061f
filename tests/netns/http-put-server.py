# HTTP server for tests/netns/ipv6-e2e, run in the `wan` namespace (not executable on purpose:
# run-all runs every executable file). GET serves the files of DIR; PUT reads the body
# (Content-Length) and answers 201 with "SHA256 LENGTH", so the client checks what arrived.
#
# usage: python3 http-put-server.py ADDR PORT DIR     (ADDR may be IPv6)
import functools
import hashlib
import http.server
import socket
import sys

ADDR, PORT, DIR = sys.argv[1], int(sys.argv[2]), sys.argv[3]


class Handler(http.server.SimpleHTTPRequestHandler):
    def do_PUT(self):
        left = int(self.headers.get("Content-Length", "0"))
        total = left
        h = hashlib.sha256()
        while left:
            d = self.rfile.read(min(left, 1 << 20))
            if not d:
                break
            h.update(d)
            left -= len(d)
        body = f"{h.hexdigest()} {total - left}\n".encode()
        self.send_response(201)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Server(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6 if ":" in ADDR else socket.AF_INET


Server((ADDR, PORT), functools.partial(Handler, directory=DIR)).serve_forever()
