"""polyhost demo: a WSGI application served by polyhost-python."""
import os
import sys


def application(environ, start_response):
    body = (
        "<!doctype html><title>polyhost demo: Python</title>"
        "<h1>polyhost Python demo</h1>"
        "<p>Served by a polyhost-python worker (CPython %s), pid %d, uid %d.</p>"
        "<p>SCRIPT_NAME=%r PATH_INFO=%r REMOTE_ADDR=%s</p>"
    ) % (
        sys.version.split()[0],
        os.getpid(),
        os.getuid(),
        environ.get("SCRIPT_NAME"),
        environ.get("PATH_INFO"),
        environ.get("REMOTE_ADDR"),
    )
    data = body.encode()
    start_response("200 OK", [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(data)))])
    return [data]
