"""An [app] fixture that can only bind TCP: it listens on $HOST:$PORT (what
polyhost passes with `listen = "port"`) and ignores any inherited socket.
Answers every GET with `port-only port=.. uid=.. pid=.. path=..`."""
import http.server
import os


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
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
print("port-only: listening on {}:{}".format(host, port), flush=True)
server.serve_forever()
