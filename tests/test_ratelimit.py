import pytest

from hub.clock import ManualClock
from hub.ratelimit import TokenBucket


def test_burst_then_refill_at_rate():
    clock = ManualClock()
    bucket = TokenBucket(rate=2, burst=3, clock=clock)
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    clock.advance(0.5)  # one token back
    assert bucket.take() is True
    assert bucket.take() is False


def test_refill_never_exceeds_burst():
    clock = ManualClock()
    bucket = TokenBucket(rate=10, burst=2, clock=clock)
    clock.advance(100)
    assert [bucket.take() for _ in range(3)] == [True, True, False]


def test_refused_take_costs_nothing():
    clock = ManualClock()
    bucket = TokenBucket(rate=1, burst=1, clock=clock)
    assert bucket.take()
    for _ in range(10):
        assert not bucket.take()
    clock.advance(1)
    assert bucket.take()


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 1), (1, 0)])
def test_invalid_configuration(rate, burst):
    with pytest.raises(ValueError):
        TokenBucket(rate=rate, burst=burst)


def test_clock_does_not_go_back():
    with pytest.raises(ValueError):
        ManualClock().advance(-1)


def test_charge_puts_the_bucket_in_debt_but_only_one_burst_deep():
    clock = ManualClock()
    bucket = TokenBucket(rate=10, burst=5, clock=clock)
    bucket.charge(100)
    assert bucket.tokens == -5
    assert not bucket.take()
    clock.advance(0.45)  # still in debt
    assert not bucket.take()
    clock.advance(0.2)  # one token and a bit
    assert bucket.take()
