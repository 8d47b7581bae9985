"""Who is speaking, from the RFC 6464 audio levels publishers already send.

No audio is decoded: every Opus packet from a browser carries the client's own
measurement (``-dBov``, 0 loudest, 127 silence). Levels are averaged over a
window; the loudest participant above a floor becomes the speaker, and takes
over from the current one only when clearly louder for two windows running,
so the spotlight does not flicker between people talking over each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SILENCE = 127


@dataclass
class ActiveSpeaker:
    window: float = 0.3  # seconds per decision
    floor: int = 60  # a window averaging quieter than -60 dBov is not speech
    margin: int = 6  # dB louder than the current speaker to take over
    confirm: int = 2  # windows in a row the challenger must win
    speaker: str | None = None
    _sums: dict[str, list[int]] = field(default_factory=dict)
    _window_start: float | None = None
    _challenger: str | None = None
    _wins: int = 0

    def add(self, source: str, level: int, now: float) -> str | None:
        """Record one packet's level; return the new speaker when it changed."""
        if self._window_start is None:
            self._window_start = now
        level = min(max(int(level), 0), SILENCE)
        entry = self._sums.setdefault(source, [0, 0])
        entry[0] += level
        entry[1] += 1
        if now - self._window_start >= self.window:
            return self._decide(now)
        return None

    def forget(self, source: str) -> None:
        """A publisher left: it is no longer the speaker or a challenger."""
        self._sums.pop(source, None)
        if self._challenger == source:
            self._challenger, self._wins = None, 0
        if self.speaker == source:
            self.speaker = None

    def _decide(self, now: float) -> str | None:
        means = {s: total / count for s, (total, count) in self._sums.items() if count}
        self._sums.clear()
        self._window_start = now
        if not means:
            return None
        loudest = min(means, key=lambda s: (means[s], s))
        if means[loudest] > self.floor:
            self._challenger, self._wins = None, 0
            return None
        if loudest == self.speaker:
            self._challenger, self._wins = None, 0
            return None
        current = means.get(self.speaker, SILENCE) if self.speaker else SILENCE
        if self.speaker is not None and current - means[loudest] < self.margin:
            self._challenger, self._wins = None, 0
            return None
        if self._challenger == loudest:
            self._wins += 1
        else:
            self._challenger, self._wins = loudest, 1
        if self.speaker is None or self._wins >= self.confirm:
            self.speaker = loudest
            self._challenger, self._wins = None, 0
            return loudest
        return None
