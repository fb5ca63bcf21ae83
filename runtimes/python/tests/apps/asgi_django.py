"""A one-file Django project served by django.core.asgi, with the admin."""
import django
from django.conf import settings

settings.configure(
    DEBUG=False,
    SECRET_KEY="polyhost-test-only",
    ROOT_URLCONF=__name__,
    ALLOWED_HOSTS=["*"],
    USE_TZ=True,
    INSTALLED_APPS=["django.contrib.admin", "django.contrib.auth", "django.contrib.contenttypes",
                    "django.contrib.sessions", "django.contrib.messages"],
    MIDDLEWARE=["django.contrib.sessions.middleware.SessionMiddleware",
                "django.middleware.csrf.CsrfViewMiddleware",
                "django.contrib.auth.middleware.AuthenticationMiddleware",
                "django.contrib.messages.middleware.MessageMiddleware"],
    TEMPLATES=[{"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True,
                "OPTIONS": {"context_processors": ["django.contrib.auth.context_processors.auth",
                                                   "django.contrib.messages.context_processors.messages",
                                                   "django.template.context_processors.request"]}}],
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
)
django.setup()

from django.contrib import admin  # noqa: E402
from django.http import HttpResponse  # noqa: E402
from django.urls import path, reverse  # noqa: E402


async def index(request):
    return HttpResponse("django async index link=%s script=%s" % (reverse("other"), request.META.get("SCRIPT_NAME", "")))


def other(request):
    return HttpResponse("django other")


urlpatterns = [path("", index), path("other/", other, name="other"), path("admin/", admin.site.urls)]

from django.core.asgi import get_asgi_application  # noqa: E402

application = get_asgi_application()
