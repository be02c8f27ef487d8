"""The test site's routes; anything else is Django's own 404."""

from __future__ import annotations

from django.urls import path

from mysite import views

urlpatterns = [
    path("hello/", views.hello),
    path("hello/<str:name>/", views.hello),
    path("length/", views.length),
    path("protected/", views.protected),
    path("boom/", views.boom),
]
