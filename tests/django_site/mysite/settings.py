"""Settings of the test's Django site: production-like (DEBUG off), no database.

DEBUG is False so that Django answers as it does in production: its own 404
and 500 pages, no tracebacks in a response, ALLOWED_HOSTS enforced.
"""

from __future__ import annotations

# Only for this test site: it signs nothing that outlives a test run.
SECRET_KEY = "fcgi-tests-django-site-not-a-secret"
DEBUG = False
# What the tests' HTTP client sends as Host (nginx listens on 127.0.0.1).
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

ROOT_URLCONF = "mysite.urls"
WSGI_APPLICATION = "mysite.wsgi.application"
# No contrib apps and no database: the views use neither.
INSTALLED_APPS: list[str] = []
DATABASES: dict[str, dict[str, str]] = {}
# startproject's list without sessions, auth and messages (no database).
# SecurityMiddleware and XFrameOptionsMiddleware add their response headers;
# CommonMiddleware makes APPEND_SLASH redirects; CsrfViewMiddleware refuses
# (403) a POST to a view that is not csrf_exempt.
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
USE_TZ = True

# An app's errors go to stderr, which is the pool's log: uwsgi has no channel
# for them (uWSGI users log the same way, to its logto file). Without this,
# Django with DEBUG off would mail them to ADMINS, and there are none.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "loggers": {"django": {"handlers": ["stderr"], "level": "ERROR"}},
}
