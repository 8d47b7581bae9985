"""The rules for placing rooms on media workers (media/placement.py, pure)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from media.placement import (
    NoCapacity,
    Worker,
    choose,
    counts,
    fenced,
    orphans,
    place,
    serving,
)

NOW = 1_000_000.0
TTL = 10.0


def w(id_: str, *, age: float = 1.0, **fields) -> Worker:
    return Worker(id=id_, seen_at=NOW - age, **fields)


def test_a_worker_counts_while_it_announces_itself_and_is_not_draining():
    assert counts(w("a", age=10.0), now=NOW, ttl=TTL)
    assert not counts(w("a", age=10.1), now=NOW, ttl=TTL)
    assert not counts(w("a", draining=True), now=NOW, ttl=TTL)


def test_load_is_the_fuller_of_peers_and_bitrate():
    assert w("a", peers=50, max_peers=200).load == 0.25
    assert w("a", peers=50, max_peers=200, bitrate_kbps=150, max_bitrate_kbps=200).load == 0.75
    assert w("a", max_peers=0).load == 1.0  # no limit given: full


def test_a_new_room_goes_to_the_least_loaded_worker_ties_to_the_lowest_id():
    workers = [w("b", peers=10), w("c", peers=3), w("a", peers=3)]
    assert choose(workers, now=NOW, ttl=TTL).id == "a"
    assert choose([w("b", peers=10), w("c", peers=3)], now=NOW, ttl=TTL).id == "c"


def test_silent_draining_and_full_workers_take_no_new_rooms():
    workers = [
        w("silent", age=60),
        w("draining", draining=True),
        w("full", peers=200, max_peers=200),
        w("busy", peers=150, max_peers=200),
    ]
    assert choose(workers, now=NOW, ttl=TTL).id == "busy"
    assert choose(workers, now=NOW, ttl=TTL, peers=50).id == "busy"
    with pytest.raises(NoCapacity):
        choose(workers, now=NOW, ttl=TTL, peers=51)
    with pytest.raises(NoCapacity):
        choose([], now=NOW, ttl=TTL)


def test_bitrate_limits_room_too():
    workers = [w("a", bitrate_kbps=190_000), w("b", peers=100, bitrate_kbps=0)]
    assert choose(workers, now=NOW, ttl=TTL, bitrate_kbps=20_000).id == "b"


def test_a_room_stays_on_its_worker_while_that_worker_counts():
    workers = [w("a", peers=190), w("b")]
    assert place("r1", {"r1": "a"}, workers, now=NOW, ttl=TTL) == ("a", False)
    # New rooms still go to the least loaded.
    assert place("r2", {"r1": "a"}, workers, now=NOW, ttl=TTL) == ("b", False)


def test_a_room_whose_worker_died_or_drains_is_placed_again():
    workers = [w("a", age=30), w("b", draining=True), w("c")]
    assert place("r1", {"r1": "a"}, workers, now=NOW, ttl=TTL) == ("c", True)
    assert place("r2", {"r2": "b"}, workers, now=NOW, ttl=TTL) == ("c", True)
    assert place("r3", {"r3": "gone"}, workers, now=NOW, ttl=TTL) == ("c", True)


def test_orphans_are_the_rooms_of_workers_that_no_longer_count():
    workers = [w("a", age=30), w("b"), w("c", draining=True)]
    assignments = {"r3": "a", "r1": "b", "r2": "c", "r4": "unknown"}
    assert orphans(assignments, workers, now=NOW, ttl=TTL) == ["r2", "r3", "r4"]


def test_a_room_is_served_by_its_worker_only_while_that_worker_counts():
    workers = [w("a"), w("b", age=30), w("c", draining=True)]
    assignments = {"r1": "a", "r2": "b", "r3": "c", "r4": "gone"}
    assert serving("r1", assignments, workers, now=NOW, ttl=TTL) == "a"
    for room in ("r2", "r3", "r4", "unassigned"):
        assert serving(room, assignments, workers, now=NOW, ttl=TTL) is None


def test_a_worker_ends_the_rooms_that_were_placed_elsewhere_or_released():
    assignments = {"r1": "a", "r2": "b"}
    assert fenced("a", ["r1", "r2", "r3", "r1"], assignments) == ["r2", "r3"]
    assert fenced("a", [], assignments) == []
    assert fenced("b", ["r2"], assignments) == []


workers_strategy = st.lists(
    st.builds(
        Worker,
        id=st.text("abcdef", min_size=1, max_size=3),
        seen_at=st.floats(NOW - 30, NOW),
        peers=st.integers(0, 250),
        max_peers=st.integers(0, 250),
        bitrate_kbps=st.integers(0, 300_000),
        max_bitrate_kbps=st.integers(0, 300_000),
        draining=st.booleans(),
    ),
    max_size=8,
)


@given(workers_strategy, st.integers(1, 20))
def test_the_choice_counts_fits_and_no_fitting_worker_is_less_loaded(workers, peers):
    try:
        chosen = choose(workers, now=NOW, ttl=TTL, peers=peers)
    except NoCapacity:
        assert not any(counts(x, now=NOW, ttl=TTL) and x.fits(peers, 0) for x in workers)
        return
    assert counts(chosen, now=NOW, ttl=TTL) and chosen.fits(peers, 0)
    for other in workers:
        if counts(other, now=NOW, ttl=TTL) and other.fits(peers, 0):
            assert (chosen.load, chosen.id) <= (other.load, other.id)
