"""WSGI hello: 13 bytes."""

BODY = b"Hello, World!"


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "13")])
    return [BODY]
