"""WSGI test apps wrapped in wsgiref.validate.validator.

Any PEP 3333 violation by the server (or the app) raises AssertionError or a
WSGIWarning (turned into an error below), which becomes a 500 plus a traceback
in stderr: the tests assert a 200 and a clean log.
"""
import sys
import warnings
from wsgiref.validate import validator

warnings.simplefilter("error")

HEADERS = [("Content-Type", "text/plain")]


def plain(environ, start_response):
    start_response("200 OK", HEADERS)
    return [b"hello ", b"world"]


def stream(environ, start_response):
    start_response("200 OK", HEADERS)

    def gen():
        yield b""
        for i in range(3):
            yield b"chunk%d\n" % i

    return gen()


def writer(environ, start_response):
    write = start_response("200 OK", HEADERS)
    write(b"written ")
    write(b"directly\n")
    return [b"and returned"]


def filewrap(environ, start_response):
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    f = open(__file__, "rb")
    return environ["wsgi.file_wrapper"](f, 1024)


def excinfo(environ, start_response):
    start_response("200 OK", HEADERS)
    try:
        raise ValueError("handled by the app")
    except ValueError:
        start_response("500 Internal Server Error", HEADERS, sys.exc_info())
    return [b"app error page"]


def upload(environ, start_response):
    inp = environ["wsgi.input"]
    total = lines = 0
    while True:
        line = inp.readline()
        if not line:
            break
        total += len(line)
        lines += 1
    start_response("200 OK", HEADERS)
    return [b"%d %d" % (total, lines)]


def read_sized(environ, start_response):
    inp = environ["wsgi.input"]
    parts = []
    while True:
        chunk = inp.read(7)
        if not chunk:
            break
        parts.append(chunk)
    start_response("200 OK", HEADERS)
    return [b"|".join(parts)]


ROUTES = {
    "/plain": plain,
    "/stream": stream,
    "/writer": writer,
    "/filewrap": filewrap,
    "/excinfo": excinfo,
    "/upload": upload,
    "/read_sized": read_sized,
}


def dispatch(environ, start_response):
    return ROUTES[environ["PATH_INFO"]](environ, start_response)


application = validator(dispatch)
