"""A plugin's own persistent key-value store, saved with the pass.

What a plugin must still know after a restart (the VMIDs it allocated, the project ids it
handed out, the addresses it owns, when it last took a snapshot, that smbd still has to
be reloaded) goes here. Values are JSON; they are written in the same transaction as
the pass's shares, so after a crash the store and what the core recorded as live agree.

A dry run (`smbgwctl plan`) gets a copy: a plugin may write while planning, and nothing
of it is ever saved.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

MAX_KEY = 200
MAX_VALUE_BYTES = 1 << 20
MAX_KEYS = 100_000

# (plugin, key, JSON text or None to delete)
Writer = Callable[[str, str, str | None], None]


class PluginState:
    def __init__(self, plugin: str, values: dict[str, str], write: Writer | None) -> None:
        """`values` maps key -> JSON text and is shared with the store (updated in place);
        `write` mirrors each change to the database (None: a dry run's private copy)."""
        self.plugin = plugin
        self._values = values if write is not None else dict(values)
        self._write = write

    def get(self, key: str, default: Any = None) -> Any:
        """A fresh copy of the stored value: changing it changes nothing until `set`."""
        text = self._values.get(key)
        return default if text is None else json.loads(text)

    def set(self, key: str, value: Any) -> None:
        if not isinstance(key, str) or not 1 <= len(key) <= MAX_KEY or not key.isprintable():
            raise ValueError(f"plugin state key must be 1 to {MAX_KEY} printable characters: {key!r}")
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
        if len(text) > MAX_VALUE_BYTES:
            raise ValueError(f"plugin state value for {key!r} is larger than {MAX_VALUE_BYTES} bytes")
        if self._values.get(key) == text:
            return
        if key not in self._values and len(self._values) >= MAX_KEYS:
            raise ValueError(f"plugin {self.plugin} already stores {MAX_KEYS} keys")
        self._values[key] = text
        if self._write is not None:
            self._write(self.plugin, key, text)

    def delete(self, key: str) -> None:
        if self._values.pop(key, None) is not None and self._write is not None:
            self._write(self.plugin, key, None)

    def keys(self) -> list[str]:
        return sorted(self._values)

    def snapshot(self) -> PluginState:
        """A private, read-only-in-effect copy: what a background thread may read while
        passes go on changing the store."""
        return PluginState(self.plugin, self._values, None)

    def __contains__(self, key: object) -> bool:
        return key in self._values

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())
