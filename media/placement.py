"""Where a room's media runs: the rules for placing rooms on media workers
(pure; used by media.registry and media.worker).

Each ``python -m media.worker`` process announces itself and its load
every few seconds (in Redis); a room is served by one worker at a time. The
rules here decide, from those announcements alone:

- a worker counts while its last announcement is at most ``ttl`` seconds old
  and it is not draining (being stopped: it takes no new rooms);
- its load is the fuller of its two limits, peers and bitrate;
- a new room goes to the least-loaded worker with room for it (ties: the
  lowest id, so every web process decides the same);
- a room stays where it is while its worker counts, however loaded others
  are (moving a room interrupts everyone in it);
- the rooms of a worker that stopped counting are orphans: their
  participants are told to reconnect and the rooms are placed again;
- a worker that finds one of its rooms assigned elsewhere (it was taken for
  dead) ends that room's sessions (fencing).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Worker:
    """One media worker as it last announced itself."""

    id: str
    seen_at: float  # unix time of its last announcement
    peers: int = 0
    max_peers: int = 200
    bitrate_kbps: int = 0
    max_bitrate_kbps: int = 200_000
    draining: bool = False

    @property
    def load(self) -> float:
        """How full it is: the fuller of its peer and bitrate limits (0–1+)."""
        return max(
            self.peers / self.max_peers if self.max_peers else 1.0,
            self.bitrate_kbps / self.max_bitrate_kbps if self.max_bitrate_kbps else 1.0,
        )

    def fits(self, peers: int, bitrate_kbps: int) -> bool:
        return (
            self.peers + peers <= self.max_peers
            and self.bitrate_kbps + bitrate_kbps <= self.max_bitrate_kbps
        )


class NoCapacity(Exception):
    """No counting worker has room: the caller says so to the participant."""


def counts(worker: Worker, *, now: float, ttl: float) -> bool:
    """Whether a worker may serve rooms: announced recently, not draining."""
    return not worker.draining and now - worker.seen_at <= ttl


def choose(
    workers: Iterable[Worker],
    *,
    now: float,
    ttl: float,
    peers: int = 1,
    bitrate_kbps: int = 0,
) -> Worker:
    """The least-loaded counting worker with room for ``peers`` more peers
    and ``bitrate_kbps`` more bitrate; ties go to the lowest id."""
    fitting = [w for w in workers if counts(w, now=now, ttl=ttl) and w.fits(peers, bitrate_kbps)]
    if not fitting:
        raise NoCapacity(f"no media worker has room for {peers} peer(s)")
    return min(fitting, key=lambda w: (w.load, w.id))


def place(
    room: str,
    assignments: Mapping[str, str],
    workers: Iterable[Worker],
    *,
    now: float,
    ttl: float,
    peers: int = 1,
    bitrate_kbps: int = 0,
) -> tuple[str, bool]:
    """The worker for ``room``: ``(worker id, moved)``. A room stays on its
    worker while that worker counts (even over its limits: the worker refuses
    peers beyond them itself); otherwise it goes to :func:`choose`'s pick and
    ``moved`` is True when it had a worker before."""
    workers = list(workers)
    current = assignments.get(room)
    if current is not None:
        for worker in workers:
            if worker.id == current and counts(worker, now=now, ttl=ttl):
                return current, False
    chosen = choose(workers, now=now, ttl=ttl, peers=peers, bitrate_kbps=bitrate_kbps)
    return chosen.id, current is not None


def orphans(
    assignments: Mapping[str, str], workers: Iterable[Worker], *, now: float, ttl: float
) -> list[str]:
    """Rooms whose worker no longer counts (stopped announcing, or draining),
    sorted: their participants reconnect and the rooms are placed again."""
    counting = {w.id for w in workers if counts(w, now=now, ttl=ttl)}
    return sorted(room for room, worker in assignments.items() if worker not in counting)


def serving(
    room: str, assignments: Mapping[str, str], workers: Iterable[Worker], *, now: float, ttl: float
) -> str | None:
    """The worker that serves ``room`` now: its assigned worker while that
    worker counts, else None (nobody: a viewer finds nothing to watch)."""
    current = assignments.get(room)
    if current is None:
        return None
    for worker in workers:
        if worker.id == current and counts(worker, now=now, ttl=ttl):
            return current
    return None


def fenced(worker_id: str, rooms: Iterable[str], assignments: Mapping[str, str]) -> list[str]:
    """Rooms a worker still serves although they are no longer assigned to
    it (it was taken for dead, and they were placed again), sorted: it ends
    their sessions, whose participants were already told to reconnect."""
    return sorted(room for room in set(rooms) if assignments.get(room) != worker_id)
