"""WSGI test app for polyhost's end-to-end tests."""
import os
import time
import urllib.parse


def application(environ, start_response):
    path = environ.get("PATH_INFO", "")
    qs = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
    if path == "/crash":
        os._exit(1)
    if path == "/segv":
        import ctypes
        ctypes.string_at(0)
    if path == "/slow":
        # A marker file tells the test this request reached the app.
        if "mark" in qs:
            open(qs["mark"][0], "w").close()
        time.sleep(float(qs.get("s", ["1"])[0]))
    if path == "/read":
        try:
            with open(qs["f"][0], "rb") as f:
                body = f.read()
        except OSError as e:
            body = ("denied: %s" % e.__class__.__name__).encode()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [body]
    if path == "/interim":
        # An interim status where WSGI allows only a final one.
        start_response("103 Early Hints", [("Link", "</a.css>; rel=preload")])
        return [b"early"]
    if path == "/echo":
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length)
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return [body]
    info = "pid=%d uid=%d script=%s path=%s remote=%s host=%s" % (
        os.getpid(), os.getuid(), environ.get("SCRIPT_NAME"), path,
        environ.get("REMOTE_ADDR"), environ.get("SERVER_NAME"))
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [info.encode()]


_held = []


def isolation_app(environ, start_response):
    """Probes for the supervisor tests: memory, forks, identity, reach."""
    path = environ.get("PATH_INFO", "")
    qs = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
    out = ""
    if path == "/alloc":
        # Touch every page so the memory is really used.
        _held.append(bytearray(b"x" * (int(qs["mb"][0]) << 20)))
        out = "held %d MiB" % (sum(len(b) for b in _held) >> 20)
    elif path == "/forkbomb":
        pids = []
        err = ""
        for _ in range(200):
            try:
                pid = os.fork()
            except OSError as e:
                err = e.__class__.__name__
                break
            if pid == 0:
                time.sleep(30)
                os._exit(0)
            pids.append(pid)
        out = "forked=%d error=%s" % (len(pids), err)
    elif path == "/ids":
        out = "uid=%d gid=%d groups=%s pid=%d" % (os.getuid(), os.getgid(), ",".join(map(str, os.getgroups())) or "-", os.getpid())
    elif path == "/kill":
        try:
            os.kill(int(qs["pid"][0]), 0)
            out = "signalled"
        except OSError as e:
            out = "refused: " + e.__class__.__name__
    elif path == "/tmpdir":
        import tempfile
        fd, name = tempfile.mkstemp()
        os.close(fd)
        mode = os.stat(os.path.dirname(name)).st_mode & 0o777
        os.unlink(name)
        out = "gettempdir=%s file=%s dirmode=%o" % (tempfile.gettempdir(), name, mode)
    elif path == "/connect":
        import socket
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(qs["path"][0])
            out = "connected"
        except OSError as e:
            out = "refused: " + e.__class__.__name__
        finally:
            s.close()
    else:
        out = "pid=%d" % os.getpid()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [out.encode()]
