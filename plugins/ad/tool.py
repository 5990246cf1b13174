"""Samba's tools for the membership, run through the agent's runner: read, join, leave.

Every `net` call names the agent's smb.conf (`-s`), so a sandboxed agent never reads the
host's. Commands get the C locale (their words are matched), no Kerberos ticket cache of
anyone else (KRB5CCNAME points at a private in-memory cache), and a timeout each.

The join password reaches `net` on its stdin and nowhere else: not its arguments (which
`ps` shows), not its environment, and it is redacted from every output the runner keeps.
Samba's password prompt reads at most 127 bytes and would cut a longer password silently,
so a longer one is refused here with that reason.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from smbgw_agent.effects.runner import CommandError, Completed, RunsCommands

from .checks import (
    AdsInfo,
    PingDc,
    SrvRecord,
    Testjoin,
    UnexpectedOutput,
    parse_ads_info,
    parse_ping_dc,
    parse_srv,
    parse_testjoin,
)
from .health import Readings
from .table import AdSettings

NET_TIMEOUT = 45.0  # net ads against an unreachable DC gives up within about 30 s
PING_TIMEOUT = 45.0  # wbinfo --ping-dc waits ~10 s for a stopped DC, up to a minute for a cut link
DIG_TIMEOUT = 15.0
JOIN_TIMEOUT = 120.0
MAX_PASSWORD = 127
T = TypeVar("T")
DEFAULT_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


def _env() -> dict[str, str]:
    """The tools' whole environment: the agent's PATH, the C locale, a private ticket cache."""
    return {"PATH": os.environ.get("PATH") or DEFAULT_PATH, "LANG": "C", "LC_ALL": "C",
            "KRB5CCNAME": "MEMORY:smbgw-agent"}

# The join's failures that mean the credentials are wrong: retrying with the same
# password only counts towards the account's lockout.
_CREDENTIAL_WORDS = ("Logon failure", "NT_STATUS_LOGON_FAILURE", "The attempted logon is invalid",
                     "Preauthentication failed", "KDC_ERR_PREAUTH_FAILED", "Password incorrect",
                     "NT_STATUS_WRONG_PASSWORD", "locked out", "NT_STATUS_ACCOUNT_LOCKED_OUT",
                     "Client not found in Kerberos database", "NT_STATUS_NO_SUCH_USER",
                     "Insufficient access", "NT_STATUS_ACCESS_DENIED", "Access Denied", "Access is denied")


class JoinError(RuntimeError):
    """A join or leave that did not work; `credentials` when the domain refused the
    account or password (do not retry until the password changes)."""

    def __init__(self, message: str, credentials: bool = False) -> None:
        super().__init__(message)
        self.credentials = credentials


def _net(smb_conf: Path, *args: str) -> list[str]:
    return ["net", "-s", str(smb_conf), *args]


def _said(result: Completed | None, error: CommandError | None = None) -> str:
    """The last meaningful lines a command printed (or why it did not run)."""
    if result is None:
        return str(error) if error is not None else "no answer"
    lines = [line.strip() for line in (result.stderr + "\n" + result.stdout).splitlines() if line.strip()
             and not line.startswith("Password for")]
    return " / ".join(lines[-2:])[:300] or f"exit {result.returncode}, no output"


def _reading(runner: RunsCommands, argv: Sequence[str], timeout: float, parse: Callable[[Completed], T],
             nonzero_is_error: bool = True) -> T | str:
    """Run a read-only tool and parse what it said; a string is why there is no reading
    (it did not run, failed, or said something that is not its output: then with its own
    last words, so that "permission denied" is not hidden behind "unexpected output")."""
    try:
        result = runner.run(argv, timeout=timeout, check=False, env=_env())
    except CommandError as exc:
        return str(exc)
    if nonzero_is_error and result.returncode != 0:
        return f"{argv[0]} exit {result.returncode}: {_said(result)}"
    try:
        return parse(result)
    except UnexpectedOutput as exc:
        return f"{exc} (it said: {_said(result)[:160]})"


def srv_records(runner: RunsCommands, realm: str) -> Sequence[SrvRecord] | str:
    argv = ["dig", "+short", "+time=3", "+tries=2", "-t", "SRV", f"_ldap._tcp.{realm.lower()}"]
    return _reading(runner, argv, DIG_TIMEOUT, lambda result: parse_srv(result.stdout))


def ads_info(runner: RunsCommands, smb_conf: Path) -> AdsInfo | str:
    return _reading(runner, _net(smb_conf, "ads", "info", "--json"), NET_TIMEOUT,
                    lambda result: parse_ads_info(result.stdout, result.stderr))


def testjoin(runner: RunsCommands, smb_conf: Path) -> Testjoin | str:
    return _reading(runner, _net(smb_conf, "ads", "testjoin"), NET_TIMEOUT,
                    lambda result: parse_testjoin(result.stdout, result.stderr, result.returncode),
                    nonzero_is_error=False)


def ping_dc(runner: RunsCommands) -> PingDc | str:
    return _reading(runner, ["wbinfo", "--ping-dc"], PING_TIMEOUT,
                    lambda result: parse_ping_dc(result.stdout, result.stderr, result.returncode),
                    nonzero_is_error=False)


def read_membership(runner: RunsCommands, smb_conf: Path, realm: str, winbind_active: bool | None) -> Readings:
    """One round of readings (`health.assess` judges them), the four tools at once: with
    the DC down each waits out its own timeout (`net ads info` and `wbinfo --ping-dc`
    about 10 s each), and one after the other they would delay the report by their sum.
    ping-dc only while winbindd runs: without it, wbinfo can only say so."""
    at = time.time()
    with ThreadPoolExecutor(max_workers=4, thread_name_prefix="ad-check") as pool:
        srv = pool.submit(srv_records, runner, realm)
        info = pool.submit(ads_info, runner, smb_conf)
        joined = pool.submit(testjoin, runner, smb_conf)
        ping = pool.submit(ping_dc, runner) if winbind_active is not False else None
        return Readings(at=at, srv=srv.result(), info=info.result(), testjoin=joined.result(),
                        winbind_active=winbind_active, ping=ping.result() if ping is not None else None)


def check_password(password: str) -> None:
    if len(password.encode("utf-8")) > MAX_PASSWORD:
        raise JoinError(f"the join password is {len(password.encode('utf-8'))} bytes; Samba's net reads at most "
                        f"{MAX_PASSWORD} and would use a cut-off password: use a shorter one", credentials=True)
    if "\0" in password:
        raise JoinError("the join password contains a NUL character", credentials=True)


def join(runner: RunsCommands, smb_conf: Path, settings: AdSettings, password: str) -> str:
    """`net ads join` as `join_user`, password on stdin. Returns what net said."""
    check_password(password)
    argv = _net(smb_conf, "ads", "join", "-U", settings.join_user)
    if settings.ou:
        argv.append(f"createcomputer={settings.ou}")
    if not settings.dns_register:
        argv.append("--no-dns-updates")
    return _with_password(runner, argv, password, "join", ("Joined '",))


def leave(runner: RunsCommands, smb_conf: Path, join_user: str, password: str) -> str:
    """`net ads leave` (deletes the machine account in AD), password on stdin."""
    check_password(password)
    return _with_password(runner, _net(smb_conf, "ads", "leave", "-U", join_user), password, "leave",
                          ("Deleted account for '", "Disabled account for '", "' Left domain '"))


def _with_password(runner: RunsCommands, argv: list[str], password: str, what: str, success: tuple[str, ...]) -> str:
    """Run `argv` with `password` on stdin. It worked only if net exited 0 *and* said a
    line of success (one of `success`): an exit 0 with anything else is not taken on trust."""
    try:
        result = runner.run(argv, timeout=JOIN_TIMEOUT, check=False, stdin=password + "\n", secrets=[password],
                            env=_env())
    except CommandError as exc:
        raise JoinError(f"net ads {what}: {exc}") from None
    said = _said(result)
    failed = result.returncode != 0 or "Failed to join" in result.stdout or "Failed to leave" in result.stdout
    if failed:
        credentials = any(words.casefold() in said.casefold() for words in _CREDENTIAL_WORDS)
        raise JoinError(f"net ads {what} failed: {said}", credentials=credentials)
    line = next((line.strip() for line in result.stdout.splitlines() if any(words in line for words in success)), None)
    if line is None or not line.isprintable():
        raise JoinError(f"net ads {what}: exit 0 but unexpected output, not its line of success: {said[:120]!r}")
    return line[:300]
