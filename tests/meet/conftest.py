"""Fixtures shared by the ``/ws/meet/<code>/`` tests."""

from __future__ import annotations

import contextlib

import pytest


@pytest.fixture
async def connect():
    """open_socket() whose sockets are all closed at the end of the test."""
    # Imported here: hub.asgi only for the tests that ask for a socket.
    from tests.meet.helpers import open_socket

    opened = []

    async def open_(code, **kwargs):
        socket = await open_socket(code, **kwargs)
        opened.append(socket)
        return socket

    yield open_
    for socket in opened:
        with contextlib.suppress(Exception):
            await socket.disconnect()
