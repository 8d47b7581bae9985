"""WHIP (RFC 9725) and WHEP: publish a stream from an encoder, watch it in a
player, over plain HTTP and WebRTC.

``POST /whip/<stream>`` with an SDP offer and ``Authorization: Bearer <publish
key>`` starts publishing; ``POST /whep/<stream>`` (with the viewer key when the
stream is private) starts watching. Both answer ``201`` with the SDP answer
and a ``Location``; ``DELETE`` on that URL ends the session. The answer holds
all the server's candidates, so trickle ICE is not needed: ``PATCH`` answers
``405`` as RFC 9725 §4.3.1 allows. Errors are RFC 9457 problem documents
with a short ``code``. Browser players on other origins are allowed by CORS
(``MEDIA["CORS_ORIGINS"]``).
"""

from __future__ import annotations

import logging
import secrets

from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from hub.auth import address_limit_key
from hub.ratelimit import window_count
from media import service
from media.models import Stream
from media.sfu.room import MediaError

log = logging.getLogger(__name__)

SDP = "application/sdp"


def _problem(status: int, code: str, detail: str, **headers) -> JsonResponse:
    response = JsonResponse(
        {"status": status, "code": code, "detail": detail},
        status=status,
        content_type="application/problem+json",
    )
    for name, value in headers.items():
        response[name.replace("_", "-")] = value
    return response


def _cors(request: HttpRequest, response: HttpResponse, methods: str) -> HttpResponse:
    allowed = settings.MEDIA["CORS_ORIGINS"]
    origin = request.headers.get("Origin")
    if origin and ("*" in allowed or origin in allowed):
        response["Access-Control-Allow-Origin"] = "*" if "*" in allowed else origin
        if "*" not in allowed:
            response["Vary"] = "Origin"
        response["Access-Control-Expose-Headers"] = "Location, Link, ETag, Retry-After"
        if request.method == "OPTIONS":
            response["Access-Control-Allow-Methods"] = methods
            response["Access-Control-Allow-Headers"] = "Authorization, Content-Type, If-Match"
            response["Access-Control-Max-Age"] = "3600"
    response["Allow"] = methods
    return response


def _bearer(request: HttpRequest) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def _unauthorized(detail: str) -> JsonResponse:
    return _problem(401, "unauthorized", detail, WWW_Authenticate='Bearer realm="egmina-media"')


async def _stream(slug: str) -> Stream | None:
    return await Stream.objects.filter(slug=slug, active=True).afirst()


async def _over_rate(request: HttpRequest) -> bool:
    address = address_limit_key(request.META.get("REMOTE_ADDR") or "unknown")
    count = await sync_to_async(window_count)(f"media:offers:{address}", 60)
    return count > settings.MEDIA["OFFERS_PER_IP_PER_MINUTE"]


async def _offer(request: HttpRequest) -> str | JsonResponse:
    """The SDP offer in the body, or the problem with it."""
    content_type = request.content_type or ""
    if content_type.lower() != SDP:
        return _problem(415, "content_type", f"send the offer as {SDP}")
    if len(request.body) > settings.MEDIA["MAX_SDP_BYTES"]:
        return _problem(413, "sdp_too_large", "the offer is larger than this server accepts")
    try:
        return request.body.decode("utf-8")
    except UnicodeDecodeError:
        return _problem(400, "sdp_not_text", "the offer is not UTF-8 text")


def _refused(error: MediaError) -> JsonResponse:
    headers = {"Retry_After": "10"} if error.status == 503 else {}
    return _problem(error.status, error.reason, error.detail, **headers)


def _created(answer: service.Answer, location: str) -> HttpResponse:
    response = HttpResponse(answer.sdp, status=201, content_type=SDP)
    response["Location"] = location
    return response


async def _start(request: HttpRequest, slug: str, *, publish: bool) -> HttpResponse:
    stream = await _stream(slug)
    if stream is None:
        return _problem(404, "no_stream", "there is no such stream")
    key = _bearer(request)
    if publish and not stream.may_publish(key):
        return _unauthorized("publishing needs the stream's publish key as a Bearer token")
    if not publish and not stream.may_view(key):
        return _unauthorized("this stream needs its viewer key as a Bearer token")
    offer = await _offer(request)
    if isinstance(offer, HttpResponse):
        return offer
    if await _over_rate(request):
        return _problem(429, "rate", "too many offers from this address", Retry_After="60")
    try:
        if publish:
            when = f"{timezone.now():%Y-%m-%dT%H-%M-%S}-{secrets.token_hex(3)}"
            record_as = f"{slug}/{when}" if stream.record else None
            answer = await service.publish(
                slug, offer, owner=f"whip:{stream.pk}", record_as=record_as
            )
            route = "whip-session"
        else:
            answer = await service.subscribe(
                slug, offer, owner=f"whep:{stream.pk}", max_viewers=stream.max_viewers
            )
            route = "whep-session"
    except MediaError as error:
        return _refused(error)
    log.info("%s session %s on stream %s", route[:4], answer.session, slug)
    return _created(answer, reverse(route, args=[slug, answer.session]))


async def _session(request: HttpRequest, slug: str, session: str, *, publish: bool):
    if request.method == "PATCH":
        return _problem(405, "no_trickle", "the answer carries all candidates; no trickle ICE")
    # A stream switched off takes no new sessions, but those under way may still end.
    stream = await Stream.objects.filter(slug=slug).afirst()
    key = _bearer(request)
    if stream is None:
        return _problem(404, "no_session", "there is no such session")
    if publish and not stream.may_publish(key):
        return _unauthorized("ending a publication needs the stream's publish key")
    if not publish and not stream.may_view(key):
        return _unauthorized("this stream needs its viewer key as a Bearer token")
    wanted = f"{'whip' if publish else 'whep'}:{stream.pk}"
    try:
        if await service.owner_of(slug, session) != wanted:
            return _problem(404, "no_session", "there is no such session")
        await service.close(session)
    except MediaError as error:  # the worker mode's media plane is unreachable
        return _refused(error)
    return HttpResponse(status=200)


def _endpoint(methods: str, handler):
    @csrf_exempt
    async def view(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        if request.method == "OPTIONS":
            response = HttpResponse(status=204)
        elif request.method not in methods.split(", "):
            response = _problem(405, "method", f"use {methods}")
        else:
            response = await handler(request, *args, **kwargs)
        return _cors(request, response, methods)

    return view


async def _whip(request, stream):
    return await _start(request, stream, publish=True)


async def _whep(request, stream):
    return await _start(request, stream, publish=False)


async def _whip_session(request, stream, session):
    return await _session(request, stream, session, publish=True)


async def _whep_session(request, stream, session):
    return await _session(request, stream, session, publish=False)


whip = _endpoint("POST, OPTIONS", _whip)
whep = _endpoint("POST, OPTIONS", _whep)
whip_session = _endpoint("DELETE, PATCH, OPTIONS", _whip_session)
whep_session = _endpoint("DELETE, PATCH, OPTIONS", _whep_session)
