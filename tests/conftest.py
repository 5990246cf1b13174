"""Project-wide test policy.

A skipped real-component test proves nothing, so when CI is set, a skipped test marked
`integration` is reported as a failure with its skip reason.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from smbgw_agent.platform.pluginhost import map_source_tree_plugins

# The built-in plugins import as `smbgw_plugins` from a bare checkout too (the Debian
# passes run with PYTHONPATH=. and nothing installed), so tests may import them directly.
map_source_tree_plugins()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") and report.skipped and item.get_closest_marker("integration"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"integration test skipped under CI (not allowed): {reason}"
