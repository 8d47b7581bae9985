"""Polish first: the language is Polish unless the visitor chose English.

Django's LocaleMiddleware would follow the browser's Accept-Language, so a
resident whose phone is set to English would get English without asking. A
municipality's site speaks Polish by default (ustawa o języku polskim); the
language switch sets a cookie, and that choice is the only other input.
"""

from __future__ import annotations

from django.conf import settings
from django.utils import translation
from django.utils.cache import patch_vary_headers


def chosen_language(cookie_value: str | None) -> str:
    """The language for a visitor: their switch choice if supported, else Polish."""
    if cookie_value in dict(settings.LANGUAGES):
        return cookie_value
    return settings.LANGUAGE_CODE


class PolishFirstLocaleMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        language = chosen_language(request.COOKIES.get(settings.LANGUAGE_COOKIE_NAME))
        translation.activate(language)
        request.LANGUAGE_CODE = translation.get_language()
        response = self.get_response(request)
        patch_vary_headers(response, ("Cookie",))
        response.headers.setdefault("Content-Language", language)
        return response
