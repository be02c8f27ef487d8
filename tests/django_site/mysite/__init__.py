"""The project package of the test's Django site (settings, URLs, views, WSGI entry)."""
