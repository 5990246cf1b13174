"""Joining the domain: when to (`join_due`, pure), and the join itself (`run_join`, on a
worker thread: a DC that does not answer takes half a minute to say so).

When a join is due:

- a node that is not joined joins at once; a failed join is retried after 1 min,
  doubling up to `rejoin_min_interval` (`join_delay`);
- a join the domain refused for the account or password is not tried again with the
  same inputs before `rejoin_min_interval`: each wrong try counts towards the account's
  lockout;
- new inputs (the password file replaced or rewritten, or a changed join setting:
  realm, workgroup, join_user, ou, dns_register, where the password comes from) are
  tried at once: the administrator fixed something, and waiting out a back-off would
  only delay the proof;
- a broken trust is rejoined at most once per `rejoin_min_interval` (the first join
  does not count): a rejoin that breaks again at once has a cause a rejoin cannot fix,
  and is reported instead of looped;
- never on a reading taken before the last attempt ended.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from smbgw_agent.effects.runner import CommandError, Runner
from smbgw_agent.effects.samba import reload_command
from smbgw_agent.effects.secretfile import SecretFileError, read_secret, secret_signature
from smbgw_agent.effects.services import ServiceControl
from smbgw_agent.platform.jobs import JobProgress

from . import tool
from .checks import NOT_JOINED, TRUST_BROKEN
from .health import Membership
from .table import AdSettings

log = logging.getLogger(__name__)
WINBIND_UNIT = "winbind.service"
FIRST_RETRY = 60.0
SMB_CONF_WAIT = 60.0
# Marks a job error as a refusal of the account or password (kept in the job record).
CREDENTIALS_MARK = "[credentials] "


def join_delay(failures: int, limit: float) -> float:
    """How long to wait after the `failures`-th failed join in a row: 1 min, doubling,
    at most `limit` (rejoin_min_interval)."""
    return float(min(limit, FIRST_RETRY * 2 ** max(0, min(failures, 30) - 1)))


def join_inputs(settings: AdSettings, host: Callable[[str], Path], environ: Mapping[str, str]) -> str:
    """What a join is tried with, as a digest: the password file's identity (not its
    content: see `secret_signature`) and every setting the join uses. A refused join is
    tried again as soon as this changes."""
    parts = [secret_signature(settings.password_file, settings.credential, host, environ) or "-",
             settings.realm, settings.workgroup, settings.join_user, settings.ou or "", str(settings.dns_register),
             settings.password_file or "", settings.credential or ""]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


def join_due(membership: Membership | None, settings: AdSettings, last: Any, now: float, inputs: str | None) -> \
        str | None:
    """Why a join (or rejoin) should start now, or None (the rules in the module's
    docstring). `last`: the record of the last attempt; `inputs`: `join_inputs` now."""
    if membership is None or membership.joined is not False:
        return None
    rejoin = TRUST_BROKEN in membership.reasons
    if not rejoin and NOT_JOINED not in membership.reasons:
        return None
    kind = "rejoin" if rejoin else "join"
    last = last if isinstance(last, Mapping) else {}
    at = float(last.get("at") or 0.0)
    if membership.at <= float(last.get("finished") or 0.0):
        return None  # this reading is older than the last attempt: wait for one taken after it
    # A record without inputs (written before they were kept) counts as unchanged: the
    # cautious reading where a lockout is at stake.
    changed = bool(at) and "inputs" in last and last["inputs"] != inputs
    if at and not last.get("ok"):
        if changed:
            return f"{kind}: the password file or the [ad] table changed since the last attempt"
        if last.get("credentials"):
            if now - at < settings.rejoin_min_interval:
                return None  # the same password again would only count towards a lockout
        elif now - at < join_delay(int(last.get("failures") or 1), settings.rejoin_min_interval):
            return None
    if rejoin and last.get("kind") == "rejoin" and now - at < settings.rejoin_min_interval:
        return None  # rejoined (or tried to) within the interval: report and alert, do not loop
    return "rejoin: the domain no longer accepts the machine account" if rejoin else "join: not joined"


def run_join(progress: JobProgress, runner: Runner, services: ServiceControl, smb_conf: Path, smbd_unit: str,
             settings: AdSettings, host: Callable[[str], Path], kind: str) -> dict[str, Any]:
    """Join (or rejoin): once the live smb.conf names the domain, a DC answers and the
    clocks agree; then winbind is (re)started before smbd reloads, so that smbd finds
    the domain's users when it next asks."""
    deadline = time.monotonic() + SMB_CONF_WAIT
    while not says_ads(runner, smb_conf, settings.realm):
        if time.monotonic() > deadline or progress.expired:
            raise tool.JoinError(f"{smb_conf} does not say security = ADS with realm {settings.realm}; not joining")
        progress.report(f"waiting for {smb_conf} to name the domain")
        time.sleep(0.5)
    try:
        password = read_secret(settings.password_file, settings.credential, host, os.environ)
    except SecretFileError as exc:
        raise tool.JoinError(f"the join password: {exc}", credentials=True) from None
    runner.add_secret(password)
    progress.report(f"asking a DC of {settings.realm}")
    info = tool.ads_info(runner, smb_conf)
    if isinstance(info, str):
        raise tool.JoinError(f"no domain controller of {settings.realm} answers: {info}")
    if info.skew_level() == "error":
        raise tool.JoinError(f"this node's clock is {abs(info.offset or 0)} s off {info.ldap_server_name}'s, beyond "
                             "Kerberos' 300 s: fix its time synchronisation first (a join would work and every "
                             "logon after it fail)")
    progress.report(f"{kind}ing {settings.realm} through {info.ldap_server_name} as {settings.join_user}")
    said = tool.join(runner, smb_conf, settings, password)
    log.info("ad: %s", said)
    progress.report(f"restarting {WINBIND_UNIT}")
    services.ensure_enabled(WINBIND_UNIT)
    services.restart(WINBIND_UNIT)
    services.reload(smbd_unit, reload_command(smb_conf))
    return {"text": said, "kind": kind}


def says_ads(runner: Runner, smb_conf: Path, realm: str) -> bool:
    """The live smb.conf, as Samba reads it, makes this node a member of `realm`."""
    try:
        result = runner.run(["testparm", "-s", "--parameter-name", "security", str(smb_conf)], timeout=30)
        named = runner.run(["testparm", "-s", "--parameter-name", "realm", str(smb_conf)], timeout=30)
    except CommandError:
        return False
    return result.stdout.strip().upper() == "ADS" and named.stdout.strip().upper() == realm.upper()


def shown_join(last: Any) -> dict[str, Any] | None:
    """The last attempt's record as status.json and `smbgwctl ad status --json` show it."""
    if not isinstance(last, Mapping):
        return None
    return {"at": last.get("at"), "ok": last.get("ok"), "kind": last.get("kind"),
            "said": str(last.get("said", "")).removeprefix(CREDENTIALS_MARK),
            "failures": last.get("failures"),
            "wrong_credentials": bool(last.get("credentials"))}
