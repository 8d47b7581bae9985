"""Guest tokens, principals and the keys connection limits count under."""

import pytest

from hub.auth import (
    address_limit_key,
    issue_guest_token,
    language_of,
    principal_of,
    read_guest_token,
)


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("203.0.113.7", "ip:203.0.113.7"),
        ("2001:db8:1:2:3:4:5:6", "ip:2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff::1", "ip:2001:db8:1:2::/64"),
        ("::ffff:203.0.113.7", "ip:203.0.113.7"),
        ("unknown", "ip:unknown"),
    ],
)
def test_ipv6_clients_are_counted_per_64(address, key):
    assert address_limit_key(address) == key


def test_guest_tokens_round_trip_and_resist_tampering():
    token = issue_guest_token("  Anna Nowak ", "meet:AB12CD")
    guest = read_guest_token(token)
    assert guest is not None
    assert (guest.name, guest.resource) == ("Anna Nowak", "meet:AB12CD")
    assert read_guest_token(token[:-2] + "zz") is None
    assert read_guest_token(token, max_age=-1) is None
    with pytest.raises(ValueError, match="display name"):
        issue_guest_token("   ", "meet:AB12CD")


def test_principals():
    class User:
        is_authenticated = True
        pk = 7

    guest = read_guest_token(issue_guest_token("Jan", "meet:X", guest_id="g1"))
    assert principal_of({"user": User()}) == "user:7"
    assert principal_of({"guest": guest}) == "guest:g1"
    assert principal_of({}) == "anonymous"


@pytest.mark.parametrize(
    ("headers", "language"),
    [
        ([], "pl"),
        ([(b"accept-language", b"en")], "pl"),
        ([(b"cookie", b"django_language=en; other=1")], "en"),
        ([(b"cookie", b"django_language=fr")], "pl"),
        ([(b"cookie", b'broken="')], "pl"),
    ],
)
def test_language_of_a_socket(headers, language):
    assert language_of(headers) == language
