#!/usr/bin/env python3
"""An MTA-STS policy host for the tests: Python's own http.server over its ssl module.

Usage: sts_server.py DIR CERT KEY. Binds 127.0.0.1:0, prints the port on stdout, then serves
GET /.well-known/mta-sts.txt from files in DIR read afresh for each request:
  policy.txt    the body (absent: 404)
  status        the status code (default 200); a 3xx sends Location: https://elsewhere.test/
  content_type  the Content-Type (default text/plain)
Every request's path is appended to DIR/requests, one per line.
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

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server.socket = context.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
