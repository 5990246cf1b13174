"""A Proxmox guest's config file (`/etc/pve/lxc/VMID.conf`, `/etc/pve/qemu-server/VMID.conf`)
as pve-container and qemu-server write it, read without running `pct config` (a Perl
start-up per read; the mode reads every guest each pass).

The format: the current config first, `key: value` a line; `#` lines at the top are the
description, each line percent-encoded by pve-common's `encode_text` (control and
non-ASCII characters and `:`); `lxc.*` keys may repeat (raw LXC lines such as
`lxc.idmap`); a `[name]` line starts a snapshot or the pending section, which is not the
current config. Values like `net0` are property strings, `key=value` pairs separated by
commas, the first of which may be a bare default value (`mp0: /tank,mp=/srv/share`).
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .pvefile import read_pve_file

MAX_CONFIG = 1 << 20


class GuestConfigError(ValueError):
    """The file is not a guest config as Proxmox writes it."""


@dataclass
class GuestConfig:
    options: dict[str, str] = field(default_factory=dict)
    raw: list[tuple[str, str]] = field(default_factory=list)  # lxc.* lines, in order
    description: str = ""

    def get(self, key: str, default: str | None = None) -> str | None:
        return self.options.get(key, default)

    def raw_values(self, key: str) -> list[str]:
        return [value for name, value in self.raw if name == key]

    @property
    def tags(self) -> list[str]:
        """Proxmox separates tags by `;` (also `,` and spaces when reading)."""
        text = self.options.get("tags", "")
        return [tag for tag in text.replace(",", ";").replace(" ", ";").split(";") if tag]


def parse_guest_config(text: str) -> GuestConfig:
    config = GuestConfig()
    description: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("["):
            break  # a snapshot or [pending]: not the current config
        if not line.strip():
            continue
        if line.startswith("#"):
            description.append(urllib.parse.unquote(line[1:], errors="replace"))
            continue
        key, sep, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if not sep or not key or not all(ch.isalnum() or ch in "._-" for ch in key):
            raise GuestConfigError(f"line {number}: not 'key: value'")
        if key.startswith("lxc."):
            config.raw.append((key, value))
        elif key in config.options:
            raise GuestConfigError(f"line {number}: {key} given twice")
        else:
            config.options[key] = value
    config.description = "\n".join(description)
    return config


def read_guest_config(path: Path) -> GuestConfig | None:
    """The config at `path`, None when there is none (no such guest on this node)."""
    text = read_pve_file(path, MAX_CONFIG, GuestConfigError)
    return None if text is None else parse_guest_config(text)


def parse_property_string(text: str, default_key: str | None = None) -> dict[str, str]:
    """`a=1,b=2` (and a bare first value under `default_key`) as a dict."""
    found: dict[str, str] = {}
    for index, part in enumerate(text.split(",")):
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep:
            if index == 0 and default_key is not None:
                found[default_key] = part
                continue
            raise GuestConfigError(f"{part[:40]!r} in {text[:80]!r} is not key=value")
        if key in found:
            raise GuestConfigError(f"{key} given twice in {text[:80]!r}")
        found[key] = value
    return found


def property_string(values: Mapping[str, str], default_key: str | None = None) -> str:
    """The inverse of `parse_property_string`: the default value first, then the rest in
    the order given."""
    parts = [values[default_key]] if default_key is not None and default_key in values else []
    parts += [f"{key}={value}" for key, value in values.items() if key != default_key]
    return ",".join(parts)


@dataclass(frozen=True)
class OwnedKeys:
    """The keys of a property-string option (`net0`, `mp0`) that the agent sets; the others
    (a MAC address Proxmox generated, a firewall flag an administrator set) are Proxmox's
    or the administrator's to keep. `defaults`: Proxmox's defaults, so absent equals them."""

    keys: tuple[str, ...]
    default_key: str | None = None
    defaults: Mapping[str, str] = field(default_factory=dict)


def same_option(live: str | None, wanted: str, owned: OwnedKeys | None) -> bool:
    """The live value already says what `wanted` says (for a property string: on the
    owned keys)."""
    if live is None:
        return False
    if owned is None:
        return live == wanted
    try:
        have = parse_property_string(live, owned.default_key)
        want = parse_property_string(wanted, owned.default_key)
    except GuestConfigError:
        return False
    return all(have.get(name, owned.defaults.get(name)) == want.get(name, owned.defaults.get(name))
               for name in owned.keys)


def merged_option(live: str | None, wanted: str, owned: OwnedKeys | None) -> str:
    """What to set the option to: the wanted values over the live ones, so keys Proxmox
    keeps (a MAC address) survive a change of address; an owned key no longer wanted is
    dropped."""
    if owned is None or live is None:
        return wanted
    try:
        have = parse_property_string(live, owned.default_key)
    except GuestConfigError:
        return wanted
    want = parse_property_string(wanted, owned.default_key)
    for name in owned.keys:
        if name not in want:
            have.pop(name, None)
    have.update(want)
    return property_string(have, owned.default_key)


def tags_equal(live: str | None, wanted: str) -> bool:
    """Tags as Proxmox compares them: lower-cased, de-duplicated, any separator."""
    if live is None:
        return False
    return {tag.casefold() for tag in live.replace(",", ";").replace(" ", ";").split(";") if tag} == \
        {tag for tag in wanted.split(";") if tag}
