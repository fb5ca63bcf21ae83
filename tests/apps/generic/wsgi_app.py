"""A WSGI app for gunicorn (`--bind fd://3`): the user's own Python server."""
import os


def application(environ, start_response):
    body = "wsgi server={} pid={} ppid={} uid={} path={} env={}".format(
        environ.get("SERVER_SOFTWARE", "?").split("/")[0],
        os.getpid(),
        os.getppid(),
        os.getuid(),
        environ.get("PATH_INFO", ""),
        os.environ.get("FIXTURE_ENV", "<unset>"),
    ).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
