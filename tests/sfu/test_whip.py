"""WHIP and WHEP over HTTP (Django's async client, the embedded forwarding
unit, real aiortc peers): keys, sessions, CORS, and every refusal."""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async
from django.core.cache import cache
from django.test import AsyncClient

from hub.auth import address_limit_key
from media import service
from media.models import Stream
from tests.sfu.peers import Publisher, Subscriber, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]

SDP = "application/sdp"


@pytest.fixture(autouse=True)
async def fresh_sfu(async_db_closed, settings):
    """This process's forwarding unit, new for each test; the offer counter of
    the test client's address starts at zero (the cache is the shared Redis)."""
    await sync_to_async(cache.delete)(f"media:offers:{address_limit_key('127.0.0.1')}")
    settings.MEDIA_MODE = "embedded"  # the forwarding unit in this process
    service._local = None
    yield
    if service._local is not None:
        await service._local.close_all()
    service._local = None


@pytest.fixture
def stream():
    made = Stream(slug="sesja-rady", title="Sesja Rady Miejskiej")
    publish_key, _ = made.set_keys()
    made.save()
    return made, publish_key


@pytest.fixture
def private_stream():
    made = Stream(slug="narada", title="Narada sztabu", max_viewers=1)
    publish_key, viewer_key = made.set_keys(private=True)
    made.save()
    return made, publish_key, viewer_key


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


async def post_offer(client, url, offer, key=None, **headers):
    return await client.post(
        url, data=offer, content_type=SDP, headers={**(bearer(key) if key else {}), **headers}
    )


async def test_publish_watch_and_delete(stream):
    _, key = stream
    client = AsyncClient()
    publisher = Publisher()
    response = await post_offer(client, "/whip/sesja-rady", await publisher.offer(), key)
    assert response.status_code == 201, response.content
    assert response["Content-Type"] == SDP
    whip_location = response["Location"]
    assert whip_location.startswith("/whip/sesja-rady/")
    await publisher.answer(response.content.decode())

    viewer = Subscriber()
    response = await post_offer(client, "/whep/sesja-rady", await viewer.offer())
    assert response.status_code == 201, response.content
    whep_location = response["Location"]
    assert whep_location.startswith("/whep/sesja-rady/")
    await viewer.answer(response.content.decode())
    assert await wait_for(lambda: len(viewer.counters) >= 30, 20)
    assert viewer.in_order()
    assert viewer.audio_frames > 0

    # a viewer ends its own session with its Location; the publisher's needs the key
    assert (await client.delete(whep_location)).status_code == 200
    assert (await client.delete(whip_location)).status_code == 401
    assert (await client.delete(whip_location, headers=bearer("wrong"))).status_code == 401
    assert (await client.delete(whip_location, headers=bearer(key))).status_code == 200
    assert (await client.delete(whip_location, headers=bearer(key))).status_code == 404
    assert service.local_sfu().peers == 0
    await publisher.pc.close()
    await viewer.close()


async def test_whip_refusals_change_nothing(stream, private_stream):
    _, key = stream
    _, other_key, _ = private_stream
    client = AsyncClient()
    publisher = Publisher(audio=False)
    offer = await publisher.offer()

    async def status(url, body=offer, key=None, content_type=SDP):
        response = await client.post(
            url, data=body, content_type=content_type, headers=bearer(key) if key else {}
        )
        return response.status_code, response.json().get("code") if response.content else None

    assert await status("/whip/sesja-rady") == (401, "unauthorized")
    assert await status("/whip/sesja-rady", key="nope") == (401, "unauthorized")
    assert await status("/whip/sesja-rady", key=other_key) == (401, "unauthorized")
    assert await status("/whip/nie-ma", key=key) == (404, "no_stream")
    assert await status("/whip/sesja-rady", key=key, content_type="text/plain") == (
        415,
        "content_type",
    )
    assert await status("/whip/sesja-rady", "v=0\r\nx", key=key) == (400, "sdp_bad_line")
    assert await status("/whip/sesja-rady", "hello", key=key) == (400, "sdp_not_sdp")
    assert await status("/whip/sesja-rady", "v=0\r\n" + "a=x\r\n" * 9000, key=key) == (
        413,
        "sdp_too_large",
    )
    assert service.local_sfu().peers == 0
    # a second publisher on a stream that has one
    first = await post_offer(client, "/whip/sesja-rady", offer, key)
    assert first.status_code == 201
    second = Publisher(audio=False)
    assert await status("/whip/sesja-rady", await second.offer(), key=key) == (409, "stream_busy")
    assert service.local_sfu().peers == 1
    # someone else's session: another stream's key, or a made-up id
    session = first["Location"].rsplit("/", 1)[1]
    response = await client.delete(f"/whip/narada/{session}", headers=bearer(other_key))
    assert response.status_code == 404
    response = await client.delete("/whip/sesja-rady/made-up", headers=bearer(key))
    assert response.status_code == 404
    assert service.local_sfu().peers == 1
    response = await client.patch(first["Location"], headers=bearer(key))
    assert response.status_code == 405
    assert (await client.get("/whip/sesja-rady")).status_code == 405
    await publisher.pc.close()
    await second.pc.close()


