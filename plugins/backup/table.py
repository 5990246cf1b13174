"""The `[backup]` tables: what a share file and agent.toml may say, every problem with its line.

Share file:
    schedule = "hourly"            OnCalendar syntax, at most one snapshot a minute
    keep = { last = 3, daily = 14 } restic's `forget` rules; all zero is refused
    previous_versions = true       Windows "Previous Versions" (vfs_shadow_copy2)
    target = "offsite"             [backup.targets.offsite] of agent.toml
    verify = "weekly"              OnCalendar for a restore check of the off-host copy

agent.toml:
    max_parallel, retry_initial, retry_max, timeout, snapshot_timeout, and
    [backup.targets.NAME] with type, repository, password_file | credential, namespace,
    fingerprint, keep.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from smbgw_agent.model.errors import FieldError
from smbgw_agent.model.fields import REQUIRED, Table, string

from .calendar import CalendarError, CalendarSpec, parse
from .retention import KeepPolicy, parse_keep

TARGET_TYPES = ("restic", "pbs")
MIN_INTERVAL = 60.0
_TARGET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_CREDENTIAL = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_FINGERPRINT = re.compile(r"[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){31}")
_NAMESPACE = re.compile(r"[A-Za-z0-9_.-]{1,31}(/[A-Za-z0-9_.-]{1,31}){0,7}")


@functools.lru_cache(maxsize=4096)
def schedule_of(text: str) -> CalendarSpec:
    """Parsed once per distinct expression: every pass asks for the next run of every share."""
    return parse(text)


def _schedule(value: object) -> str:
    text = string(value, "schedule", 256)
    try:
        spec = schedule_of(text)
    except CalendarError as exc:
        raise FieldError(str(exc)) from exc
    now = time.time()
    first = spec.next_after(now)
    if first is None:
        raise FieldError(f"{text!r} never fires again (normalized: {spec.normalized})")
    second = spec.next_after(first)
    if second is not None and second - first < MIN_INTERVAL:
        raise FieldError(f"{text!r} fires every {second - first:g} s; snapshots are taken at most once a "
                         "minute (e.g. *:0/5 for every five minutes)")
    return text


def _keep(value: object) -> dict[str, int]:
    return parse_keep(value).as_dict()


def _target_name(value: object) -> str:
    text = string(value, "target", 64)
    if not _TARGET_NAME.fullmatch(text):
        raise FieldError(f"{text!r} is not a target name (letters, digits, '_', '.', '-')")
    return text


def parse_share_table(data: Mapping[str, Any]) -> dict[str, Any]:
    table = Table(data)
    schedule = table.value("schedule", _schedule, REQUIRED)
    keep = table.value("keep", _keep, REQUIRED)
    previous_versions = table.boolean("previous_versions", default=True)
    target = table.value("target", _target_name, None)
    verify = table.value("verify", _schedule, None)
    if verify is not None and target is None:
        table.report("verify", "checks the off-host copy, so it needs a target")
    table.done()
    return {"schedule": schedule, "keep": keep, "previous_versions": previous_versions,
            "target": target, "verify": verify}


@dataclass(frozen=True)
class BackupSettings:
    """agent.toml [backup], with its defaults."""

    max_parallel: int = 1
    retry_initial: float = 60.0
    retry_max: float = 1800.0
    timeout: float = 6 * 3600.0
    snapshot_timeout: float = 600.0
    targets: Mapping[str, Mapping[str, Any]] | None = None

    @classmethod
    def from_config(cls, sections: Mapping[str, Any]) -> BackupSettings:
        data = sections.get("backup") or {}
        return cls(int(data.get("max_parallel", 1)), float(data.get("retry_initial", 60.0)),
                   float(data.get("retry_max", 1800.0)), float(data.get("timeout", 6 * 3600.0)),
                   float(data.get("snapshot_timeout", 600.0)), dict(data.get("targets", {})))

    def target(self, name: str) -> Mapping[str, Any] | None:
        return (self.targets or {}).get(name)


def _pattern(regex: re.Pattern[str], what: str, example: str) -> Any:
    def parse(value: object) -> str:
        text = string(value, what, 256)
        if not regex.fullmatch(text):
            raise FieldError(f"{text!r} is not {what} (e.g. {example})")
        return text
    return parse


def _target(table: Table, name: str) -> dict[str, Any]:
    kind = table.choice("type", TARGET_TYPES)
    repository = table.text("repository", max_length=1024)
    password_file = table.value("password_file", _absolute, None)
    credential = table.value("credential", _pattern(_CREDENTIAL, "a credential name", "restic"), None)
    if (password_file is None) == (credential is None):
        table.report(None, "needs exactly one of password_file (a root-only file) and credential (a systemd "
                           "credential of the unit)")
    namespace = fingerprint = None
    if kind == "pbs":
        namespace = table.value("namespace", _pattern(_NAMESPACE, "a namespace", "pve1/shares"), None)
        fingerprint = table.value("fingerprint", _pattern(_FINGERPRINT, "a SHA-256 fingerprint",
                                                          "32 hex bytes as AA:BB:..."), None)
    keep = table.value("keep", _keep, None)
    return {"type": kind, "repository": repository, "password_file": password_file, "credential": credential,
            "namespace": namespace, "fingerprint": fingerprint, "keep": keep, "name": name}


def _absolute(value: object) -> str:
    text = string(value, "password_file", 1024)
    if not text.startswith("/"):
        raise FieldError(f"{text!r} must be an absolute path")
    return text


def parse_agent_table(data: Mapping[str, Any]) -> dict[str, Any]:
    table = Table(data)
    max_parallel = table.integer("max_parallel", default=1, minimum=1, maximum=64)
    retry_initial = table.duration("retry_initial", default=60.0, minimum=1.0, maximum=86400.0)
    retry_max = table.duration("retry_max", default=1800.0, minimum=1.0, maximum=7 * 86400.0)
    if retry_max < retry_initial:
        table.report("retry_max", f"is shorter than retry_initial ({retry_initial:g} s)")
    timeout = table.duration("timeout", default=6 * 3600.0, minimum=10.0, maximum=7 * 86400.0)
    snapshot_timeout = table.duration("snapshot_timeout", default=600.0, minimum=5.0, maximum=86400.0)
    targets: dict[str, Any] = {}
    nested = table.table("targets")
    for name in sorted(nested.data):
        child = nested.table(name)
        if not _TARGET_NAME.fullmatch(name):
            nested.report(name, "a target name is letters, digits, '_', '.', '-' (at most 64)")
            continue
        targets[name] = _target(child, name)
    table.done()
    return {"max_parallel": max_parallel, "retry_initial": retry_initial, "retry_max": retry_max,
            "timeout": timeout, "snapshot_timeout": snapshot_timeout, "targets": targets}


def keep_policy(rules: Mapping[str, int]) -> KeepPolicy:
    return KeepPolicy(**{rule: int(count) for rule, count in rules.items()})
