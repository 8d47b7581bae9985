import pytest
from asgiref.sync import sync_to_async

from signaling.rules import Kind
from tests.meet.helpers import create_meeting, join, make_user, open_socket, session_cookie


@pytest.fixture(autouse=True)
def _memory_layer(settings):
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}


@pytest.mark.django_db(transaction=True)
async def test_consultation_flow():
    clerk = await sync_to_async(make_user)("urzednik1", "clerk")
    meeting, key = await create_meeting(Kind.CONSULTATION, "Konsultacja", clerk)
    cookie = await sync_to_async(session_cookie)(clerk)
    host = await open_socket(meeting.code, cookie=cookie)
    hj = await join(host)
    assert hj["room"]["role"] == "host"
    resident = await open_socket(meeting.code, guest="Jan Kowalski")
    rj = await join(resident)
    assert rj["room"]["status"] == "queued"
    assert rj["room"]["queue"]["position"] == 1
    room = await host.until("room")
    assert room["room"]["queue"][0]["name"] == "Jan Kowalski"
    who = room["room"]["queue"][0]["pid"]
    err = await resident.request({"type": "admit", "who": who})
    assert err["type"] == "error" and err["code"] == "forbidden", err
    ok = await host.request({"type": "admit", "who": who})
    assert ok["type"] == "ok", ok
    notice = await resident.until("notice")
    assert notice["event"] == "admitted"
    rroom = await resident.until("room")
    assert rroom["room"]["status"] == "admitted"
    sdp = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"
    ok = await host.request(
        {"type": "signal", "to": who, "description": {"type": "offer", "sdp": sdp}}
    )
    assert ok["type"] == "ok", ok
    sig = await resident.until("signal")
    assert sig["from"] == hj["you"] and sig["description"]["sdp"] == sdp
    await resident.request({"type": "chat", "text": "<b>Dzień dobry</b>"})
    chat = await host.until("chat")
    assert chat["message"]["text"] == "<b>Dzień dobry</b>"
    await host.request({"type": "end"})
    ended = await resident.until("ended")
    assert ended["message"]
    await resident.closed()
    await host.disconnect()
