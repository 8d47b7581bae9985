import pytest
from asgiref.sync import sync_to_async
from django.db import connections

from media.sfu import hooks


@pytest.fixture(autouse=True, scope="session")
def _loopback_ice():
    """Every aiortc peer of the tests (and the forwarding units in this
    process) gathers ICE candidates on 127.0.0.1 only; processes the tests
    start get MEDIA_ICE_ADDRESSES=127.0.0.1."""
    hooks.use_host_addresses(["127.0.0.1"])


@pytest.fixture
async def async_db_closed():
    """The async ORM's thread holds its own connection: close it after the
    test, or the test database cannot be dropped at the end."""
    yield
    await sync_to_async(connections.close_all)()
