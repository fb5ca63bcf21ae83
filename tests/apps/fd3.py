"""Runs a command the way polyhost's [app] runtime does with `listen = "socket"`:
binds and listens on a Unix socket, hands it over as fd 3 with LISTEN_FDS=1,
LISTEN_PID=<the command's pid>, LISTEN_FDNAMES=http, POLYHOST_LISTEN_FD=3.
Used to check the fixtures of tests/apps standalone:
    python3 tests/apps/fd3.py /tmp/app.sock -- node tests/apps/node/express-app.js
"""
import os
import signal
import socket
import sys


def main():
    path, sep, cmd = sys.argv[1], sys.argv[2], sys.argv[3:]
    assert sep == "--" and cmd, __doc__
    if os.path.exists(path):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    os.chmod(path, 0o666)
    sock.listen(128)
    pid = os.fork()
    if pid == 0:
        if sock.fileno() != 3:
            os.dup2(sock.fileno(), 3)
        os.set_inheritable(3, True)
        os.environ.update(LISTEN_FDS="1", LISTEN_PID=str(os.getpid()), LISTEN_FDNAMES="http", POLYHOST_LISTEN_FD="3")
        os.execvp(cmd[0], cmd)
    sock.close()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: os.kill(pid, signum))
    _, status = os.waitpid(pid, 0)
    sys.exit(os.waitstatus_to_exitcode(status))


if __name__ == "__main__":
    main()
