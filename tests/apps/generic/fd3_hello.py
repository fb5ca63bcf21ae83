#!/usr/bin/python3
"""An [app] fixture run as the site's own program (executable, `#!`): serves
HTTP/1.1 on the socket polyhost hands it as fd 3 (`LISTEN_FDS=1`) and
answers every GET with `hello from <site> uid=..`, the site being its
first argument."""
import http.server
import os
import socket
import socketserver
import sys

SITE = sys.argv[1] if len(sys.argv) > 1 else "?"


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = "hello from {} uid={}".format(SITE, os.getuid()).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def address_string(self):
        return "unix"

    def log_message(self, fmt, *args):
        pass


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    address_family = socket.AF_UNIX
    daemon_threads = True


assert os.environ.get("LISTEN_FDS") == "1", "needs the socket polyhost hands over as fd 3"
server = Server(None, Handler, bind_and_activate=False)
server.socket = socket.socket(fileno=3)
server.serve_forever()
