"""A one-file Django project: reverse() must honour the mount (SCRIPT_NAME)."""
import django
from django.conf import settings

settings.configure(
    DEBUG=False,
    SECRET_KEY="polyhost-test-only",
    ROOT_URLCONF=__name__,
    ALLOWED_HOSTS=["*"],
    USE_TZ=True,
    MIDDLEWARE=[],
)
django.setup()

from django.http import HttpResponse  # noqa: E402
from django.urls import path, reverse  # noqa: E402


def index(request):
    return HttpResponse("django index link=%s script=%s" % (reverse("other"), request.META.get("SCRIPT_NAME", "")))


def other(request):
    return HttpResponse("django other")


urlpatterns = [path("", index), path("other/", other, name="other")]

from django.core.wsgi import get_wsgi_application  # noqa: E402

application = get_wsgi_application()
