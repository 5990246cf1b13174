"""Capped exponential backoff per share, reset on success."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Attempt:
    failures: int
    retry_at: float
    error: str


class Backoff:
    def __init__(self, base: float = 2.0, cap: float = 300.0) -> None:
        self.base = base
        self.cap = cap
        self.attempts: dict[str, Attempt] = {}

    def delay(self, failures: int) -> float:
        return float(min(self.cap, self.base * (2 ** min(failures - 1, 30))))

    def failed(self, key: str, now: float, error: str) -> Attempt:
        failures = self.attempts[key].failures + 1 if key in self.attempts else 1
        attempt = Attempt(failures, now + self.delay(failures), error)
        self.attempts[key] = attempt
        return attempt

    def succeeded(self, key: str) -> None:
        self.attempts.pop(key, None)

    def waiting(self, key: str, now: float) -> bool:
        attempt = self.attempts.get(key)
        return attempt is not None and attempt.retry_at > now

    def next_retry(self) -> float | None:
        return min((a.retry_at for a in self.attempts.values()), default=None)

    def forget_missing(self, keys: set[str]) -> None:
        for key in set(self.attempts) - keys:
            del self.attempts[key]
