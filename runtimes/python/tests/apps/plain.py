"""Unvalidated WSGI test app: environ dump, faults, slow paths, fast file path."""
import json
import os
import sys
import time

HEADERS = [("Content-Type", "text/plain")]
MARKER_DIR = os.environ.get("MARKER_DIR", "/tmp")


def env(environ, start_response):
    start_response("200 OK", [("Content-Type", "application/json")])
    data = {k: v for k, v in environ.items() if isinstance(v, (str, bool, int))}
    data["wsgi.version"] = list(environ["wsgi.version"])
    return [json.dumps(data).encode()]


def error(environ, start_response):
    raise RuntimeError("boom-before-start")


def bad_status(environ, start_response):
    start_response("twohundred", HEADERS)
    return [b"never"]


def interim_status(environ, start_response):
    start_response("103 Early Hints", HEADERS)
    return [b"never"]


def non_bytes(environ, start_response):
    start_response("200 OK", HEADERS)
    return ["a str, not bytes"]


def bad_header(environ, start_response):
    start_response("200 OK", [("X-Euro", "\u20ac")])
    return [b"never"]


def second_call(environ, start_response):
    start_response("200 OK", HEADERS)
    start_response("200 OK", HEADERS)
    return [b"never"]


def midstream(environ, start_response):
    start_response("200 OK", HEADERS)

    def gen():
        yield b"first chunk"
        raise RuntimeError("boom-midstream")

    return gen()


def excinfo_late(environ, start_response):
    start_response("200 OK", HEADERS)

    def gen():
        yield b"headers are out"
        try:
            raise KeyError("late-failure")
        except KeyError:
            # PEP 3333: with the headers sent, this must re-raise.
            start_response("500 Internal Server Error", HEADERS, sys.exc_info())
        yield b"never sent"

    return gen()


def keep_environ(environ, start_response):
    # Keeps the environ (and wsgi.input) alive past the response.
    KEPT.append(environ)
    start_response("200 OK", HEADERS)
    return [b"kept"]


KEPT = []


def lines(environ, start_response):
    inp = environ["wsgi.input"]
    first = inp.readline(3)
    rest_of_first = inp.readline()
    two = inp.readlines(1)
    remaining = list(inp)
    start_response("200 OK", HEADERS)
    out = [first, rest_of_first, b"%d" % len(two), b"%d" % len(remaining), inp.read(), inp.read(5)]
    return [b"|".join(out)]


def log_errors(environ, start_response):
    errors = environ["wsgi.errors"]
    errors.write("to-the-error-log\n")
    errors.writelines(["line-a\n", "line-b\n"])
    errors.flush()
    start_response("299 Quite Fine", [("Content-Length", "3")])
    return [b"abcdef"]


def short_body(environ, start_response):
    start_response("200 OK", [("Content-Length", "10")])
    return [b"abc"]


def sleep(environ, start_response):
    open(os.path.join(MARKER_DIR, "started"), "w").close()
    time.sleep(float(environ["QUERY_STRING"] or "1"))
    start_response("200 OK", HEADERS)
    return [b"slept"]


class SlowStream:
    def __init__(self):
        self.i = 0

    def __iter__(self):
        return self

    def __next__(self):
        self.i += 1
        if self.i > 2000:
            raise StopIteration
        if self.i > 1:
            time.sleep(0.01)
        return b"x" * 1024

    def close(self):
        # Written whole, then renamed: the test that sees the file sees the count.
        path = os.path.join(MARKER_DIR, "closed")
        with open(path + ".tmp", "w") as f:
            f.write(str(self.i))
        os.replace(path + ".tmp", path)


def slowstream(environ, start_response):
    start_response("200 OK", HEADERS)
    return SlowStream()


def fastfile(environ, start_response):
    path = os.path.join(MARKER_DIR, "data.bin")
    f = open(path, "rb")
    skip = int(environ["QUERY_STRING"] or "0")
    if skip:
        f.read(skip)
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return environ["wsgi.file_wrapper"](f)


def head_gen(environ, start_response):
    start_response("200 OK", HEADERS)
    yield b"body that HEAD must not send"


def echo(environ, start_response):
    body = environ["wsgi.input"].read()
    start_response("200 OK", HEADERS)
    return [body]


ROUTES = {
    "/env": env,
    "/error": error,
    "/bad_status": bad_status,
    "/interim_status": interim_status,
    "/non_bytes": non_bytes,
    "/bad_header": bad_header,
    "/second_call": second_call,
    "/midstream": midstream,
    "/sleep": sleep,
    "/slowstream": slowstream,
    "/fastfile": fastfile,
    "/head_gen": head_gen,
    "/echo": echo,
    "/excinfo_late": excinfo_late,
    "/keep_environ": keep_environ,
    "/lines": lines,
    "/log_errors": log_errors,
    "/short_body": short_body,
}


def application(environ, start_response):
    route = ROUTES.get(environ["PATH_INFO"])
    if route is None:
        start_response("404 Not Found", HEADERS)
        return [b"no route " + environ["PATH_INFO"].encode("latin-1")]
    return route(environ, start_response)
