"""Views whose answers say what Django made of the request that reached it."""

from __future__ import annotations

import hashlib
import json

from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

#: Raised by ``boom``; the test looks for it in the pool's log, never in a response.
BOOM = "deliberate failure in the Django view"


def hello(request: HttpRequest, name: str = "") -> HttpResponse:
    """Text: the path, the query and the name as Django decoded them, one per line."""
    lines = [
        f"path={request.path}",
        f"path_info={request.path_info}",
        f"script_name={request.META.get('SCRIPT_NAME', '')}",
        f"method={request.method}",
        f"name={name}",
        f"GET={json.dumps(sorted(request.GET.lists()), ensure_ascii=False)}",
        f"host={request.get_host()}",
        f"secure={request.is_secure()}",
        f"user_agent={request.headers.get('User-Agent', '')}",
    ]
    response = HttpResponse("\n".join(lines) + "\n", content_type="text/plain; charset=utf-8")
    response["X-Django-View"] = "hello"
    return response


@csrf_exempt
def length(request: HttpRequest) -> HttpResponse:
    """POST: the length and sha256 of the body Django read."""
    if request.method != "POST":
        return HttpResponse("POST only\n", status=405, content_type="text/plain")
    body = request.body
    text = f"{len(body)} bytes sha256={hashlib.sha256(body).hexdigest()}\n"
    return HttpResponse(text, content_type="text/plain")


def protected(request: HttpRequest) -> HttpResponse:
    """Not csrf_exempt: a POST without a CSRF token never gets here."""
    return HttpResponse("let in\n", content_type="text/plain")


def boom(request: HttpRequest) -> HttpResponse:
    raise RuntimeError(BOOM)
