"""WSGI test app for polyhost's end-to-end tests."""
import os
import time
import urllib.parse


def application(environ, start_response):
    path = environ.get("PATH_INFO", "")
    qs = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
    if path == "/crash":
        os._exit(1)
    if path == "/slow":
        time.sleep(float(qs.get("s", ["1"])[0]))
    if path == "/read":
        try:
            with open(qs["f"][0], "rb") as f:
                body = f.read()
        except OSError as e:
            body = ("denied: %s" % e.__class__.__name__).encode()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [body]
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
