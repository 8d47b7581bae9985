import json

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hub import envelope as e

EXAMPLES = [
    e.Ping(id="1"),
    e.Ping(),
    e.Subscribe(id="s", topics=["public.a", "meet.x:1"], since={"public.a": 3}, grant="g"),
    e.Unsubscribe(id="u", topics=["public.a"]),
    e.Resume(id="r", token="tok", since={"public.a": 0}),
    e.Welcome(session="s", resume_token="t", heartbeat=25.0, max_frame_bytes=65536),
    e.Pong(id="1", time=1.5),
    e.ServerPing(time=2.0),
    e.Subscribed(id="s", topics={"public.a": 4}, replayed=1, gap=["public.a"]),
    e.Unsubscribed(topics=["public.a"]),
    e.Resumed(session="s", resume_token="t", topics={"public.a": 1}, replayed=0, gap=[]),
    e.Error(id="x", code="forbidden", message="no"),
]


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: type(m).__name__)
def test_every_kind_round_trips(message):
    text = e.encode(message)
    assert json.loads(text)["type"] == type(message).__struct_config__.tag
    assert msgspec.json.decode(text, type=type(message)) == message


@pytest.mark.parametrize("message", [m for m in EXAMPLES if type(m) in e.HUB_INBOUND])
def test_inbound_kinds_decode_through_the_protocol(message):
    assert e.HUB_PROTOCOL.decode(e.encode(message)) == message


@pytest.mark.parametrize(
    ("frame", "code", "request_id"),
    [
        ("{", e.ErrorCode.BAD_JSON, None),
        ("[1, 2]", e.ErrorCode.BAD_MESSAGE, None),
        ('{"id": "a"}', e.ErrorCode.BAD_MESSAGE, "a"),
        ('{"type": 5, "id": "a"}', e.ErrorCode.BAD_MESSAGE, "a"),
        ('{"type": "launch", "id": "b"}', e.ErrorCode.UNKNOWN_TYPE, "b"),
        ('{"type": "subscribe", "id": "c", "topics": ["Bad Topic"]}', e.ErrorCode.BAD_MESSAGE, "c"),
        ('{"type": "subscribe", "id": "d", "topics": []}', e.ErrorCode.BAD_MESSAGE, "d"),
        ('{"type": "ping", "id": "e", "extra": 1}', e.ErrorCode.BAD_MESSAGE, "e"),
        ('{"type": "ping", "id": ""}', e.ErrorCode.BAD_MESSAGE, None),
        ('{"type": "ping", "id": "' + "x" * 65 + '"}', e.ErrorCode.BAD_MESSAGE, None),
        (
            '{"type": "resume", "id": "f", "token": "t", "since": {"public.a": -1}}',
            e.ErrorCode.BAD_MESSAGE,
            "f",
        ),
    ],
)
def test_bad_frames_get_a_code_and_keep_the_id(frame, code, request_id):
    with pytest.raises(e.EnvelopeError) as caught:
        e.HUB_PROTOCOL.decode(frame)
    assert caught.value.code == code
    assert caught.value.id == request_id
    assert "Traceback" not in caught.value.message


def test_protocols_refuse_duplicate_tags():
    with pytest.raises(ValueError, match="share a type tag"):
        e.Protocol([e.Ping, e.Ping])


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.text(),
        json_values.map(json.dumps),
        st.fixed_dictionaries(
            {"type": st.sampled_from(["ping", "subscribe", "unsubscribe", "resume", "x"])},
            optional={
                "id": json_values,
                "topics": json_values,
                "since": json_values,
                "token": json_values,
                "grant": json_values,
            },
        ).map(json.dumps),
    )
)
def test_junk_only_ever_raises_envelope_errors(frame):
    try:
        message = e.HUB_PROTOCOL.decode(frame)
    except e.EnvelopeError as error:
        assert error.code in set(e.ErrorCode)
        assert error.id is None or (isinstance(error.id, str) and len(error.id) <= 64)
    else:
        assert isinstance(message, e.HUB_INBOUND)
