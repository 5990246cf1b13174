"""A wall clock the test moves, for an agent process under test (never shipped).

Put this directory first on the agent's PYTHONPATH and name a file in
SMBGW_TEST_CLOCK_FILE: `time.time()` in that process is then the real time plus the
number of seconds in the file, read at every call, so a test can step the agent's wall
clock to chosen dates (and back) while its monotonic clock and every command it runs
keep real time. libfaketime cannot do this for Python 3.11: its 0.9.10 turns the
`clock_nanosleep` behind `time.sleep` into EINVAL once the clock is offset.
"""

from __future__ import annotations

import os
import time

_FILE = os.environ.get("SMBGW_TEST_CLOCK_FILE")

if _FILE:
    _real = time.time

    def _offset() -> float:
        try:
            with open(_FILE, encoding="ascii") as handle:
                return float(handle.read().strip() or 0)
        except (OSError, ValueError):
            return 0.0

    def _moved() -> float:
        return _real() + _offset()

    time.time = _moved
