"""WSGI handler that sleeps (default 50 ms; `?s=20` for a 20 s long poll)."""

import time
from urllib.parse import parse_qs


def application(environ, start_response):
    qs = parse_qs(environ.get("QUERY_STRING", ""))
    seconds = float(qs.get("s", ["0.05"])[0])
    time.sleep(seconds)
    body = b"slept"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
