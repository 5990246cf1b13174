"""The reliability suite: fault classes tried against the real agent, real smbd and real
tools, so that every plugin gets the same treatment (see `tests/support/faults.py`)."""

from __future__ import annotations

from tests.integration.conftest import agent, restartable, sandbox  # noqa: F401 - fixtures
