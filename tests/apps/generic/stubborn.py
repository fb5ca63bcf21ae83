"""An [app] fixture that is hard to stop: it serves HTTP on the socket
handed over as fd 3, ignores SIGTERM, and forks a child that leaves its
process group and session (setsid) and ignores SIGTERM too. Stopping the
site must still leave no process of the site user (SIGKILL after the grace,
the cgroup for the escapee)."""
import http.server
import os
import signal
import socket
import sys

signal.signal(signal.SIGTERM, signal.SIG_IGN)
if os.fork() == 0:
    os.setsid()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        signal.pause()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = "stubborn pid={} pgid={}".format(os.getpid(), os.getpgid(0)).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_OPTIONS = do_GET

    def log_message(self, fmt, *args):
        pass


class FdServer(http.server.ThreadingHTTPServer):
    def server_bind(self):
        pass

    def server_activate(self):
        pass


server = FdServer(("", 0), Handler, bind_and_activate=False)
server.socket = socket.socket(fileno=3)
print("stubborn: serving on fd 3, ignoring SIGTERM", file=sys.stderr, flush=True)
server.serve_forever()
