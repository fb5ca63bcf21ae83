"""A one-file Django project that says which Python and Django serve it:
"python=3.13.0 django=6.0.1 pid=1234". Its virtualenv pins a Django that
needs that interpreter (tests/python_versions.rs)."""
import os
import sys

import django
from django.conf import settings

settings.configure(
    DEBUG=False,
    SECRET_KEY="polyhost-test-only",
    ROOT_URLCONF=__name__,
    ALLOWED_HOSTS=["*"],
    MIDDLEWARE=[],
)
django.setup()

from django.http import HttpResponse  # noqa: E402
from django.urls import path  # noqa: E402


def index(request):
    return HttpResponse(
        "python=%d.%d.%d django=%s pid=%d"
        % (sys.version_info[:3] + (django.get_version(), os.getpid())),
        content_type="text/plain",
    )


urlpatterns = [path("", index)]

from django.core.wsgi import get_wsgi_application  # noqa: E402

application = get_wsgi_application()
