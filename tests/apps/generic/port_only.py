"""An [app] fixture that can only bind TCP: it listens on $HOST:$PORT (what
polyhost passes with `listen = "port"`) and ignores any inherited socket.
Answers every GET with `port-only port=.. uid=.. pid=.. path=..`;
`/slow` after a second; `/close-listener` closes its listening socket and
goes on serving the connections it has (the port is free for anyone to
bind, as after an app's crash, while polyhost still counts it ready)."""
import http.server
import os
import threading
import time


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path == "/close-listener":
            threading.Thread(target=close_listener).start()
        if self.path == "/slow":
            time.sleep(1)
        body = "port-only port={} uid={} pid={} path={}".format(
            os.environ["PORT"], os.getuid(), os.getpid(), self.path
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        pass


host, port = os.environ.get("HOST", "127.0.0.1"), int(os.environ["PORT"])
server = http.server.ThreadingHTTPServer((host, port), Handler)
closed = threading.Event()


def close_listener():
    closed.set()  # before serve_forever returns: the process stays
    server.shutdown()
    server.socket.close()


print("port-only: listening on {}:{}".format(host, port), flush=True)
server.serve_forever()
# Closed by a request: the connections' threads go on serving.
while closed.is_set():
    time.sleep(60)
