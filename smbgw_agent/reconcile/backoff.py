"""Capped exponential backoff per share, reset on success.

An attempt remembers what failed (`declared`: the digest of the share's spec then): an
administrator who edits the file to fix it gets the new version tried at once, not after
the rest of a back-off that was earned by the old one.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Attempt:
    failures: int
    retry_at: float
    error: str
    declared: str = ""


class Backoff:
    def __init__(self, base: float = 2.0, cap: float = 300.0) -> None:
        self.base = base
        self.cap = cap
        self.attempts: dict[str, Attempt] = {}

    def delay(self, failures: int) -> float:
        return float(min(self.cap, self.base * (2 ** min(failures - 1, 30))))

    def failed(self, key: str, now: float, error: str, declared: str = "") -> Attempt:
        failures = self.attempts[key].failures + 1 if key in self.attempts else 1
        attempt = Attempt(failures, now + self.delay(failures), error, declared)
        self.attempts[key] = attempt
        return attempt

    def still(self, key: str, error: str) -> Attempt:
        """The same failure seen again before its retry was due (planning runs every
        pass): the message is updated, the count and the wait are not."""
        attempt = self.attempts[key]
        attempt.error = error
        return attempt

    def succeeded(self, key: str) -> None:
        self.attempts.pop(key, None)

    def waiting(self, key: str, now: float, declared: str | None = None) -> bool:
        """Is `key`'s retry not due yet? Never when `declared` (the spec's digest now)
        differs from the one that failed: the file was edited."""
        attempt = self.attempts.get(key)
        if attempt is None or (declared is not None and attempt.declared and declared != attempt.declared):
            return False
        return attempt.retry_at > now

    def next_retry(self) -> float | None:
        return min((a.retry_at for a in self.attempts.values()), default=None)

    def forget_missing(self, keys: set[str]) -> None:
        for key in set(self.attempts) - keys:
            del self.attempts[key]
