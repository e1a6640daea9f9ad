#!/usr/bin/env python3
"""An MTA-STS policy host for the tests: Python's own http.server over its ssl module.

Usage: sts_server.py DIR CERT KEY. Binds 127.0.0.1:0, prints the port on stdout, then serves
GET /.well-known/mta-sts.txt from files in DIR read afresh for each request:
  policy.txt    the body (absent: 404)
  status        the status code (default 200); a 3xx sends Location: https://elsewhere.test/
  content_type  the Content-Type (default text/plain)
Every GET's path is appended to DIR/requests, one per line. A POST (a TLS report) is answered
with the status in DIR/post_status (default 200) and its body kept as DIR/posted-N (N from 0)
with its Content-Type as DIR/posted-N.type.
"""
import http.server
import os
import ssl
import sys

root, cert, key = sys.argv[1], sys.argv[2], sys.argv[3]


def read(name, default=None):
    try:
        with open(os.path.join(root, name), "rb") as f:
            return f.read()
    except FileNotFoundError:
        return default


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        with open(os.path.join(root, "requests"), "a") as log:
            log.write(self.path + "\n")
        body = read("policy.txt") if self.path == "/.well-known/mta-sts.txt" else None
        status = int(read("status", b"200").decode().strip())
        if body is None:
            status, body = 404, b"not here\n"
        self.send_response(status)
        if 300 <= status < 400:
            self.send_header("Location", "https://elsewhere.test/.well-known/mta-sts.txt")
        self.send_header("Content-Type", read("content_type", b"text/plain").decode().strip())
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        status = int(read("post_status", b"200").decode().strip())
        n = len([f for f in os.listdir(root) if f.startswith("posted-") and not f.endswith(".type")])
        with open(os.path.join(root, f"posted-{n}"), "wb") as f:
            f.write(body)
        with open(os.path.join(root, f"posted-{n}.type"), "w") as f:
            f.write(self.headers.get("Content-Type", "") + " " + str(status) + " " + self.path)
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server.socket = context.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
