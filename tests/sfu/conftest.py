import pytest
from asgiref.sync import sync_to_async
from django.db import connections


@pytest.fixture
async def async_db_closed():
    """The async ORM's thread holds its own connection: close it after the
    test, or the test database cannot be dropped at the end."""
    yield
    await sync_to_async(connections.close_all)()
