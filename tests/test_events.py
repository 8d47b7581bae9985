"""hub.events: events leave only after the transaction commits."""

import pytest
from django.db import transaction

from hub.bus import get_bus
from hub.events import publish_now, publish_on_commit


@pytest.mark.django_db(transaction=True)
def test_event_waits_for_commit_and_is_dropped_on_rollback():
    bus = get_bus()
    topic = "public.events-commit"

    class Boom(Exception):
        pass

    first = bus.publish_sync(topic, "probe", None)
    with pytest.raises(Boom), transaction.atomic():
        publish_on_commit(topic, "never", {})
        raise Boom
    assert bus.publish_sync(topic, "probe", None) == first + 1  # nothing in between

    with transaction.atomic():
        publish_on_commit(topic, "after.commit", {"ok": True})
        assert bus.publish_sync(topic, "probe", None) == first + 2  # not yet
    assert publish_now(topic, "probe", None) == first + 4  # the committed event took +3
