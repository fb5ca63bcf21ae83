"""A minimal HTTP app for polyhost's [app] runtime tests, with no
dependencies. argv[1] is its mode:

- "socket": serves the listening socket it inherits as fd 3 (systemd's
  socket activation), after checking LISTEN_PID/LISTEN_FDS;
- "port": binds $HOST:$PORT itself;
- "never": like "socket", but its ready path (/healthz) answers 503 forever;
- "crash": writes a line to stderr and exits 1 at start.

Every answer is a JSON object saying who served it. With "socket" it also
starts a grandchild in a session of its own (sleep), which a stop must end
with the rest of the instance.
"""
import http.server
import json
import os
import socket
import subprocess
import sys

MODE = sys.argv[1]

if MODE == "crash":
    print("boom: cannot start without DATABASE_URL", file=sys.stderr, flush=True)
    sys.exit(1)


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/healthz":
            self.answer(503 if MODE == "never" else 200, {"ready": MODE != "never"})
            return
        with open("/proc/self/cgroup") as f:
            cgroup = f.read().strip()
        self.answer(200, {
            "mode": MODE,
            "uid": os.getuid(),
            "pid": os.getpid(),
            "listen_pid_is_mine": os.environ.get("LISTEN_PID") == str(os.getpid()),
            "listen_fds": os.environ.get("LISTEN_FDS"),
            "listen_fdnames": os.environ.get("LISTEN_FDNAMES"),
            "polyhost_listen_fd": os.environ.get("POLYHOST_LISTEN_FD"),
            "port": os.environ.get("PORT"),
            "host": os.environ.get("HOST"),
            "greeting": os.environ.get("GREETING"),
            "family": self.server.socket.family.name,
            "cgroup": cgroup,
            "path": self.path,
        })

    def answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def inherited():
    assert os.environ["LISTEN_FDS"] == "1", os.environ.get("LISTEN_FDS")
    assert os.environ["LISTEN_PID"] == str(os.getpid()), os.environ.get("LISTEN_PID")
    return socket.socket(fileno=3)


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler, bind_and_activate=False)
server.socket.close()
if MODE == "port":
    server.socket = socket.socket()
    server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.socket.bind((os.environ["HOST"], int(os.environ["PORT"])))
    server.socket.listen(64)
else:
    server.socket = inherited()
    if MODE == "socket":
        subprocess.Popen(["sleep", "600"], start_new_session=True)
print(f"fd3_app {MODE} serving as pid {os.getpid()}", file=sys.stderr, flush=True)
server.serve_forever()
