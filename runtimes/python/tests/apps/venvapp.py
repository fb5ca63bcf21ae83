"""Imports a module that exists only in the test's virtualenv."""
import sys

import venvmod


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [("%s|%s|%s" % (venvmod.VALUE, sys.prefix, sys.executable)).encode()]
