"""Token bucket for messages per connection (no I/O, time injected), and a
counter per time window in the shared cache (per client address, per phone)."""

from __future__ import annotations

from hub.clock import Clock, system_clock


class TokenBucket:
    """``rate`` tokens per second refill a bucket of ``burst`` tokens; each
    message takes one. A refused message takes nothing."""

    __slots__ = ("_clock", "_tokens", "_updated", "burst", "rate")

    def __init__(self, rate: float, burst: int, *, clock: Clock = system_clock):
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._updated = clock.monotonic()

    def take(self, cost: float = 1.0) -> bool:
        now = self._clock.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now
        if self._tokens >= cost:
            self._tokens -= cost
            return True
        return False

    def charge(self, cost: float) -> None:
        """Take ``cost`` tokens for work already done; the bucket may go below
        zero (down to minus one burst), and later messages wait until it refills."""
        self.take(0)  # refill up to now
        # The debt is capped at one burst: after a big replay the client waits
        # a few seconds, it is not locked out for minutes.
        self._tokens = max(self._tokens - cost, -float(self.burst))

    @property
    def tokens(self) -> float:
        return self._tokens


def window_count(key: str, window: int) -> int:
    """Add one to a cache counter that starts at the first count and lives
    ``window`` seconds; the new count. ``incr`` is atomic (Redis INCRBY, which
    keeps the key's expiry), so two processes counting at once both count."""
    from django.core.cache import cache

    cache.add(key, 0, window)
    try:
        return cache.incr(key)
    except ValueError:  # it expired between the two calls: a new window
        cache.add(key, 1, window)
        return 1