async def test_whep_refusals(private_stream):
    _, publish_key, viewer_key = private_stream
    client = AsyncClient()
    viewer = Subscriber()
    offer = await viewer.offer()
    response = await post_offer(client, "/whep/narada", offer, viewer_key)
    assert (response.status_code, response.json()["code"]) == (404, "no_publisher")
    publisher = Publisher(audio=False)
    response = await post_offer(client, "/whip/narada", await publisher.offer(), publish_key)
    await publisher.answer(response.content.decode())
    response = await post_offer(client, "/whep/narada", offer)
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    response = await post_offer(client, "/whep/narada", offer, viewer_key)
    assert response.status_code == 201
    location = response["Location"]
    # max_viewers=1: the next viewer is told to come back later
    other = Subscriber()
    response = await post_offer(client, "/whep/narada", await other.offer(), viewer_key)
    assert (response.status_code, response.json()["code"]) == (503, "viewers")
    assert response["Retry-After"]
    # a private stream's viewer session needs the key to be ended
    assert (await client.delete(location)).status_code == 401
    assert (await client.delete(location, headers=bearer(viewer_key))).status_code == 200
    for peer in (publisher, viewer, other):
        await peer.pc.close()


async def test_a_video_only_offer_with_an_unsupported_codec_is_422(stream):
    _, key = stream
    client = AsyncClient()
    publisher = Publisher(audio=False)
    offer = (
        (await publisher.offer())
        .replace("VP8/90000", "AV1/90000")
        .replace("H264/90000", "AV1/90000")
    )
    response = await post_offer(client, "/whip/sesja-rady", offer, key)
    assert (response.status_code, response.json()["code"]) == (422, "no_common_codec")
    assert service.local_sfu().peers == 0
    await publisher.pc.close()


async def test_cors_preflight_and_exposed_location(stream):
    client = AsyncClient()
    response = await client.options(
        "/whep/sesja-rady",
        headers={"Origin": "https://player.example", "Access-Control-Request-Method": "POST"},
    )
    assert response.status_code == 204
    assert response["Access-Control-Allow-Origin"] == "*"
    assert "POST" in response["Access-Control-Allow-Methods"]
    assert "Authorization" in response["Access-Control-Allow-Headers"]
    response = await client.post(
        "/whep/sesja-rady", data="v=0", content_type=SDP, headers={"Origin": "https://x.example"}
    )
    assert "Location" in response["Access-Control-Expose-Headers"]


async def test_offers_per_address_are_limited(stream, settings):
    settings.MEDIA = {**settings.MEDIA, "OFFERS_PER_IP_PER_MINUTE": 2}
    _, key = stream
    client = AsyncClient()
    codes = [
        (await post_offer(client, "/whip/sesja-rady", "v=0\r\nx", key)).status_code
        for _ in range(3)
    ]
    assert codes == [400, 400, 429]


def test_the_stream_command_prints_keys_once_and_rotates_them(capsys):
    import json

    from django.core.management import CommandError, call_command

    call_command("media_stream", "create", "rada", "--title", "Rada Miejska")
    made = json.loads(capsys.readouterr().out)
    assert made["whip"] == "/whip/rada" and made["viewer_key"] is None
    stream = Stream.objects.get(slug="rada")
    assert stream.may_publish(made["publish_key"]) and stream.public
    assert made["publish_key"] not in stream.publish_key_digest
    with pytest.raises(CommandError, match=r"^slug: "):
        call_command("media_stream", "create", "rada", "--title", "Znowu")
    with pytest.raises(CommandError, match="slug"):
        call_command("media_stream", "create", "Zła Nazwa", "--title", "x")
    call_command("media_stream", "rotate", "rada", "--private")
    rotated = json.loads(capsys.readouterr().out)
    stream.refresh_from_db()
    assert not stream.may_publish(made["publish_key"])
    assert stream.may_publish(rotated["publish_key"])
    assert stream.may_view(rotated["viewer_key"]) and not stream.may_view(None)


async def test_a_stream_set_to_record_is_recorded_from_publish_to_delete(settings, tmp_path):
    settings.MEDIA = {**settings.MEDIA, "RECORDINGS_DIR": str(tmp_path)}
    made = Stream(slug="rada-nagrana", title="Sesja", record=True)
    key, _ = made.set_keys()
    await made.asave()
    client = AsyncClient()
    publisher = Publisher()
    response = await post_offer(client, "/whip/rada-nagrana", await publisher.offer(), key)
    assert response.status_code == 201
    await publisher.answer(response.content.decode())
    session = next(iter(service.local_sfu().sessions.values()))
    assert await wait_for(lambda: session.recorder and session.recorder.video_frames >= 30, 15)
    response = await client.delete(response["Location"], headers=bearer(key))
    assert response.status_code == 200
    [recording] = (tmp_path / "rada-nagrana").glob("*.webm")
    assert recording.stat().st_size > 10_000
    assert not list(tmp_path.rglob("*.part"))
    await publisher.pc.close()


async def test_recording_names_stay_inside_the_recordings_directory():
    from media.sfu.room import MediaError

    for name in ("../etc/x", "/abs", "a/../../b", "Rada/x", ""):
        with pytest.raises(MediaError) as refused:
            await service.publish("rada", "v=0", owner="o", record_as=name)
        assert refused.value.reason == "recording_name"


async def test_a_stream_switched_off_takes_no_one_new_but_its_publisher_may_still_leave(stream):
    made, key = stream
    client = AsyncClient()
    publisher = Publisher(audio=False)
    published = await post_offer(client, "/whip/sesja-rady", await publisher.offer(), key)
    assert published.status_code == 201
    made.active = False
    await made.asave()
    viewer = Subscriber()
    response = await post_offer(client, "/whep/sesja-rady", await viewer.offer())
    assert (response.status_code, response.json()["code"]) == (404, "no_stream")
    response = await client.delete(published["Location"], headers=bearer(key))
    assert response.status_code == 200
    assert service.local_sfu().peers == 0
    await publisher.pc.close()
    await viewer.pc.close()


def test_stream_addresses_of_meetings_are_reserved():
    from django.core.exceptions import ValidationError

    made = Stream(slug="meet-abcd-efgh-ijkl", title="x")
    made.set_keys()
    with pytest.raises(ValidationError):
        made.full_clean()
