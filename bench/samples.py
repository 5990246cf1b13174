"""Summing up a benchmark's samples the same way in every bench script: every sample,
then n, median and max, so a single slow run is visible and the median is what compares."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def summary(name: str, samples: list[float]) -> float:
    """Print `name`'s samples and return their median."""
    median = statistics.median(samples)
    print(f"{name}: n={len(samples)} median {median:.2f} s max {max(samples):.2f} s "
          f"({', '.join(f'{s:.2f}' for s in samples)})")
    return median


def timed_ms(rounds: int, action: Callable[[], object]) -> list[float]:
    """`action` run `rounds` times; each run's wall time in milliseconds."""
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        action()
        samples.append((time.perf_counter() - started) * 1000)
    return samples
